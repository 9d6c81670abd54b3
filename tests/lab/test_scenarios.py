"""The analysis issue's seven scenarios, each captured over SSH in the lab and then attributed.

Each test reproduces a real reset with real components (kernel, HAProxy, nftables), runs
capture-all end to end and checks the report's first reset: who emitted it and why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from analysis.decode import RST
from tests.lab.labnet import BACKEND_IP, CLIENT_IP, PROXY_FRONT, REPO, Lab, sh
from tests.lab.test_capture import run_cli
from tests.pcapgen import shift_pcap

CLIENTS = f"{sys.executable} {REPO}/tests/lab/clients.py"


def capture(capsys: pytest.CaptureFixture[str], lab: Lab, out: Path, flow: str, reproduce: str, duration: str = "2"):
    code, stdout, _ = run_cli(
        capsys, "-i", str(lab.inventory), "--flow", flow, "-d", duration, "-o", str(out), "--reproduce", reproduce
    )
    assert code == 0, stdout
    report = json.loads((out / "report.json").read_text())
    kernel_facts_hold(out, report)
    return report, stdout


# What the snapshot says of each host's kernel, against the file itself (`cat` in the host's network
# namespace): under dash, a `read` of an integer /proc/sys file gave its first digit (262144: 2).
KERNEL_FILES = {"before/uname.txt": "/proc/sys/kernel/osrelease",
                "before/conntrack_max.txt": "/proc/sys/net/netfilter/nf_conntrack_max",
                "before/port_range.txt": "/proc/sys/net/ipv4/ip_local_port_range"}  # fmt: skip


def kernel_facts_hold(out: Path, report: dict[str, Any]) -> None:
    for host in (d.name for d in out.iterdir() if (d / "before").is_dir()):
        for rel, path in KERNEL_FILES.items():
            assert (out / host / rel).read_text().strip() == sh("cat", path, ns=host).strip(), (host, rel)
    # The lab's conntrack tables hold a few entries of 262144: no caveat may say they are near full.
    assert not [c for c in report["caveats"] if "conntrack table" in c], report["caveats"]


def first(report: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in report["resets"] if r["id"] == report["first_reset"])


def fact(r: dict[str, Any], kind: str) -> dict[str, Any]:
    """The reset's evidence record of this kind in report.json (the test fails if there is none)."""
    found = [e for e in r["evidence"] if e["kind"] == kind]
    assert found, (kind, [e["kind"] for e in r["evidence"]])
    return dict(found[0])


def origin(r: dict[str, Any]) -> tuple[str, str | None]:
    return r["origin"]["kind"], r["origin"]["host"]


def kernel_sent(report: dict[str, Any], r: dict[str, Any], host: str, reason: str, *also: str) -> dict[str, Any]:
    """The sender's own tcp_send_reset for reset r, with the kernel's reason (or one of ``also``),
    also on the timeline."""
    sent = r["kernel"]["sent"]
    assert sent is not None, r
    assert sent["host"] == host and sent["reason"] in (reason, *also), sent
    reason = sent["reason"]
    t = r["tuple"]
    assert (sent["src"], sent["sport"], sent["dst"], sent["dport"]) == (t["src"], t["sport"], t["dst"], t["dport"])
    rows = [x for x in report["timeline"] if x["kind"] == "kernel" and x["reset_id"] == r["id"]]
    assert any(f"{host} kernel sent RST to {t['dst']}:{t['dport']}, reason {reason}" in x["text"] for x in rows), rows
    return dict(sent)


