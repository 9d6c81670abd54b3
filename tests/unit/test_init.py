"""capture-all init: an inventory from the user's ssh config or Ansible inventory, that the
inventory loader accepts; known_hosts files as the user's ssh config names them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.init import load_ansible, parse_ip_addr
from orchestrator.inventory import load_inventory
from orchestrator.plan import _jumps
from remote.sshconfig import known_hosts_for
from remote.transport import JumpHost, SshTarget

ROOT = Path(__file__).resolve().parents[2]

SSH_CONFIG = """
Host bastion
  HostName 198.18.9.1
  User jumper
  Port 2200
Host lb-1
  HostName 198.18.9.18
  User ops
  IdentityFile ~/.ssh/id_lb
  ProxyJump bastion,root@198.18.9.2
Match host 198.18.9.18
  UserKnownHostsFile /etc/capture/known_lb
  GlobalKnownHostsFile /etc/capture/global
Host 198.18.9.30
  UserKnownHostsFile none
"""

INI = """
[lb]
lb-1 ansible_host=198.18.9.18 ansible_user=ops
lb-2 ansible_host=198.18.9.19 ansible_port=2201

[app]
app[1:3] ansible_host=198.18.9.3

[web:children]
lb

[all:vars]
ansible_become=true
ansible_ssh_common_args='-o ProxyJump=ops@198.18.9.1'

[lb:vars]
ansible_port=2222
"""

YAML = """
all:
  vars:
    ansible_user: deploy
  children:
    lb:
      hosts:
        lb-1: {ansible_host: 198.18.9.18, ansible_ssh_common_args: "-J root@198.18.9.1,198.18.9.2:2022"}
      vars: {ansible_port: 2222}
    app:
      hosts:
        app-1: {ansible_host: 198.18.9.3, ansible_user: root}
