"""capture-all against the real lab: sshd, tcpdump, HAProxy, nftables, kernel resets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.decode import RST
from analysis.model import Seen
from orchestrator.bundle import verify
from orchestrator.cli import main
from orchestrator.evidence import analyze_bundle
from tests.lab.labnet import BACKEND_IP, CLIENT_IP, MGMT, NO_SFTP, PROXY_FRONT, REPO, Lab

FLOW_8081 = f"{CLIENT_IP}->{PROXY_FRONT}:8081"
FLOW_8080 = f"{CLIENT_IP}->{PROXY_FRONT}:8080"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--plain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def manifest(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "manifest.json").read_text())


def host(m: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(h for h in m["hosts"] if h["name"] == name)


def resets(out: Path, name: str, iface: str) -> list[Seen]:
    """The RSTs one host's capture of one interface holds, with their direction."""
    result, _ = analyze_bundle(out)
    (v,) = [v for v in result.vantages if v.name == name]
    return [s for s in v.segments if s.iface == iface and s.seg.flags & RST]


def wait_until(predicate, timeout: float, step: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def test_forged_reset_is_captured_where_it_happens(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = clean_lab
    lab.router_forges_resets(8081)
    out = tmp_path / "bundle"
    code, stdout, stderr = run_cli(
        capsys,
        "-i",
        str(lab.inventory),
        "--flow",
        FLOW_8081,
        "-d",
        "2",
        "-o",
        str(out),
        "--reproduce",
        f"curl -sS -m 3 -u ops:hunter2-29 -d amount=42 http://{PROXY_FRONT}:8081/pay",
    )
    assert code == 0, stdout
    # The command's credential is written once, where every remote command's exact line is (issue
    # 29.9): not in the manifest (command, options), reproduce.txt, nor the progress lines.
    holding = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                     and b"hunter2-29" in p.read_bytes())  # fmt: skip
    assert holding == ["client/commands.jsonl"] and "hunter2-29" not in stdout + stderr, holding
    m = manifest(out)
    assert [h["status"] for h in m["hosts"]] == ["ok"] * 4
    assert verify(out) == []
    # Without capture-all: coreutils check every file the manifest lists, and the manifest.
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0 and "manifest.json: OK" in check.stdout and "client/eth1.pcap: OK" in check.stdout
    assert "Connection reset by peer" in (out / "client/reproduce.txt").read_text()

    # The client sees an RST "from the proxy" whose TTL is unlike the proxy's genuine packets...
    (at_client,) = resets(out, "client", "eth1")
    assert (at_client.seg.src, at_client.seg.sport, at_client.direction) == (PROXY_FRONT, 8081, "in")
    assert at_client.seg.ttl == 64
    # ...the router's capture shows it leaving the router (its MAC, on the client side)...
    (at_router,) = resets(out, "router", "eth1")
    assert at_router.direction == "out" and at_router.seg.seq == at_client.seg.seq
    assert resets(out, "router", "eth2") == []
    # ...and the proxy never sent one (it saw the handshake and nothing else).
    assert resets(out, "proxy", "eth1") == []
    assert host(m, "proxy")["captures"][0]["packets"] >= 3
    assert "1 RST" in stdout and "client/eth1  in RST" in stdout

    # Bundle files are private.
    assert (out.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o077) == 0 for p in out.rglob("*"))
    # Every host's temp dir is gone, and the detached jobs exit once it is.
    assert lab.remote_dirs() == []
    assert wait_until(lambda: lab.our_processes() == [], 5), lab.our_processes()


