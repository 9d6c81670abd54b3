"""A newcomer's first hour, against the lab's real sshd: an inventory written by `capture-all
init` from an ssh config and from an Ansible inventory, accepted by `plan` and capturing a real
reset; `plan` contacting nobody; hosts behind a chain of two jump hosts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.inventory import load_inventory
from tests.lab.labnet import CLIENT_IP, MGMT, PROXY_FRONT, REPO, Lab, sh
from tests.lab.test_access import inventory
from tests.lab.test_capture import FLOW_8080, host, manifest, run_cli
from tests.lab.test_scenarios import CLIENTS, first, origin

FLOW_ADMIN = f"{CLIENT_IP}->{PROXY_FRONT}:8083"  # HAProxy rejects /admin with a reset of its own


def _plan(inv: Path, flow: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "plan", "-i", str(inv), "-f", flow],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)  # fmt: skip


def _capture_admin(capsys: pytest.CaptureFixture[str], inv: Path, out: Path) -> dict:  # type: ignore[type-arg]
    code, stdout, _ = run_cli(capsys, "-i", str(inv), "-f", FLOW_ADMIN, "-d", "2", "-o", str(out), "--hosts",
                              "client,proxy", "--reproduce", f"{CLIENTS} hold {PROXY_FRONT} 8083 /admin 1")  # fmt: skip
    assert code == 0, stdout
    report = json.loads((out / "report.json").read_text())
    r = first(report)
    assert origin(r) == ("host", "proxy") and r["cause"] == "proxy_policy", r
    return report


def test_init_from_an_ssh_config_then_plan_then_capture(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Host entries with HostName, User, IdentityFile and UserKnownHostsFile: the inventory names
    no known_hosts file, so the host keys are checked against the one the ssh config names."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text("".join(
        f"Host {h}\n  HostName {MGMT[h]}\n  User root\n  IdentityFile {clean_lab.root / 'id_ed25519'}\n"
        f"  UserKnownHostsFile {clean_lab.known_hosts}\n" for h in ("client", "router", "proxy", "backend")
    ))  # fmt: skip
    inv = tmp_path / "inv.toml"
    code = main(["init", "--ssh-config", str(cfg), "client=client", "router=router", "proxy=proxy",
                 "backend=backend", "--probe", "-o", str(inv)])  # fmt: skip
    assert code == 0, capsys.readouterr()
    got, _ = load_inventory(inv)
    assert got.ssh.known_hosts is None and got.ssh.config_file == str(cfg)
    proxy = got.host("proxy")
    assert proxy.address == "proxy" and {"eth1", "eth2"} <= set(proxy.interfaces)
    assert PROXY_FRONT in {str(a) for a in proxy.addresses} and proxy.ssh.sudo is False  # root
    planned = _plan(inv, FLOW_ADMIN)
    assert planned.returncode == 0, planned.stderr
    assert f"host key verified against {clean_lab.known_hosts}, /etc/ssh/ssh_known_hosts" in planned.stdout
    _capture_admin(capsys, inv, tmp_path / "b")


def test_init_from_an_ansible_inventory_then_plan_then_capture(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An INI inventory with group vars; no ssh config at all: the keys are checked against
    OpenSSH's default ~/.ssh/known_hosts."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(clean_lab.known_hosts.read_text())
    monkeypatch.setenv("HOME", str(home))
    ini = tmp_path / "hosts.ini"
    ini.write_text(
        f"[edge]\nproxy ansible_host={MGMT['proxy']}\n\n[apps]\nclient ansible_host={MGMT['client']}\n\n"
        f"[all:vars]\nansible_user=root\nansible_ssh_private_key_file={clean_lab.root / 'id_ed25519'}\n"
    )
    inv = tmp_path / "inv.toml"
    assert main(["init", "--ansible", str(ini), "edge=proxy", "apps=client", "--probe", "-o", str(inv)]) == 0
    got, _ = load_inventory(inv)
    assert [(h.name, h.role) for h in got.hosts] == [("proxy", "proxy"), ("client", "client")]
    planned = _plan(inv, FLOW_ADMIN)
    assert planned.returncode == 0, planned.stderr
    assert f"host key verified against {home / '.ssh' / 'known_hosts'}, " in planned.stdout
    _capture_admin(capsys, inv, tmp_path / "b")


def test_plan_opens_no_connection(clean_lab: Lab) -> None:
    """Inside a network namespace of its own, with no interface up: any connection would fail."""
    argv = [sys.executable, "-m", "orchestrator.cli", "plan", "-i", str(clean_lab.inventory), "-f", FLOW_8080]
    done = subprocess.run(["unshare", "--net", *argv], capture_output=True, text=True, cwd=REPO, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "nothing was contacted" in done.stdout and done.stdout.count("    privilege: ") == 4


def test_through_two_jump_hosts(clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """jump_host = "client,proxy" (ssh -J client,proxy): the backend takes SSH only from the proxy,
    and the proxy only from the client, so the run can only have come through both, in order."""
    rules = {"proxy": MGMT["client"], "backend": MGMT["proxy"]}
    for ns, allowed in rules.items():
        sh("nft", "-f", "-", ns=ns, input=(
            "table inet capture_all_jump {\n  chain input {\n    type filter hook input priority 0; policy accept;\n"
            f"    tcp dport 22 ip saddr != {allowed} drop\n  }}\n}}\n"
        ))  # fmt: skip
    try:
        inv = inventory(
            clean_lab,
            tmp_path,
            'listen = ["198.18.3.10:80", "198.18.3.10:81"]\n',
            f'listen = ["198.18.3.10:80"]\nssh = {{ jump_host = "root@{MGMT["client"]},root@{MGMT["proxy"]}" }}\n',
        )
        code, stdout, _ = run_cli(capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "b"),
                                  "--hosts", "backend")  # fmt: skip
        assert code == 0, stdout
        # The backend saw our session come from the last jump host.
        backend = host(manifest(tmp_path / "b"), "backend")
        assert f"not (host {MGMT['proxy']} and host {MGMT['backend']}" in backend["bpf_filter"]
        # And the direct route really is closed: without the chain the backend is unreachable.
        direct = inventory(clean_lab, tmp_path, "connect_timeout = 5", "connect_timeout = 2")
        code, _, _ = run_cli(capsys, "-i", str(direct), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "c"),
                             "--hosts", "backend")  # fmt: skip
        assert code == 4 and host(manifest(tmp_path / "c"), "backend")["error_kind"] == "unreachable"
    finally:
        for ns in rules:
            sh("nft", "delete", "table", "inet", "capture_all_jump", ns=ns, check=False)