"""


def init(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}  # no ~/.ssh/config of the machine's
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "init", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=False, env=env)  # fmt: skip


def test_from_an_ssh_config_with_a_jump_chain(tmp_path: Path) -> None:
    (tmp_path / "ssh_config").write_text(SSH_CONFIG)
    done = init(tmp_path, "--ssh-config", "ssh_config", "lb-1=proxy", "app-9=client", "-o", "inv.toml")
    assert done.returncode == 0, done.stderr
    inv, _ = load_inventory(tmp_path / "inv.toml")
    lb, app = inv.hosts
    # The Host name is the address, as for `ssh lb-1`: the config applies at connect time.
    assert (lb.name, lb.role, lb.address, lb.ssh.user, lb.ssh.identity_file) == (
        "lb-1", "proxy", "lb-1", "ops", "~/.ssh/id_lb")  # fmt: skip
    # ProxyJump's hops first to last (ssh -J's order), each with its own User and Port from the config.
    assert lb.ssh.jump_host == "jumper@bastion:2200,root@198.18.9.2"
    assert _jumps(lb.ssh.jump_host) == (JumpHost("bastion", 2200, "jumper"), JumpHost("198.18.9.2", 22, "root"))
    assert inv.ssh.config_file == str(tmp_path / "ssh_config")
    assert app.address == "app-9" and app.interfaces == ["any"]
    text = (tmp_path / "inv.toml").read_text()
    assert "FILL IN: no HostName for it in your ssh config" in text
    assert "# listen = " in text and "# upstream = " in text  # a proxy's, to fill in
    assert init(tmp_path, "--ssh-config", "ssh_config", "lb-1", "-o", "inv.toml").returncode == 2  # exists


def test_from_an_ansible_ini_inventory_groups_ranges_and_vars(tmp_path: Path) -> None:
    (tmp_path / "hosts.ini").write_text(INI)
    a = load_ansible(str(tmp_path / "hosts.ini"))
    assert a.groups["web"] == ["lb-1", "lb-2"] and a.groups["app"] == ["app1", "app2", "app3"]
    assert a.hostvars["lb-2"]["ansible_port"] == "2201"  # the host's own var wins over its group's
    assert a.hostvars["lb-1"]["ansible_port"] == "2222"
    done = init(tmp_path, "--ansible", "hosts.ini", "web=proxy", "app1=client", "-o", "inv.toml")
    assert done.returncode == 0, done.stderr
    inv, _ = load_inventory(tmp_path / "inv.toml")
    assert [(h.name, h.role, h.address, h.ssh.port) for h in inv.hosts] == [
        ("lb-1", "proxy", "198.18.9.18", 2222), ("lb-2", "proxy", "198.18.9.19", 2201),
        ("app1", "client", "198.18.9.3", None)]  # fmt: skip
    assert all(h.ssh.sudo and h.ssh.jump_host == "ops@198.18.9.1" for h in inv.hosts)
    bad = init(tmp_path, "--ansible", "hosts.ini", "db")
    assert bad.returncode == 2 and bad.stderr.strip() == "capture-all: db: neither a host nor a group of hosts.ini"


def test_from_ansible_yaml_and_list_json(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text(YAML)
    y = load_ansible(str(tmp_path / "hosts.yml"))
    assert y.hostvars["lb-1"]["ansible_user"] == "deploy" and y.hostvars["app-1"]["ansible_user"] == "root"
    listed = {"_meta": {"hostvars": {"lb-1": {"ansible_host": "198.18.9.18", "ansible_port": 2222}}},
              "all": {"children": ["ungrouped", "lb"]}, "lb": {"hosts": ["lb-1"]}}  # fmt: skip
    (tmp_path / "hosts.json").write_text(json.dumps(listed))
    assert load_ansible(str(tmp_path / "hosts.json")).groups["all"] == ["lb-1"]
    done = init(tmp_path, "--ansible", "hosts.yml", "-o", "inv.toml")
    assert done.returncode == 0, done.stderr
    inv, _ = load_inventory(tmp_path / "inv.toml")
    lb, app = inv.hosts
    assert lb.ssh.jump_host == "root@198.18.9.1,198.18.9.2:2022" and lb.ssh.port == 2222 and lb.ssh.sudo
    assert app.ssh.user == "root" and app.ssh.sudo is False


def test_example_is_the_shipped_one(tmp_path: Path) -> None:
    done = init(tmp_path, "--example", "-o", "ex.toml")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ex.toml").read_text() == (ROOT / "inventory.example.toml").read_text()


def test_ip_addr_keeps_up_interfaces_with_global_addresses() -> None:
    text = json.dumps([
        {"ifname": "lo", "flags": ["LOOPBACK", "UP"], "addr_info": [{"local": "127.0.0.1", "scope": "host"}]},
        {"ifname": "eth1", "flags": ["BROADCAST", "UP"], "addr_info": [
            {"family": "inet", "local": "198.18.1.10", "scope": "global"},
            {"family": "inet6", "local": "fe80::1", "scope": "link"}]},
        {"ifname": "eth9", "flags": ["BROADCAST"], "addr_info": [{"local": "198.18.5.1", "scope": "global"}]},
    ])  # fmt: skip
    assert parse_ip_addr(text) == (["eth1"], ["198.18.1.10"])
    assert parse_ip_addr("not json") == ([], [])


def _target(tmp_path: Path, host: str, **kw: object) -> SshTarget:
    return SshTarget(name="x", host=host, config_files=(str(tmp_path / "ssh_config"),), **kw)  # type: ignore[arg-type]


def test_known_hosts_files_come_from_the_users_ssh_config(tmp_path: Path) -> None:
    (tmp_path / "ssh_config").write_text(SSH_CONFIG)
    kh = known_hosts_for(_target(tmp_path, "198.18.9.18"))
    assert kh.files == (Path("/etc/capture/known_lb"), Path("/etc/capture/global"))
    assert kh.record_to == Path("/etc/capture/known_lb") and kh.host == "198.18.9.18"
    # By its Host alias: the same files (Match host is the HostName), the key filed under the HostName.
    alias = known_hosts_for(_target(tmp_path, "lb-1"))
    assert alias.files == kh.files and alias.host == "198.18.9.18"
    # No file named: OpenSSH's defaults, user files first (a new key is recorded in the first).
    other = known_hosts_for(_target(tmp_path, "198.18.9.77"))
    assert other.files[0] == Path("~/.ssh/known_hosts").expanduser()
    assert Path("/etc/ssh/ssh_known_hosts") in other.files
    # `UserKnownHostsFile none`: keys still verified (the global files), nowhere to record one.
    none = known_hosts_for(_target(tmp_path, "198.18.9.30"))
    assert none.record_to is None
    assert none.files == (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))
    # The inventory's known_hosts wins over the config.
    own = known_hosts_for(_target(tmp_path, "198.18.9.18", known_hosts=str(tmp_path / "kh")))
    assert own.files == (tmp_path / "kh",) and own.record_to == tmp_path / "kh"


@pytest.mark.parametrize(
    ("value", "ok"),
    [("a", True), ("ops@a:2222,b", True), ("a,b,c", True), ("a,,b", False), ("a;b", False), ("a:99999", False)],
)
def test_jump_host_takes_a_chain(value: str, ok: bool) -> None:
    from pydantic import ValidationError

    from orchestrator.inventory import SshSettings

    if ok:
        assert SshSettings(jump_host=value).jump_host == value
    else:
        with pytest.raises(ValidationError):
            SshSettings(jump_host=value)


def test_an_alias_without_a_port_in_the_inventory_connects_where_ssh_would(tmp_path: Path) -> None:
    from orchestrator.flow import parse_flow
    from orchestrator.plan import build_plan

    (tmp_path / "ssh_config").write_text(SSH_CONFIG)
    (tmp_path / "inv.toml").write_text(
        f'[ssh]\nconfig_file = "{tmp_path / "ssh_config"}"\n\n'
        '[[hosts]]\nname = "b"\nrole = "proxy"\naddress = "bastion"\ninterfaces = ["eth0"]\n\n'
        '[[hosts]]\nname = "c"\nrole = "client"\naddress = "bastion"\ninterfaces = ["eth0"]\nssh = { port = 22 }\n'
    )
    inv, _ = load_inventory(tmp_path / "inv.toml")
    plan = build_plan(parse_flow("198.18.9.3->198.18.9.1:443"), inv)
    assert [h.target.port for h in plan.hosts] == [2200, 22]  # the config's Port; the inventory's wins
