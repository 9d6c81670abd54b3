"""``capture-all watch`` against the lab: armed rings on every host, the first RST of the flow as
the trigger, the seconds before it kept, one bundle per incident, and the hosts' own bounds (the
controller SIGKILLed while armed; traffic that outruns the ring)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dpkt
import pytest

from tests.lab.labnet import BACKEND_IP, CLIENT_IP, REPO, Lab, sh
from tests.lab.test_capture import nothing_left_after, wait_until

FLOW = f"{CLIENT_IP}->{BACKEND_IP}:80"
HOSTS = ("client", "router", "proxy", "backend")


class Watch:
    """A ``capture-all watch`` child: its progress lines as they come, its stdout at the end."""

    def __init__(self, lab: Lab, out: Path, *extra: str) -> None:
        argv = [sys.executable, "-m", "orchestrator.cli", "watch", "--plain", "-i", str(lab.inventory), "-f", FLOW,
                "-o", str(out), *extra]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.err: list[str] = []
        self._out: list[str] = []
        self.out = ""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.pumps = [threading.Thread(target=self._pump, args=(f, into), daemon=True)
                      for f, into in ((self.proc.stderr, self.err), (self.proc.stdout, self._out))]  # fmt: skip
        for t in self.pumps:
            t.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        with stream:
            for line in stream:
                into.append(line)

    def armed(self, n: int = 1, timeout: float = 60) -> float:
        """Wait until the n-th arming is complete on every host; its time (time.time())."""
        if not wait_until(lambda: sum("[run] armed: 4/4" in ln for ln in self.err) >= n, timeout):
            pytest.fail(f"watch never armed {n} time(s):\n{''.join(self.err)}")
        return time.time()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 90) -> int:
        self.proc.wait(timeout)
        for t in self.pumps:
            t.join(5)
        self.out = "".join(self._out)
        return self.proc.returncode


@contextmanager
def traffic(every: float = 0.5) -> Iterator[None]:
    """Plain requests from the client to the backend, so that every hop has packets all the time."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sh("curl", "-sS", "-o", "/dev/null", "-m", "2", f"http://{BACKEND_IP}/", ns="client", check=False)
            stop.wait(every)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


def reset() -> float:
    """The backend aborts a request (SO_LINGER 0): a real kernel RST. Returns when it was asked."""
    at = time.time()
    sh("curl", "-sS", "-o", "/dev/null", "-m", "3", f"http://{BACKEND_IP}/reset", ns="client", check=False)
    return at


def packet_times(path: Path) -> list[float]:
    with path.open("rb") as fh:
        return [ts for ts, _ in dpkt.pcap.UniversalReader(fh)]


