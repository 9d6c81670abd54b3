"""Record the real output the parser tests read (tests/data/remote/): the arm and finish sessions
on the lab's proxy (sudo), and two refusals, through OpenSSH's own client.

    tests/lab/enter .venv/bin/python -m tests.lab.record

A session's input is given all at once: the host's script reads each line only when it gets
there (the filter after @@ready, the probe lines after @@probe), as it would from the controller.
"""

from __future__ import annotations

import re
import subprocess

from remote import commands
from tests.lab.labnet import MGMT, PROXY_FRONT, REPO, Lab

DATA = REPO / "tests" / "data" / "remote"


def ssh(lab: Lab, line: str, stdin: str) -> str:
    argv = ["ssh", "-F", str(lab.root / "ssh_config"), "-i", str(lab.root / "id_ed25519"), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes", f"root@{MGMT['proxy']}",
            line]  # fmt: skip
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60).stdout


def main() -> None:
    lab = Lab.build()
    try:
        common = dict(limit_s=30, max_packets=1000, max_bytes=1 << 20, snaplen=65535, keep_s=60, witness_kb=256,
                      ports=(8080, 80), sudo=True)  # fmt: skip
        arm = commands.arm(str(lab.remote_tmp), ["eth1", "eth2"], min_free_kb=1, **common)  # type: ignore[arg-type]
        flt = f"tcp and host {PROXY_FRONT} and port 8080"
        out = ssh(lab, arm.line, f"go {flt}\n" + "t\n" * 8 + "snap\n")
        (DATA / "arm-proxy-sudo.txt").write_text(out)
        remote_dir = re.search(r"^dir=(\S+)$", out, re.M)
        assert remote_dir, out
        subprocess.run(["ip", "netns", "exec", "client", "curl", "-sS", "-m", "3", f"http://{PROXY_FRONT}:8080/"],
                       capture_output=True, check=False)  # fmt: skip
        fin = commands.finish(remote_dir.group(1), ["eth1", "eth2"], wait_s=15, sudo=True, ports=(8080, 80))
        (DATA / "finish-proxy-sudo.txt").write_text(ssh(lab, fin.line, "t\n" * 8 + "snap\nrm\n"))
        bad = commands.arm(str(lab.remote_tmp), ["eth7"], min_free_kb=1, **common)  # type: ignore[arg-type]
        (DATA / "arm-no-interface.txt").write_text(ssh(lab, bad.line, ""))
        low = commands.arm(str(lab.remote_tmp), ["eth1"], min_free_kb=1 << 40, **common)  # type: ignore[arg-type]
        (DATA / "arm-low-disk.txt").write_text(ssh(lab, low.line, ""))
        print(f"recorded into {DATA}")
    finally:
        lab.teardown()


if __name__ == "__main__":
    main()
