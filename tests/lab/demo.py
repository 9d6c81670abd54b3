"""The README's first command: build the lab, reproduce a reset, capture it with capture-all.

The scenario: the client posts a payment through the router to the proxy's :8081. The router's
firewall answers the client's data with a forged RST in the proxy's name (nft ``reject with tcp
reset``); the client sees "Connection reset by peer" and blames the proxy. The captures show the
RST leaving the router, arriving at the client with the TTL of a box one hop closer than the
proxy, and never leaving the proxy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

from tests.lab.labnet import CLIENT_IP, PROXY_FRONT, REPO, Lab


def run(out: Path, duration: float) -> int:
    lab = Lab.build()
    try:
        lab.router_forges_resets(8081)
        print(
            f"lab: client {CLIENT_IP} -> router -> proxy {PROXY_FRONT} (HAProxy) -> backend; "
            "the router forges resets on :8081",
            flush=True,
        )
        print(
            f"$ capture-all --inventory {lab.inventory} --flow '{CLIENT_IP}->{PROXY_FRONT}:8081' "
            f"--duration {duration:g} --out {out} --reproduce 'curl ... /pay'",
            flush=True,
        )
        # The command as a user runs it (its own process, through its entry point), not main():
        # the same output, warnings filtered or not, as the installed capture-all.
        code = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "--inventory",
                str(lab.inventory),
                "--flow",
                f"{CLIENT_IP}->{PROXY_FRONT}:8081",
                "--duration",
                str(duration),
                "--out",
                str(out),
                "--reproduce",
                f"curl -sS -m 3 -d amount=42 http://{PROXY_FRONT}:8081/pay",
            ],
            cwd=REPO,
            check=False,
        ).returncode
        print(
            "\nWhat to read above: the client's RST claims to come from the proxy, but it arrives with "
            "a TTL unlike the proxy's own packets, the router's capture shows it leaving the router, "
            "the proxy's capture never shows it, and the proxy's own kernel (its reset witness) logged "
            "no reset on that connection. An R2, where there is one, is the client's answer, two seconds "
            "later, to HAProxy's 408 on the connection R1 had already ended at the client: R1's aftermath."
        )
        print(f"capture-all exited {code}; the evidence bundle is {out}")
        return code
    finally:
        lab.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(prog="scripts/demo")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    ap.add_argument("--out", type=Path, default=REPO / "evidence" / f"demo-{stamp}")
    ap.add_argument("--duration", type=float, default=4.0)
    args = ap.parse_args()
    sys.exit(run(args.out.resolve(), args.duration))


if __name__ == "__main__":
    main()
