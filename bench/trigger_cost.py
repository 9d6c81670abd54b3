"""What the RST trigger costs a host: CPU of the trigger tcpdumps against the ring tcpdumps while
~40 MB of the flow crosses every lab hop (user + system time from /proc, in clock ticks).

    scripts/bench-watch --cost

Runs inside tests/lab/enter; one watch armed on the lab's 4 hosts, four 10 MB uploads, a reset."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

from tests.lab.labnet import BACKEND_IP, CLIENT_IP, REPO, Lab, sh

CLK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def measure(lab: Lab) -> str:
    with tempfile.TemporaryDirectory(prefix="capture-all-bench-cost-") as tmp:
        argv = [sys.executable, "-m", "orchestrator.cli", "watch", "--plain", "-i", str(lab.inventory), "-f",
                f"{CLIENT_IP}->{BACKEND_IP}:80", "-o", f"{tmp}/w", "--before", "2", "--after", "0.5",
                "--max-armed", "120", "--no-witness"]  # fmt: skip
        p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert p.stderr is not None
        for line in p.stderr:
            if "[run] armed: 4/4" in line:
                break
        threading.Thread(target=lambda: [None for _ in p.stderr or ()], daemon=True).start()
        ours = [(pid, argv) for pid, prog, argv in lab.our_processes() if prog == "tcpdump"]
        ring = [pid for pid, a in ours if "-C" in a.split()]
        trig = [pid for pid, a in ours if "trigger.filter" in a]
        before = {x: _cpu(x) for x in ring + trig}
        t0 = time.time()
        for _ in range(4):
            sh(sys.executable, str(REPO / "tests/lab/clients.py"), "upload", BACKEND_IP, "80", "/", "10000000",
               ns="client")  # fmt: skip
        took = time.time() - t0
        r = sum(_cpu(x) - before[x] for x in ring)
        t = sum(_cpu(x) - before[x] for x in trig)
        sh("curl", "-sS", "-o", "/dev/null", "-m", "3", f"http://{BACKEND_IP}/reset", ns="client", check=False)
        p.wait(60)
    return (f"{len(ring)} ring tcpdumps: {r:.2f} s CPU; {len(trig)} trigger tcpdumps: {t:.2f} s CPU "
            f"(tick {1 / CLK:.2f} s); {took:.1f} s of traffic")  # fmt: skip
