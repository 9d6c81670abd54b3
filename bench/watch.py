"""Trigger-to-verdict benchmark: how soon `capture-all watch` answers after a reset, on the lab's
4 hosts (client, router, HAProxy, backend; real sshd, tcpdump, kernel resets).

    scripts/bench-watch [--runs 5] [--before 5] [--after 1]
    scripts/bench-watch --cost     # what the RST trigger costs a host (bench/trigger_cost.py)

Runs inside tests/lab/enter. Per run: `capture-all watch --count 1` armed on every host, light
traffic on the flow, a real reset (the backend aborts a request, SO_LINGER 0) a few seconds after
arming. Measured, per run:

- rst -> verdict: from the RST on the wire (the trigger's own timestamp, in the host's capture;
  the lab's hosts share one clock) to the line "verdict:" on the watch's stdout;
- answer: that minus --after (the seconds the watch waits on purpose): collection + analysis;
- baseline, side by side: `capture-all analyze` of the same incident's bundle, a process of its
  own (start-up and imports included, as in the watch): the analysis alone. The ratio answer /
  baseline is what collecting the window adds.

Printed as medians over the runs, with the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.lab.labnet import BACKEND_IP, CLIENT_IP, REPO, Lab, in_lab, sh


def one(lab: Lab, out: Path, before: float, after: float) -> dict[str, float]:
    argv = [sys.executable, "-m", "orchestrator.cli", "watch", "--plain", "-i", str(lab.inventory),
            "-f", f"{CLIENT_IP}->{BACKEND_IP}:80", "-o", str(out), "--before", str(before), "--after", str(after),
            "--max-armed", "120"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    armed = threading.Event()
    verdict_at: list[float] = []

    def errs() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "[run] armed: 4/4" in line:
                armed.set()

    def outs() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("verdict:") and not verdict_at:
                verdict_at.append(time.time())

    threads = [threading.Thread(target=f, daemon=True) for f in (errs, outs)]
    for t in threads:
        t.start()
    if not armed.wait(60):
        proc.kill()
        raise SystemExit("watch never armed")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            sh("curl", "-sS", "-o", "/dev/null", "-m", "2", f"http://{BACKEND_IP}/", ns="client", check=False)
            stop.wait(0.5)

    tr = threading.Thread(target=traffic, daemon=True)
    tr.start()
    time.sleep(before + 1)
    sh("curl", "-sS", "-o", "/dev/null", "-m", "3", f"http://{BACKEND_IP}/reset", ns="client", check=False)
    code = proc.wait(120)
    stop.set()
    for t in (*threads, tr):
        t.join(5)
    if code != 0 or not verdict_at:
        raise SystemExit(f"watch exited {code} without a verdict")
    [bundle] = [p for p in out.iterdir() if p.is_dir()]
    trig = json.loads((bundle / "manifest.json").read_text())["trigger"]
    rst = (trig["host_ns"] or trig["at_ns"]) / 1e9
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "analyze", str(bundle)], cwd=REPO,
                   stdout=subprocess.DEVNULL, check=True)  # fmt: skip
    alone = time.monotonic() - t0
    total = verdict_at[0] - rst
    return {"rst_to_verdict": total, "answer": total - after, "analyze_alone": alone}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", type=float, default=5.0)
    ap.add_argument("--after", type=float, default=1.0)
    ap.add_argument("--cost", action="store_true", help="the trigger's CPU against the ring's, 3 runs")
    args = ap.parse_args()
    if not in_lab():
        raise SystemExit("run it with scripts/bench-watch (inside the lab's namespaces)")
    lab = Lab.build()
    if args.cost:
        from bench.trigger_cost import measure

        try:
            for _ in range(3):
                print(measure(lab), flush=True)
        finally:
            lab.teardown()
        return
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="capture-all-bench-watch-") as tmp:
            for i in range(args.runs):
                rows.append(one(lab, Path(tmp) / f"run{i}", args.before, args.after))
                r = rows[-1]
                print(f"run {i + 1}: rst -> verdict {r['rst_to_verdict']:.2f} s (after {args.after:g} s), "
                      f"answer {r['answer']:.2f} s, analyze alone {r['analyze_alone']:.2f} s", flush=True)  # fmt: skip
    finally:
        lab.teardown()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"medians over {len(rows)} runs, 4 hosts, --before {args.before:g} --after {args.after:g}:")
    print(f"  rst -> verdict printed  {med['rst_to_verdict']:.2f} s")
    print(f"  answer (minus --after)  {med['answer']:.2f} s")
    print(f"  baseline: capture-all analyze of the same bundle  {med['analyze_alone']:.2f} s")
    print(f"  answer / baseline  {med['answer'] / med['analyze_alone']:.2f}x")


if __name__ == "__main__":
    main()