def incidents(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def first(report: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in report["resets"] if r["id"] == report["first_reset"])


def test_watch_keeps_the_seconds_before_a_reset_at_a_random_moment(clean_lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "w"
    before, after = 5.0, 1.0
    w = Watch(clean_lab, out, "--before", str(before), "--after", str(after), "--max-armed", "120")
    with traffic():
        armed = w.armed()
        time.sleep(10 + random.uniform(0.5, 5))  # a reset nobody can time: more than 10 s after arming
        asked = reset()
        code = w.wait()
    assert code == 0, (w.out, "".join(w.err))
    [bundle] = incidents(out)
    manifest = json.loads((bundle / "manifest.json").read_text())
    trig = manifest["trigger"]
    assert trig["kind"] == "rst" and trig["host"] in HOSTS and "Flags [R" in trig["line"]
    t = trig["at_ns"] / 1e9
    assert asked - 0.5 < t < asked + 3 and t - armed > 10
    report = json.loads((bundle / "report.json").read_text())
    r = first(report)
    assert (r["origin"]["kind"], r["origin"]["host"], r["cause"]) == ("host", "backend", "app_abort"), r
    for h in manifest["hosts"]:
        assert h["status"] == "ok" and h["stop_reason"] == "watch window", h
        assert h["window"] is not None and h["captures"], h
        for c in h["captures"]:
            times = packet_times(bundle / c["path"])
            # The traffic's packets every half second from `before` seconds before the trigger (the
            # lab's hosts share one clock) to the reset itself.
            assert min(times) <= t - before + 0.6, (h["name"], c["interface"], t - min(times))
            assert max(times) >= t, (h["name"], c["interface"])
            assert h["window"]["reach_ns"][c["interface"]] <= (t - before + 0.6) * 1e9
    index = json.loads((out / "incidents.json").read_text())
    assert [i["folder"] for i in index["incidents"]] == [bundle.name]
    assert index["summary"] == "first resets: 1 of 1: host backend, cause app_abort"
    assert "backend's own TCP stack sent the first reset" in w.out
    # Nothing of ours is left on the hosts once the watch ended.
    assert wait_until(lambda: clean_lab.remote_dirs() == [] and clean_lab.our_processes() == [], 10), (
        clean_lab.remote_dirs(),
        clean_lab.our_processes(),
    )


def test_watch_count_3_gives_three_bundles_and_the_index(clean_lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "w"
    w = Watch(clean_lab, out, "--before", "2", "--after", "0.5", "--count", "3", "--max-armed", "150")
    for n in (1, 2, 3):
        w.armed(n)
        time.sleep(1)
        reset()
    assert w.wait() == 0, (w.out, "".join(w.err))
    found = incidents(out)
    assert [p.name[:4] for p in found] == ["001-", "002-", "003-"], found
    index = json.loads((out / "incidents.json").read_text())
    assert [i["folder"] for i in index["incidents"]] == [p.name for p in found]
    assert index["summary"] == "first resets: 3 of 3: host backend, cause app_abort"
    assert index["ended"] == "--count reached"
    for p in found:
        assert first(json.loads((p / "report.json").read_text()))["origin"]["host"] == "backend"
    md = (out / "incidents.md").read_text()
    assert all(f"[{p.name}]({p.name}/report.md)" in md for p in found)


def test_watch_sigkilled_while_armed_leaves_nothing_after_max_armed(clean_lab: Lab, tmp_path: Path) -> None:
    lab = clean_lab
    max_armed, grace, keep = 15, 2, 3
    w = Watch(lab, tmp_path / "w", "--max-armed", str(max_armed), "--grace", str(grace), "--keep", str(keep),
              "--before", "2", "--after", "1")  # fmt: skip
    # The hosts' own limit runs from their capture's start, which is before "armed" is printed.
    w.armed()
    armed = time.monotonic()
    w.kill()
    running = lab.our_processes()
    # Each interface's ring and its RST trigger (1 + 2 + 2 + 1 interfaces), and each host's witness.
    assert sum(prog == "tcpdump" for _, prog, _ in running) == 12, running
    assert len(lab.trace_instances()) == 4
    # A reset after the controller died fires nothing that lasts: the captures go on to their end.
    reset()
    nothing_left_after(lab, armed + max_armed + grace + 2, keep + 6)


def test_the_ring_stays_within_its_bound_under_traffic_that_outruns_it(clean_lab: Lab, tmp_path: Path) -> None:
    lab = clean_lab
    ring = 4 << 20
    out = tmp_path / "w"
    earlier = set(lab.remote_tmp.glob("capture-all.????????"))  # a failed test's, until its hosts reap them
    w = Watch(lab, out, "--ring-bytes", "4M", "--snaplen", "2000", "--before", "30", "--after", "0.5",
              "--max-armed", "120", "--no-witness")  # fmt: skip
    w.armed()
    biggest: dict[str, int] = {}
    stop = threading.Event()

    def measure() -> None:
        while not stop.is_set():
            for d in set(lab.remote_tmp.glob("capture-all.????????")) - earlier:
                total = sum(f.stat().st_size for f in d.glob("*.pcap*") if f.is_file())
                biggest[d.name] = max(biggest.get(d.name, 0), total)
            stop.wait(0.05)

    m = threading.Thread(target=measure, daemon=True)
    m.start()
    # ~40 MB through every hop: ten times what a host's ring holds.
    for _ in range(4):
        sh(sys.executable, str(REPO / "tests/lab/clients.py"), "upload", BACKEND_IP, "80", "/", "10000000", ns="client")
    stop.set()
    m.join(5)
    reset()
    assert w.wait() == 0, (w.out, "".join(w.err))
    assert len(biggest) == 4 and max(biggest.values()) > ring // 2, biggest  # the rings filled
    # tcpdump -C may pass a file's size by one packet: the bound counts it (snaplen 2000).
    files = 2  # 4M over two interfaces: two files of 1 MB each per interface
    assert max(biggest.values()) <= ring + 2 * files * 2000, biggest
    [bundle] = incidents(out)
    manifest = json.loads((bundle / "manifest.json").read_text())
    short = [h["name"] for h in manifest["hosts"] if h["window"]["reach_ns"]
             and min(h["window"]["reach_ns"].values()) > manifest["trigger"]["at_ns"] - 30e9]  # fmt: skip
    assert short, manifest["hosts"]
    assert "its ring reaches back only" in w.out


def test_a_log_line_on_one_host_triggers_the_watch(clean_lab: Lab, tmp_path: Path) -> None:
    lab = clean_lab
    log = lab.root / "app.log"  # the backend's application log (the lab's hosts share this folder)
    log.write_text("starting\n")
    out = tmp_path / "w"
    w = Watch(lab, out, "--before", "2", "--after", "0.5", "--max-armed", "60",
              "--trigger-on-log", f"backend:{log}:upstream (reset|closed) by peer")  # fmt: skip
    w.armed()
    time.sleep(1.5)
    with log.open("a") as fh:
        fh.write("GET /pay 200\n")  # no match
        fh.write("recv() failed (104: Connection reset by peer) while reading upstream\n")  # no match: not ERE-equal
        fh.write("upstream reset by peer, client 198.18.1.10\n")
    assert w.wait() == 0, (w.out, "".join(w.err))
    [bundle] = incidents(out)
    trig = json.loads((bundle / "manifest.json").read_text())["trigger"]
    assert (trig["kind"], trig["host"]) == ("log", "backend"), trig
    assert trig["line"] == f"{log}: upstream reset by peer, client 198.18.1.10"
    # Its tail ended with the capture job: nothing of ours is left on any host.
    assert wait_until(lambda: lab.remote_dirs() == [] and lab.our_processes() == [], 10), ours_ps()


def ours_ps() -> str:
    """What is left, as a tree (a failure's message: which of our processes, waiting on what)."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid,pgid,stat,wchan:20,args", "--forest"], capture_output=True, text=True)
    return "\n".join(ln[:200] for ln in ps.stdout.splitlines() if "capture-all" in ln or "tail" in ln)


def test_sigusr1_triggers_by_hand_and_ctrl_c_keeps_the_last_seconds_and_stops(clean_lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "w"
    w = Watch(clean_lab, out, "--before", "2", "--after", "0.5", "--count", "5", "--max-armed", "120")
    with traffic():
        w.armed(1)
        time.sleep(2.5)
        os.kill(w.proc.pid, signal.SIGUSR1)  # "now": no reset needed
        w.armed(2)
        time.sleep(2.5)
        os.kill(w.proc.pid, signal.SIGINT)  # Ctrl-C while armed: keep the last seconds, stop
        code = w.wait()
    assert code == 0, (w.out, "".join(w.err))
    found = incidents(out)
    kinds = [json.loads((p / "manifest.json").read_text())["trigger"]["kind"] for p in found]
    assert kinds == ["manual", "interrupt"], found
    for p in found:
        m = json.loads((p / "manifest.json").read_text())
        t = m["trigger"]["at_ns"] / 1e9
        for h in m["hosts"]:
            assert h["status"] == "ok", h
            for c in h["captures"]:
                times = packet_times(p / c["path"])
                assert times and min(times) <= t - 2 + 0.6 and max(times) >= t - 0.6, (p.name, h["name"])
    index = json.loads((out / "incidents.json").read_text())
    assert index["ended"] == "stopped (Ctrl-C)" and len(index["incidents"]) == 2
    assert index["summary"] == "first resets: 2 of 2: no reset"