def test_a_idle_keepalive_reused_after_the_backend_reaped_it(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Backend :81 closes idle keep-alive connections after 1 s; the client reuses one after 1.6 s.
    report, stdout = capture(
        capsys, clean_lab, tmp_path / "b", f"{CLIENT_IP}->{BACKEND_IP}:81", f"{CLIENTS} reuse {BACKEND_IP} 81 1.6", "3"
    )
    r = first(report)
    assert origin(r) == ("host", "backend") and r["cause"] == "idle_reuse", r
    assert fact(r, "cause")["fin"] is True and fact(r, "cause")["idle_ns"] >= 1_500_000_000
    assert "backend's own TCP stack sent the first reset" in report["verdict"]
    assert "timeline around the first reset" in stdout and "<== R" in stdout
    # Data arriving on a connection the backend had closed: answered in softirq, so the process
    # that happened to be on the CPU is not credited.
    sent = kernel_sent(report, r, "backend", "TCP_TIMEWAIT_SOCKET")
    assert sent["softirq"] is True and sent["sender_process"] is None
    assert "backend kernel sent RST to" in stdout and "reason TCP_TIMEWAIT_SOCKET" in stdout
    assert "its kernel logged it, reason TCP_TIMEWAIT_SOCKET" in report["verdict"]


def test_b_proxy_resets_the_client_on_its_own(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # HAProxy rejects /admin (http-request reject, option nolinger): no upstream connection at all.
    report, _ = capture(
        capsys,
        clean_lab,
        tmp_path / "b",
        f"{CLIENT_IP}->{PROXY_FRONT}:8083",
        f"{CLIENTS} hold {PROXY_FRONT} 8083 /admin 1",
    )
    r = first(report)
    assert origin(r) == ("host", "proxy") and r["cause"] == "proxy_policy", r
    assert not any(x["origin"]["host"] == "backend" for x in report["resets"])
    # HAProxy's nolinger: an SO_LINGER-0 close, in HAProxy's own process context.
    sent = kernel_sent(report, r, "proxy", "TCP_STATE")
    assert sent["softirq"] is False and sent["sender_process"].startswith("haproxy pid ")
    # HAProxy's own log says it: the proxy aborted the session while reading the request (PR),
    # for the client's address and port; matched to R1, cited as agreeing, on the timeline.
    port = r["tuple"]["dport"]
    lines = [x for x in report["log_lines"] if x["client"] == {"ip": CLIENT_IP, "port": port}]
    assert [(x["format"], x["meaning"], x["reset_id"]) for x in lines] == [("haproxy", "proxy_abort", r["id"])], lines
    assert lines[0]["says"].startswith("termination state PR: the proxy (HAProxy) aborted it, waiting for the request")
    assert fact(r, "log_agrees")["meaning"] == "proxy_abort"
    assert any(x["kind"] == "log" and x["reset_id"] == r["id"] for x in report["timeline"])


def test_c_router_forges_a_reset(clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean_lab.router_forges_resets(8081)
    report, _ = capture(
        capsys,
        clean_lab,
        tmp_path / "b",
        f"{CLIENT_IP}->{PROXY_FRONT}:8081",
        f"curl -sS -m 3 http://{PROXY_FRONT}:8081/",
    )
    r = first(report)
    assert r["origin"] == {"kind": "middlebox", "host": "router", "between": ["client", "proxy"]}
    assert r["cause"] == "middlebox"
    ttl = fact(r, "ttl_differs")
    assert (ttl["at"], ttl["rst_ttl"], ttl["genuine_ttls"]) == ("client", 64, [63])
    # nft's reject builds the RST outside any TCP stack: no host's kernel logged sending it, and
    # the proxy's witness, running all along, is cited for that.
    assert r["kernel"]["sent"] is None and r["kernel"]["no_send_event_at"] == "proxy"
    assert fact(r, "witness_silent")["host"] == "proxy"
    assert "proxy's own kernel logged no reset on this connection" in report["verdict"]
    assert [x["host"] for x in r["kernel"]["received"]] == ["client"]  # the client's stack accepted it
    # HAProxy (client timeout 30 s) still held the connection when the capture ended.
    assert fact(r, "still_open")["host"] == "proxy"


def test_c2_forged_reset_without_the_router_captured(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The router is not captured: the proxy's silence plus the TTL still show an injection
    between client and proxy, and the report says the router was not captured."""
    clean_lab.router_forges_resets(8081)
    code, _, _ = run_cli(
        capsys, "-i", str(clean_lab.inventory), "--flow", f"{CLIENT_IP}->{PROXY_FRONT}:8081", "-d", "2",
        "-o", str(tmp_path / "b"), "--hosts", "client,proxy,backend",
        "--reproduce", f"curl -sS -m 3 http://{PROXY_FRONT}:8081/",
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "b/report.json").read_text())
    r = first(report)
    assert r["origin"] == {"kind": "middlebox", "host": None, "between": ["client", "proxy"]}
    assert fact(r, "injected")["host"] == "proxy"
    assert (fact(r, "ttl_differs")["rst_ttl"], fact(r, "ttl_differs")["genuine_ttls"]) == (64, [63])
    assert "injected by a box between client and proxy" in report["verdict"]


def capture_restarting_backend(lab: Lab, inventory: Path, flow: str, reproduce: str, duration: str,
                               out: Path, *, restart: bool = True) -> dict[str, Any]:  # fmt: skip
    """capture-all as a user runs it (its own process); with ``restart``, the backend process is
    killed (SIGKILL) and restarted half a second after the reproducer started. The report."""
    argv = [sys.executable, "-m", "orchestrator.cli", "--plain", "-i", str(inventory), "--flow", flow,
            "-d", duration, "-o", str(out), "--reproduce", reproduce]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        if restart:
            for line in proc.stderr:
                if "[client] reproducing" in line:
                    break
            time.sleep(0.5)  # the first request is answered; the connection is idle and open
            lab.kill_backend(80)
            lab.start_backend(80)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stdout + stderr
    report = dict(json.loads((out / "report.json").read_text()))
    kernel_facts_hold(out, report)
    return report


def test_d_backend_killed_with_connections_open(clean_lab: Lab, tmp_path: Path) -> None:
    """The backend process dies (SIGKILL) with a keep-alive connection open and is restarted; the
    client's next request on that connection is reset, and the listener's PID changed."""
    report = capture_restarting_backend(clean_lab, clean_lab.inventory, f"{CLIENT_IP}->{BACKEND_IP}:80",
                                        f"{CLIENTS} reuse {BACKEND_IP} 80 1.5", "4", tmp_path / "b")  # fmt: skip
    r = first(report)
    assert origin(r) == ("host", "backend") and r["cause"] == "peer_restart", r
    assert "PID" in fact(r, "cause")["listener"]
    # The killed process's socket was closed by the kernel (FIN); the reused connection's data met
    # what was left of it (an orphan in FIN-WAIT-2 as a timewait socket), or nothing at all where
    # the kernel had already dropped that orphan (one CI run: NO_SOCKET).
    kernel_sent(report, r, "backend", "TCP_TIMEWAIT_SOCKET", "NO_SOCKET")


def test_e_connection_refused_is_not_a_reset_of_an_established_connection(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, _ = capture(
        capsys,
        clean_lab,
        tmp_path / "b",
        f"{CLIENT_IP}->{PROXY_FRONT}:9999",
        f"curl -sS -m 3 http://{PROXY_FRONT}:9999/",
    )
    r = first(report)
    assert origin(r) == ("host", "proxy") and r["cause"] == "refused", r
    assert fact(r, "cause") == {**fact(r, "cause"), "cause": "refused", "port": 9999}
    assert "connection refused" in report["verdict"]
    assert kernel_sent(report, r, "proxy", "NO_SOCKET")["sender_process"] is None  # softirq


def test_f_server_closes_with_unread_data(clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The backend answers 413 at once and closes while the client is still uploading 2 MB.
    report, _ = capture(
        capsys,
        clean_lab,
        tmp_path / "b",
        f"{CLIENT_IP}->{BACKEND_IP}:80",
        f"{CLIENTS} upload {BACKEND_IP} 80 /early 2000000",
    )
    r = first(report)
    assert origin(r) == ("host", "backend") and r["cause"] == "unread_data_close", r
    # From the packets alone: the client's data still arriving after the 413, or (when the
    # upload filled the backend's receive window first) the backend's last ACK at window 0.
    said = fact(r, "cause")
    assert said["bytes_after"] > 0 or said["zero_window"], said
    sent = kernel_sent(report, r, "backend", "TCP_ABORT_ON_CLOSE")
    assert sent["sender_process"].startswith("python")  # close() in the backend's own process


def test_g_backend_resets_and_the_proxy_propagates(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # HAProxy in TCP mode with nolinger: the backend aborts mid-response, HAProxy resets the client.
    report, _ = capture(
        capsys,
        clean_lab,
        tmp_path / "b",
        f"{CLIENT_IP}->{PROXY_FRONT}:8082",
        f"{CLIENTS} hold {PROXY_FRONT} 8082 /partial 1",
    )
    r = first(report)
    assert origin(r) == ("host", "backend") and r["chain_role"] == "first", r
    to_client = [x for x in report["resets"] if x["tuple"]["dst"] == CLIENT_IP]
    assert to_client, report["resets"]
    for x in to_client:
        assert origin(x) == ("host", "proxy") and x["chain_role"] == "propagated" and x["chain"] == r["chain"]
    assert any(x["propagated_from"] == r["id"] for x in to_client)
    assert "propagated by proxy" in report["verdict"]
    kernel_sent(report, r, "backend", "TCP_STATE")  # the backend's SO_LINGER-0 abort
    for x in to_client:
        kernel_sent(report, x, "proxy", "TCP_STATE")  # and HAProxy's nolinger


def test_analyze_hand_taken_pcaps_and_its_exit_statuses(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Captures taken by hand (here: copied out of a bundle, no snapshots, no manifest) are
    analysed from the packets alone; with an inventory the roles and addresses come along."""
    clean_lab.router_forges_resets(8081)
    capture(
        capsys,
        clean_lab,
        tmp_path / "b",
        f"{CLIENT_IP}->{PROXY_FRONT}:8081",
        f"curl -sS -m 3 http://{PROXY_FRONT}:8081/",
    )
    pcaps = {h: tmp_path / f"{h}.pcap" for h in ("client", "router", "proxy")}
    for h, path in pcaps.items():
        path.write_bytes((tmp_path / "b" / h / ("eth1.pcap")).read_bytes())
    args = [f"--pcap={h}={p}" for h, p in pcaps.items()]

    code = main_cli(["analyze", *args, "-i", str(clean_lab.inventory), "--out", str(tmp_path / "r"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    r = first(report)
    # One interface of a forwarding router, by hand: its own MAC cannot be learned from its own
    # addresses (it neither sends nor receives with them), so the claim is the honest, weaker one:
    # injected between the router's capture point and the proxy, which never sent it.
    assert r["origin"] == {"kind": "middlebox", "host": None, "between": ["router", "proxy"]}
    assert (fact(r, "ttl_differs")["rst_ttl"], fact(r, "ttl_differs")["genuine_ttls"]) == (64, [63])
    assert (tmp_path / "r/report.md").is_file()

    # Without an inventory, on a point-to-point link both MACs are in every frame: which side is the
    # client cannot be told, and the tool says so instead of guessing (a guess once said "forged by
    # client").
    code = main_cli(["analyze", f"--pcap=client={pcaps['client']}"])
    out = capsys.readouterr().out
    assert code == 6, out
    assert "cannot be attributed" in out and "which side is client cannot be told" in out
    assert "forged by client" not in out

    # A capture of the flow with no reset in it (the client's, its RSTs left out).
    quiet = tmp_path / "quiet.pcap"
    quiet.write_bytes(shift_pcap(pcaps["client"].read_bytes(), 0, keep=lambda _t, frame: not frame[14 + 20 + 13] & RST))
    assert main_cli(["analyze", f"--pcap=client={quiet}"]) == 5
    assert "No TCP reset was captured" in capsys.readouterr().out
    # A capture that holds nothing (the backend was not on this flow's path): no claim either way.
    empty = tmp_path / "b/backend/eth1.pcap"
    assert main_cli(["analyze", f"--pcap=backend={empty}"]) == 7
    out = capsys.readouterr().out
    assert "Nothing was captured" in out and "No TCP reset was captured" not in out


def main_cli(argv: list[str]) -> int:
    from orchestrator.cli import main

    return main(argv)