def test_backend_reset_is_seen_leaving_backend_and_arriving_at_proxy(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    code, stdout, _ = run_cli(
        capsys,
        "-i",
        str(clean_lab.inventory),
        "--flow",
        FLOW_8080,
        "-d",
        "2",
        "-o",
        str(out),
        "--reproduce",
        f"curl -sS -m 3 http://{PROXY_FRONT}:8080/reset",
    )
    assert code == 0, stdout
    (at_backend,) = resets(out, "backend", "eth1")
    assert (at_backend.seg.src, at_backend.seg.sport, at_backend.direction) == (BACKEND_IP, 80, "out")
    upstream = resets(out, "proxy", "eth2")
    assert [(r.seg.src, r.direction, r.seg.seq) for r in upstream] == [(BACKEND_IP, "in", at_backend.seg.seq)]
    # The filter derived the upstream leg for the backend and the proxy's back side only.
    assert f"host {BACKEND_IP} and port 80" in host(manifest(out), "backend")["bpf_filter"]
    assert "port 8080" not in host(manifest(out), "backend")["bpf_filter"]


def test_a_host_without_sftp_delivers_its_evidence(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The backend's sshd has no SFTP subsystem: its capture, snapshots and witness come back
    over an exec channel, checked against the SHA-256 the host computed."""
    lab = clean_lab
    sftp = subprocess.run(
        ["sftp", "-b", "/dev/null", "-F", str(lab.root / "ssh_config"), "-i", str(lab.root / "id_ed25519"),
         "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes", f"root@{MGMT[NO_SFTP]}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert sftp.returncode != 0, "the backend's sshd must refuse SFTP for this test to mean anything"
    out = tmp_path / "bundle"
    code, stdout, _ = run_cli(capsys, "-i", str(lab.inventory), "--flow", FLOW_8080, "-d", "2", "-o", str(out),
                              "--reproduce", f"curl -sS -m 3 http://{PROXY_FRONT}:8080/reset")  # fmt: skip
    assert code == 0, stdout
    backend = host(manifest(out), NO_SFTP)
    assert backend["status"] == "ok" and backend["captures"][0]["bytes"] > 24
    assert (out / NO_SFTP / "eth1.pcap").stat().st_size == backend["captures"][0]["bytes"]
    assert list((out / NO_SFTP / "witness").glob("witness.*")), "the witness files came back too"
    assert verify(out) == []
    (at_backend,) = resets(out, NO_SFTP, "eth1")
    assert at_backend.direction == "out"


def test_stopped_sshd_is_reported_and_others_evidence_kept(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_lab.stop_sshd("backend")
    out = tmp_path / "bundle"
    code, stdout, _ = run_cli(
        capsys,
        "-i",
        str(clean_lab.inventory),
        "--flow",
        FLOW_8080,
        "-d",
        "1",
        "-o",
        str(out),
        "--reproduce",
        f"curl -sS -m 3 http://{PROXY_FRONT}:8080/",
    )
    assert code == 3
    m = manifest(out)
    backend = host(m, "backend")
    assert backend["status"] == "failed" and backend["error_kind"] == "unreachable"
    assert "connection refused" in backend["error"]
    line = next(ln for ln in stdout.splitlines() if ln.strip().startswith("backend"))
    assert "failed" in line and "connection refused" in line
    for name in ("client", "router", "proxy"):
        h = host(m, name)
        assert h["status"] == "ok"
        assert all((out / c["path"]).stat().st_size > 24 for c in h["captures"] if c["interface"] == "eth1")
    assert verify(out) == []


def test_unknown_host_key_is_refused_then_accepted_only_on_request(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = clean_lab
    kh = tmp_path / "known_hosts"
    kh.write_text(
        "".join(ln for ln in lab.known_hosts.read_text().splitlines(True) if not ln.startswith("198.19.0.13 "))
    )
    inv = tmp_path / "inv.toml"
    inv.write_text(lab.inventory.read_text().replace(str(lab.known_hosts), str(kh)))

    code, stdout, _ = run_cli(capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "a"))
    assert code == 3
    proxy = host(manifest(tmp_path / "a"), "proxy")
    assert proxy["error_kind"] == "host_key" and "--accept-new-host-keys" in proxy["error"]

    code, _, _ = run_cli(
        capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "b"), "--accept-new-host-keys"
    )
    assert code == 0
    assert lab.host_keys["proxy"] in kh.read_text()

    # A key that does not match is refused even with --accept-new-host-keys.
    wrong = lab.host_keys["client"]
    kh.write_text(kh.read_text().replace(lab.host_keys["proxy"], wrong))
    code, _, _ = run_cli(
        capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "c"), "--accept-new-host-keys"
    )
    assert code == 3
    proxy = host(manifest(tmp_path / "c"), "proxy")
    assert proxy["error_kind"] == "host_key" and "does NOT match" in proxy["error"]


def test_missing_interface_is_a_clear_preflight_failure(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.toml"
    inv.write_text(
        clean_lab.inventory.read_text().replace(
            'interfaces = ["eth1"]\naddresses = ["198.18.3.10"]', 'interfaces = ["eth9"]\naddresses = ["198.18.3.10"]'
        )
    )
    code, stdout, _ = run_cli(capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "b"))
    assert code == 3
    backend = host(manifest(tmp_path / "b"), "backend")
    assert backend["error_kind"] == "no_interface" and "eth9" in backend["error"]
    assert clean_lab.remote_dirs() == []


def test_capture_stops_itself_at_max_packets(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    code, _, _ = run_cli(
        capsys,
        "-i",
        str(clean_lab.inventory),
        "--flow",
        FLOW_8080,
        "-d",
        "3",
        "-o",
        str(out),
        "--max-packets",
        "2",
        "--hosts",
        "client",
        "--reproduce",
        f"curl -sS -m 3 http://{PROXY_FRONT}:8080/",
    )
    assert code == 0
    client = host(manifest(out), "client")
    assert client["stop_reason"] == "max-packets"
    assert client["captures"][0]["packets"] == 2


def test_sigkilled_controller_leaves_nothing_behind(clean_lab: Lab, tmp_path: Path) -> None:
    lab = clean_lab
    duration, grace, keep = 3, 2, 3
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "--plain",
            "-i",
            str(lab.inventory),
            "--flow",
            FLOW_8080,
            "-d",
            str(duration),
            "--grace",
            str(grace),
            "--keep",
            str(keep),
            "-o",
            str(tmp_path / "b"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "[run] armed: 4/4" in line:
                break
        else:
            pytest.fail(f"controller never armed: {proc.wait()}")
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # At the moment of the kill our captures were running on every host.
    running = lab.our_processes()
    assert sum(prog == "tcpdump" for _, prog, _ in running) == 6, running  # 1 + 2 + 2 + 1 interfaces
    left = lab.remote_dirs()
    assert len(left) == 4 and all(d.startswith("capture-all.") for d in left), left
    # Each host's run lock, and each run's holder and job: in the run directory, root's alone.
    records = lab.run_records()
    assert sorted(r.split(".")[-1] for r in records if not r.startswith("capture-all.lock.")) == ["holder"] * 4 + [
        "pid"] * 4, records  # fmt: skip
    assert len([r for r in records if r.startswith("capture-all.lock.")]) == 4, records
    assert len(lab.trace_instances()) == 4  # each host's kernel reset witness

    # No tcpdump of ours survives duration + grace (plus a second of slack for the signal).
    nothing_left_after(lab, killed_at + duration + grace + 1, keep + 4)


def nothing_left_after(lab: Lab, stopped_at: float, reaped_within: float) -> None:
    """The hosts' own bounds after the controller died: at ``stopped_at`` (time.monotonic) no
    capture of ours runs; then the jobs remove their ftrace instances, and within
    ``reaped_within`` seconds more the evidence (kept for `keep`) and every process of ours."""
    time.sleep(max(0.0, stopped_at - time.monotonic()))
    assert [p for p in lab.our_processes() if p[1] in ("tcpdump", "timeout")] == []
    # The jobs remove their ftrace instances as soon as their captures end.
    assert wait_until(lambda: lab.trace_instances() == [], 5), lab.trace_instances()
    # The evidence stays for `keep` seconds, then the host removes it and nothing of ours runs.
    assert wait_until(lambda: lab.remote_dirs() == [] and lab.our_processes() == [] and lab.run_records() == [],
                      reaped_within), (lab.remote_dirs(), lab.our_processes(), lab.run_records())  # fmt: skip


def test_packets_just_before_the_stop_are_kept(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: without --immediate-mode, packets still in libpcap's ring block when the
    capture is stopped were counted 'received by filter' but never written."""
    out = tmp_path / "b"
    code, _, _ = run_cli(
        capsys,
        "-i",
        str(clean_lab.inventory),
        "--flow",
        FLOW_8080,
        "-d",
        "0.3",
        "-o",
        str(out),
        "--hosts",
        "client,proxy",
        "--reproduce",
        f"curl -sS -m 3 http://{PROXY_FRONT}:8080/",
    )
    assert code == 0
    for name in ("client", "proxy"):
        for cap in host(manifest(out), name)["captures"]:
            assert cap["packets"] == cap["received_by_filter"], cap
    assert host(manifest(out), "client")["captures"][0]["packets"] >= 9  # handshake, request, response, close


def test_ctrl_c_twice_abandons_with_the_manifest_written(clean_lab: Lab, tmp_path: Path) -> None:
    """First Ctrl-C: stop and collect; a second one at once: give up. One clear line, exit 130,
    no traceback, the manifest says what each host had done, and the hosts clean up by themselves."""
    lab = clean_lab
    duration, grace, keep = 20, 1, 2
    argv = [sys.executable, "-m", "orchestrator.cli", "--plain", "-i", str(lab.inventory), "--flow", FLOW_8080,
            "-d", str(duration), "--grace", str(grace), "--keep", str(keep), "-o", str(tmp_path / "b")]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) as proc:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "[run] armed: 4/4" in line:
                break
        else:
            pytest.fail(f"controller never armed: {''.join(seen)}")
        abandoned_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "abandoned with a second Ctrl-C" in err, err
    m = manifest(tmp_path / "b")
    assert m["exit_status"] == 130 and {h["name"] for h in m["hosts"]} == {"client", "router", "proxy", "backend"}
    assert all(h["status"] == "ok" or h["error_kind"] == "abandoned" for h in m["hosts"]), m["hosts"]
    # Abandoned, the hosts stop and clean up by themselves: nothing of ours once the capture's own
    # limit (it was stopped early: at most duration + grace) and keep have passed.
    assert wait_until(lambda: lab.our_processes() == [] and lab.remote_dirs() == [],
                      abandoned_at + duration + grace + keep + 5 - time.monotonic()), lab.our_processes()  # fmt: skip


def test_hosts_answering_garbage_are_one_line_each_and_the_others_keep_their_evidence(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two odd hosts behind real sshd: the backend's login prints a banner and mangles every number
    of the capture session on its way out (now_ns=1700000000N); the router is a restricted account
    whose ForceCommand answers anything with one sentence. The router is one line and exit 3, the
    backend's capture still comes back, and every other host's evidence is kept."""
    lab = clean_lab
    lab.stop_sshd("backend")
    lab.start_sshd("backend", force_command=(
        'echo "Welcome to backend (managed by config-mgmt)"\n'
        'sh -c "$SSH_ORIGINAL_COMMAND" |'
        ' sed -u "s/^now_ns=\\([0-9]*\\)$/now_ns=\\1N/; s/^job_pid=.*/job_pid=42x/"\n'
    ))  # fmt: skip
    lab.stop_sshd("router")
    lab.start_sshd("router", force_command='echo "This account may only run backups."\nexit 1\n')
    out = tmp_path / "bundle"
    code, stdout, _ = run_cli(capsys, "-i", str(lab.inventory), "--flow", FLOW_8080, "-d", "2", "-o", str(out),
                              "--reproduce", f"curl -sS -m 3 http://{PROXY_FRONT}:8080/reset")  # fmt: skip
    assert code == 3, stdout
    m = manifest(out)
    router = host(m, "router")
    assert (router["status"], router["failed_phase"]) == ("failed", "prepare"), router
    assert "This account may only run backups." in router["error"]
    assert "Traceback" not in stdout
    (line,) = [ln for ln in stdout.splitlines() if ln.strip().startswith("router")]
    assert "failed" in line and "This account may only run backups." in line
    backend = host(m, "backend")
    assert backend["status"] == "ok" and backend["remote_armed_ns"] is None, backend
    assert backend["captures"][0]["packets"] > 0 and resets(out, "backend", "eth1")
    for name in ("client", "proxy"):
        assert host(m, name)["status"] == "ok" and all(c["packets"] for c in host(m, name)["captures"])
    assert verify(out) == []
    assert lab.remote_dirs() == [] and wait_until(lambda: lab.our_processes() == [], 5), lab.our_processes()
