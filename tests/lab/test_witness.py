"""The kernel reset witness and the counter deltas, against the real kernel of the lab.

Every lab host shares this machine's kernel: each host's witness sees every host's events and
must keep only its own (by address). The scenario tests check the kernel reasons of each
scenario's resets; these check what is around them: availability, cleanup, counters.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.lab.labnet import BACKEND_IP, CLIENT_IP, PROXY_FRONT, Lab
from tests.lab.test_capture import run_cli
from tests.lab.test_scenarios import CLIENTS, capture, first


def host(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in report["hosts"] if h["name"] == name)


def test_each_host_keeps_only_its_own_events_and_leaves_no_instance(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Connection refused at the proxy: the proxy's kernel sent it (NO_SOCKET, in softirq, so no
    process is credited), the client's kernel received it; the other hosts, sharing the kernel,
    saw both events and kept neither."""
    report, stdout = capture(
        capsys,
        clean_lab,
        tmp_path / "b",
        f"{CLIENT_IP}->{PROXY_FRONT}:9999",
        f"curl -sS -m 3 http://{PROXY_FRONT}:9999/",
    )
    assert clean_lab.trace_instances() == []
    for h in report["hosts"]:
        assert h["witness"]["state"] == "ran", h
        assert h["witness"]["reason_field"] is True and h["witness"]["lost"] == 0
    # Its send and the client's receive (HAProxy may also close an older test's connection in the
    # window: that is the proxy's own event too, so these are at least one, not exactly one).
    assert host(report, "proxy")["witness"]["events"] >= 1 and host(report, "client")["witness"]["events"] >= 1
    assert [x["host"] for x in first(report)["kernel"]["received"]] == ["client"]
    for name in ("router", "backend"):
        assert host(report, name)["witness"]["events"] == 0
        assert host(report, name)["witness"]["other_hosts_events"] >= 2
    sent = first(report)["kernel"]["sent"]
    assert sent["host"] == "proxy" and sent["reason"] == "NO_SOCKET" and sent["softirq"] is True
    assert sent["sender_process"] is None
    # The event's time is the packet's, within the trace-clock mapping and the kernel's own delay.
    out = next(s for s in first(report)["seen_at"] if s["host"] == "proxy" and s["direction"] == "out")
    assert abs(sent["time_ns"] - out["time_ns"]) < 1_000_000, (sent, out)
    assert "proxy kernel sent RST to" in stdout and "in softirq" in stdout
    # The bundle keeps the raw witness files, and the manifest says the instance was removed.
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    for h in manifest["hosts"]:
        assert h["witness"]["removed"] is True and h["witness"]["instance"].startswith("/sys/kernel/tracing/instances/")
        assert f"{h['name']}/witness/witness.trace" in h["witness"]["files"]


def test_witness_unavailable_is_reported_per_host_and_the_capture_goes_on(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_lab.stop_sshd("backend")
    clean_lab.start_sshd("backend", tracefs=False)
    report, stdout = capture(
        capsys, clean_lab, tmp_path / "b", f"{CLIENT_IP}->{BACKEND_IP}:81", f"{CLIENTS} reuse {BACKEND_IP} 81 1.6", "3"
    )
    backend = host(report, "backend")
    assert backend["status"] == "ok" and backend["witness"]["state"] == "unavailable"
    assert "tracefs is not mounted" in backend["witness"]["reason"]
    assert "backend unavailable (tracefs is not mounted" in stdout
    r = first(report)
    # The packets still attribute it; only the kernel's word is missing.
    assert r["origin"]["host"] == "backend" and r["cause"] == "idle_reuse" and r["kernel"]["sent"] is None
    assert r["kernel"]["no_send_event_at"] is None


def test_no_witness_turns_it_off(clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(
        capsys, "-i", str(clean_lab.inventory), "--flow", f"{CLIENT_IP}->{PROXY_FRONT}:9999", "-d", "2",
        "-o", str(tmp_path / "b"), "--no-witness", "--reproduce", f"curl -sS -m 3 http://{PROXY_FRONT}:9999/",
    )  # fmt: skip
    assert code == 0, stdout
    report = json.loads((tmp_path / "b/report.json").read_text())
    assert {h["witness"]["state"] for h in report["hosts"]} == {"off"}
    assert first(report)["kernel"]["sent"] is None and first(report)["cause"] == "refused"
    # Only the job's status line comes back: no instance was made, so no trace.
    assert {f.name for f in (tmp_path / "b").glob("*/witness/*")} == {"witness.status"}


def test_a_stale_instance_of_ours_is_swept_and_nobody_elses_is_touched(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job killed outright (SIGKILL, OOM) cannot remove its instance: the next job in that PID
    namespace on that kernel does, when the job PID in its name no longer runs a capture-all job
    (gone, or reused by another process). An instance of another PID namespace (a container sharing
    the tracefs) is not ours to judge: its PIDs mean nothing here."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    root = Path("/sys/kernel/tracing/instances")
    pidns = os.stat("/proc/self/ns/pid").st_ino
    gone = root / f"capture-all.p{pidns}.AbCdEfGh.{dead.pid}"
    reused = root / f"capture-all.p{pidns}.IjKlMnOp.{os.getpid()}"  # a live PID, not a capture-all job
    elsewhere = root / f"capture-all.p{pidns + 1}.QrStUvWx.{dead.pid}"
    other = root / "someone-elses"
    made = (gone, reused, elsewhere, other)
    for d in made:
        d.mkdir()
    try:
        code, _, _ = run_cli(
            capsys, "-i", str(clean_lab.inventory), "--flow", f"{CLIENT_IP}->{PROXY_FRONT}:8080", "-d", "1",
            "-o", str(tmp_path / "b"),
        )  # fmt: skip
        assert code == 0
        assert not gone.exists() and not reused.exists()
        assert elsewhere.is_dir() and other.is_dir()
        manifest = json.loads((tmp_path / "b/manifest.json").read_text())
        notes = [n for h in manifest["hosts"] for n in h["notes"]]
        note = r"removed (\d+) stale ftrace instance\(s\) of an earlier capture-all job"
        swept = [re.fullmatch(note, n) for n in notes]
        assert sum(int(m[1]) for m in swept if m) == 2, notes  # one host or two may have swept them
    finally:
        for d in made:
            if d.exists():
                d.rmdir()


def test_a_listen_queue_overflow_shows_as_a_counter_delta(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_lab.stuck_listener(82)
    code, stdout, _ = run_cli(
        capsys, "-i", str(clean_lab.inventory), "--flow", f"{CLIENT_IP}->{BACKEND_IP}:82", "-d", "3",
        "-o", str(tmp_path / "b"), "--reproduce", f"{CLIENTS} flood {BACKEND_IP} 82 8",
    )  # fmt: skip
    # No reset at all (the kernel drops, it does not refuse): analysis says so, the counters tell why.
    assert code == 0, stdout
    report = json.loads((tmp_path / "b/report.json").read_text())
    counters = host(report, "backend")["counters"]
    assert counters["TcpExtListenOverflows"] > 0 and counters["TcpExtListenDrops"] > 0, counters
    assert host(report, "client")["counters"]["TcpExtListenOverflows"] == 0  # per host: its own namespace
    assert any("backend's listen queue overflowed during the capture" in c for c in report["caveats"])
    assert "counters at backend (after - before): TcpExtListenOverflows +" in stdout
    conntrack = host(report, "backend")["conntrack"]
    assert set(conntrack) == {"before", "after", "max"}
