from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InventoryError
from orchestrator.flow import parse_flow
from orchestrator.inventory import load_inventory
from orchestrator.plan import build_plan

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[ssh]
user = "ops"
sudo = true
[[hosts]]
name = "app-1"
role = "client"
address = "10.20.0.5"
interfaces = ["ens5"]
addresses = ["10.20.2.17"]
[[hosts]]
name = "lb-1"
role = "proxy"
address = "10.20.0.6"
interfaces = ["ens5", "ens6"]
addresses = ["10.20.4.18", "10.30.0.4"]
listen = ["10.20.4.18:443"]
upstream = ["10.30.7.55:8443"]
ssh = { port = 2222, sudo = false, user = "root" }
[[hosts]]
name = "api-1"
role = "backend"
address = "10.30.0.9"
interfaces = ["ens5"]
addresses = ["10.30.7.55"]
listen = ["10.30.7.55:8443"]
[[hosts]]
name = "fw-1"
role = "firewall"
address = "fw-1.example.net"
interfaces = ["eth0"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inv.toml"
    p.write_text(text)
    return p


def test_example_inventory_is_valid() -> None:
    inv, digest = load_inventory(REPO / "inventory.example.toml")
    assert len(digest) == 64
    assert {h.role for h in inv.hosts} >= {"client", "proxy", "backend"}


def test_plan_gives_each_host_its_legs(tmp_path: Path) -> None:
    inv, _ = load_inventory(write(tmp_path, GOOD))
    plan = build_plan(parse_flow("10.20.2.17->10.20.4.18:443"), inv)
    legs = {h.name: [leg.bpf() for leg in h.legs] for h in plan.hosts}
    client_leg = "(tcp and host 10.20.4.18 and port 443 and host 10.20.2.17)"
    # Beyond the client, a NAT may have rewritten the client's address: the server end only.
    server_end = "(tcp and host 10.20.4.18 and port 443)"
    upstream_leg = "(tcp and host 10.30.7.55 and port 8443)"
    assert legs["app-1"] == [client_leg]
    assert legs["lb-1"] == [server_end, upstream_leg]
    assert legs["api-1"] == [upstream_leg]
    assert legs["fw-1"] == [server_end, upstream_leg]  # in-path roles see every leg
    lb = next(h for h in plan.hosts if h.name == "lb-1")
    assert (lb.target.port, lb.target.user, lb.sudo) == (2222, "root", False)
    app = next(h for h in plan.hosts if h.name == "app-1")
    assert (app.target.port, app.target.user, app.sudo) == (22, "ops", True)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            ('interfaces = ["ens5", "ens6"]', 'interfaces = ["ens5", "ens6; reboot"]'),
            "hosts[1] (lb-1): interfaces: [1]: interface name 'ens6; reboot' is not a valid",
        ),
        (('role = "backend"', 'role = "db"'), "hosts[2] (api-1): role: Input should be"),
        (('name = "api-1"', 'name = "../etc"'), "hosts[2] (../etc): name: must be"),
        (('address = "10.30.0.9"', 'address = "10.30.0.9 -oProxyCommand=sh"'), "hosts[2] (api-1): address:"),
        (
            ('listen = ["10.30.7.55:8443"]', 'listen = ["10.30.7.55"]'),
            "hosts[2] (api-1): listen: '10.30.7.55' needs a port",
        ),
        (
            ('addresses = ["10.30.7.55"]', 'addresses = ["api"]'),
            "hosts[2] (api-1): addresses: [0]: 'api' is not an IP address",
        ),
        (('user = "ops"', 'usr = "ops"'), "ssh.usr: unknown key"),
        (("ssh = { port = 2222,", "ssh = { port = 99999,"), "hosts[1] (lb-1): ssh.port:"),
        (('name = "fw-1"', 'name = "lb-1"'), "host name 'lb-1' is used twice"),
        (("[ssh]", "[ssh\n"), "not valid TOML"),
    ],
)
def test_errors_name_file_host_and_field(tmp_path: Path, edit: tuple[str, str], needle: str) -> None:
    assert edit[0] in GOOD
    path = write(tmp_path, GOOD.replace(edit[0], edit[1], 1))
    with pytest.raises(InventoryError) as err:
        load_inventory(path)
    msg = str(err.value)
    assert msg.startswith(str(path) + ": ")
    assert needle in msg, msg
    assert "\n" not in msg


def test_hostile_tmpdir_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[capture]\ntmpdir = "/tmp/$(reboot)"\n' + GOOD)
    with pytest.raises(InventoryError, match="capture.tmpdir"):
        load_inventory(path)


def test_missing_file_and_empty_hosts(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="cannot read inventory"):
        load_inventory(tmp_path / "nope.toml")
    with pytest.raises(InventoryError, match="hosts"):
        load_inventory(write(tmp_path, "[ssh]\nuser='x'\n"))


def test_legs_continue_through_a_nat_and_a_chain_of_proxies(tmp_path: Path) -> None:
    """A DNAT box is described like a proxy: it `listen`s on the public VIP and its `upstream`
    is the private address it translates to; the chain continues from there."""
    text = """
[[hosts]]
name = "nat-1"
role = "nat"
address = "10.0.0.1"
interfaces = ["eth0", "eth1"]
listen = ["203.0.113.10:443"]
upstream = ["10.1.0.2:443"]
[[hosts]]
name = "edge"
role = "proxy"
address = "10.0.0.2"
interfaces = ["eth0"]
listen = ["10.1.0.2:443"]
upstream = ["10.2.0.3:8080"]
[[hosts]]
name = "mesh"
role = "proxy"
address = "10.0.0.3"
interfaces = ["eth0"]
listen = ["10.2.0.3:8080"]
upstream = ["10.3.0.4:9000", "10.3.0.5:9000"]
"""
    inv, _ = load_inventory(write(tmp_path, text))
    plan = build_plan(parse_flow("198.51.100.7->203.0.113.10:443"), inv)
    assert [str(leg.server) for leg in plan.legs] == [
        "203.0.113.10:443",
        "10.1.0.2:443",
        "10.2.0.3:8080",
        "10.3.0.4:9000",
        "10.3.0.5:9000",
    ]
    legs = {h.name: [str(leg.server) for leg in h.legs] for h in plan.hosts}
    assert legs["nat-1"] == [str(leg.server) for leg in plan.legs]
    assert legs["edge"] == ["10.1.0.2:443", "10.2.0.3:8080"]
    assert legs["mesh"] == ["10.2.0.3:8080", "10.3.0.4:9000", "10.3.0.5:9000"]
