"""capture-all audit against the lab's real HAProxy, over SSH: the client pool's idle timeout
(inventory) set against HAProxy's client-side keep-alive read from its running config; and the
same chain in a capture's report, linked to the idle-reuse reset it explains."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.lab.labnet import BACKEND_IP, CLIENT_IP, CLIENT_NAT_SIDE, LAB_USERS, PROXY_FRONT, Lab, sh
from tests.lab.test_capture import run_cli
from tests.lab.test_scenarios import CLIENTS, fact, first, origin


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["audit", *args])
    return code, capsys.readouterr().out


def with_client_idle(lab: Lab, tmp_path: Path, idle: str, base: Path | None = None) -> Path:
    text = (base or lab.inventory).read_text()
    text, n = re.subn(r'(name = "client"\nrole = "client"\n)', rf'\1idle_timeout = "{idle}"\n', text)
    assert n == 1
    path = tmp_path / f"inventory-{idle}.toml"
    path.write_text(text)
    return path


def test_a_pool_that_outlives_the_proxys_keep_alive_is_named_with_both_values(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = f"{CLIENT_IP}->{PROXY_FRONT}:8080"
    code, out = run(capsys, "-i", str(with_client_idle(clean_lab, tmp_path, "5s")), "-f", flow)
    assert code == 9, out
    cfg = clean_lab.root / "haproxy.cfg"
    line = next(n for n, x in enumerate(cfg.read_text().splitlines(), 1) if "timeout http-request" in x)
    # The lab's HAProxy sets no http-keep-alive: HAProxy then keeps idle client connections for
    # its http-request timeout (2 s), read from the file the running haproxy was started with.
    want = (f"client connection pool idle timeout 5 s (inventory idle_timeout 5s) >= proxy client-side keep-alive "
            f"(HAProxy) 2 s ({cfg}:{line} (timeout http-request 2s)): VIOLATED")  # fmt: skip
    assert want in out, out
    assert "backend: no idle_timeout in the inventory" in out
    code, out = run(capsys, "-i", str(with_client_idle(clean_lab, tmp_path, "1s")), "-f", flow)
    assert code == 0, out
    assert "client connection pool idle timeout 1 s (inventory idle_timeout 1s) < proxy" in out and "in order" in out


ESTABLISHED = "net.netfilter.nf_conntrack_tcp_timeout_established"


@pytest.mark.parametrize("value", [432000, 7])  # the kernel's default (six digits); a short one
def test_the_nats_conntrack_timeout_is_the_kernels(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: int
) -> None:
    """The NAT's established timeout as its kernel holds it (`sysctl -n`), set against a 30 s pool:
    read under dash with `read`, 432000 came back as 4, and the audit called a five-day NAT
    'VIOLATED'."""
    before = sh("sysctl", "-n", ESTABLISHED, ns="nat").strip()
    sh("sysctl", "-qw", f"{ESTABLISHED}={value}", ns="nat")
    try:
        assert sh("sysctl", "-n", ESTABLISHED, ns="nat").strip() == str(value)
        inv = with_client_idle(clean_lab, tmp_path, "30s", clean_lab.nat_inventory(declared=True))
        code, out = run(capsys, "-i", str(inv), "-f", f"{CLIENT_NAT_SIDE}->{PROXY_FRONT}:8080")
    finally:
        sh("sysctl", "-qw", f"{ESTABLISHED}={before}", ns="nat")
    rel, verdict = ("<", "in order") if value > 30 else (">=", "VIOLATED")
    want = (f"client connection pool idle timeout 30 s (inventory idle_timeout 30s) {rel} nat conntrack "
            f"established timeout {value:g} s (sysctl {ESTABLISHED}): {verdict}")  # fmt: skip
    assert want in out, out
    assert code == 9, out  # the proxy's 2 s keep-alive is shorter than the pool's 30 s either way


def quiet_backend_leg(limit_s: float = 10.0) -> None:
    """Until HAProxy holds no connection to the backend: the server connections earlier tests left
    in its pool end when the backend's 5 s keep-alive closes them, and HAProxy answers that FIN with
    a reset of its own (a real one, the proxy's, on the backend leg). This test's first reset must be
    its own idle reuse."""
    deadline = time.monotonic() + limit_s
    while sh("ss", "-Htn", "dst", BACKEND_IP, ns="proxy").strip():
        assert time.monotonic() < deadline, sh("ss", "-tn", "dst", BACKEND_IP, ns="proxy")
        time.sleep(0.2)


def test_an_idle_reuse_reset_is_linked_to_the_pair_it_violates(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client's pool keeps idle connections 5 s (inventory); HAProxy gives up on an idle
    client connection after 2 s. The client reuses one after 3 s: the proxy's stack resets it, and
    the capture's report links that reset to the pair out of order, with both values."""
    inv = with_client_idle(clean_lab, tmp_path, "5s")
    out = tmp_path / "b"
    quiet_backend_leg()
    code, stdout, _ = run_cli(capsys, "-i", str(inv), "--flow", f"{CLIENT_IP}->{PROXY_FRONT}:8080", "-d", "4",
                              "-o", str(out), "--hosts", "client,proxy",
                              "--reproduce", f"{CLIENTS} reuse {PROXY_FRONT} 8080 3")  # fmt: skip
    assert code == 0, stdout
    report = json.loads((out / "report.json").read_text())
    r = first(report)
    assert origin(r) == ("host", "proxy") and r["cause"] == "idle_reuse", r
    # The packets' own pattern, not only the kernel's reason: HAProxy had closed it with a FIN.
    assert fact(r, "cause")["cause"] == "idle_reuse" and fact(r, "cause")["fin"] is True
    chain = report["idle_chain"]
    assert [x["reset_id"] for x in chain["explains"]] == [r["id"]], chain
    pair = chain["pairs"][chain["explains"][0]["pair"]]
    assert pair["ok"] is False
    assert pair["reuser"] == {"host": "client", "what": "connection pool idle timeout", "ms": 5000.0,
                              "source": "inventory idle_timeout 5s"}  # fmt: skip
    cfg = clean_lab.root / "haproxy.cfg"
    assert (pair["closer"]["host"], pair["closer"]["ms"]) == ("proxy", 2000.0)
    assert pair["closer"]["source"].startswith(f"{cfg}:") and "(timeout http-request 2s)" in pair["closer"]["source"]
    linked = fact(r, "idle_chain")
    assert 3_000_000_000 <= linked["idle_ns"] < 5_000_000_000
    assert "The idle-timeout chain is out of order here: client's connection pool idle timeout is 5 s" in stdout
    assert "## Idle-timeout chain" in (out / "report.md").read_text()
    # HAProxy's own line for the first request on that connection: matched to it, on the timeline
    # (aligned clock, before the reset), cited as agreeing: it ended normally, then idled.
    port = r["tuple"]["dport"] if r["tuple"]["src"] == PROXY_FRONT else r["tuple"]["sport"]
    lines = [x for x in report["log_lines"] if x["client"] == {"ip": CLIENT_IP, "port": port}]
    assert [(x["format"], x["reset_id"]) for x in lines] == [("haproxy", r["id"])], lines
    assert lines[0]["time_ns"] < r["time_ns"] and lines[0]["says"].startswith("termination state --")
    assert any(x["kind"] == "log" and x["reset_id"] == r["id"] for x in report["timeline"])
    assert fact(r, "log_agrees")["meaning"] == "normal_end"
    # The readings came back with the proxy's evidence (and only the proxy's: the client has none to read).
    assert (out / "proxy" / "timeouts.txt").is_file() and not (out / "client" / "timeouts.txt").exists()


def test_our_root_reads_no_file_a_local_user_points_it_at(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 29.3: a local user (uid 4242) names a process haproxy and gives it `-f SECRET`: as a
    binary of its own, and as a root-owned binary run as that user. The audit's root follows
    neither; the lab's real HAProxy (root's, its root-owned config) is still read."""
    secret = tmp_path / "secret.cfg"
    secret.write_text("frontend x\n  # SECRET-4f1c9e\n")
    secret.chmod(0o600)
    shared = Path(tempfile.mkdtemp(prefix="capture-all-hostile-"))  # the user must reach it: 0755
    shared.chmod(0o755)
    own, roots = shared / "own", shared / "root"
    own.mkdir()
    roots.mkdir()
    shutil.copy("/usr/bin/python3.11", own / "haproxy")
    os.chown(own, LAB_USERS["captest"], LAB_USERS["captest"])
    os.chown(own / "haproxy", LAB_USERS["captest"], LAB_USERS["captest"])
    shutil.copy("/usr/bin/python3.11", roots / "haproxy")  # root's, run by the user
    sleeper = "import time; time.sleep(60)"
    procs = [subprocess.Popen([str(d / "haproxy"), "-c", sleeper, "-f", str(secret), "-f", str(shared)],
                              user=LAB_USERS["captest"], group=LAB_USERS["captest"]) for d in (own, roots)]  # fmt: skip
    try:
        out = tmp_path / "b"
        code, stdout, _ = run_cli(capsys, "-i", str(clean_lab.inventory), "--flow", f"{CLIENT_IP}->{PROXY_FRONT}:8080",
                                  "-d", "1", "-o", str(out), "--hosts", "proxy")  # fmt: skip
        assert code == 0, stdout
        text = (out / "proxy" / "timeouts.txt").read_text()
        assert "SECRET-4f1c9e" not in text and str(secret) not in text, text
        assert f"# capture-all file: {clean_lab.root / 'haproxy.cfg'}" in text, text
    finally:
        for p in procs:  # ours, by their PIDs
            p.kill()
            p.wait(10)
        shutil.rmtree(shared)
