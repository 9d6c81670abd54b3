"""Record the real output the parser tests read (tests/data/remote/): a whole capture session on
the lab's proxy (sudo) with a request through it, and two refusals, through OpenSSH's own client.

    tests/lab/enter .venv/bin/python -m tests.lab.record
"""

from __future__ import annotations

import subprocess

from remote import commands
from tests.lab.labnet import MGMT, PROXY_FRONT, REPO, Lab

DATA = REPO / "tests" / "data" / "remote"


def ssh(lab: Lab, line: str) -> subprocess.Popen[str]:
    argv = ["ssh", "-F", str(lab.root / "ssh_config"), "-i", str(lab.root / "id_ed25519"), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes", f"root@{MGMT['proxy']}",
            line]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def converse(proc: subprocess.Popen[str], steps: list[tuple[str, str | None]], out: list[str]) -> None:
    """Each (marker, line): read up to a line starting with the marker ("": the next line), then
    say the line, if any (as the controller would)."""
    assert proc.stdin is not None and proc.stdout is not None
    for marker, line in steps:
        while (got := proc.stdout.readline()) and not got.startswith(marker):
            out.append(got)
        out.append(got)
        if line is not None:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()


def end(proc: subprocess.Popen[str], out: list[str]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    out += proc.stdout.readlines()
    proc.wait(60)
    return "".join(out)


def main() -> None:
    lab = Lab.build()
    try:
        common = dict(limit_s=30, max_packets=1000, max_bytes=1 << 20, snaplen=65535, keep_s=60, witness_kb=256,
                      ports=(8080, 80), wait_s=15, sudo=True)  # fmt: skip
        cap = commands.capture(str(lab.remote_tmp), ["eth1", "eth2"], min_free_kb=1, **common)  # type: ignore[arg-type]
        probe: list[tuple[str, str | None]] = [("@@probe", "t")] + [("", "t")] * 7 + [("", "snap")]
        proc, out = ssh(lab, cap.line), []
        converse(proc, [("@@ready", f"go tcp and host {PROXY_FRONT} and port 8080"), *probe, ("@@armed", None)], out)
        subprocess.run(["ip", "netns", "exec", "client", "curl", "-sS", "-m", "3", f"http://{PROXY_FRONT}:8080/"],
                       capture_output=True, check=False)  # fmt: skip
        proc.stdin.write("finish\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        converse(proc, [*probe, ("@@listed", "rm")], out)
        (DATA / "capture-proxy-sudo.txt").write_text(end(proc, out))
        for name, ifaces, free in (("arm-no-interface.txt", ["eth7"], 1), ("arm-low-disk.txt", ["eth1"], 1 << 40)):
            bad = commands.capture(str(lab.remote_tmp), ifaces, min_free_kb=free, **common)  # type: ignore[arg-type]
            (DATA / name).write_text(end(ssh(lab, bad.line), []))
        print(f"recorded into {DATA}")
    finally:
        lab.teardown()


if __name__ == "__main__":
    main()
