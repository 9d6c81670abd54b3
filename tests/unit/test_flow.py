from __future__ import annotations

import ipaddress

import pytest

from orchestrator.errors import FlowError
from orchestrator.flow import Endpoint, Leg, combine, parse_flow, ssh_exclusion


@pytest.mark.parametrize(
    ("text", "client", "server"),
    [
        ("10.20.2.17->10.20.4.18:443", "10.20.2.17", "10.20.4.18:443"),
        ("10.0.3.41:48732->10.0.7.12:5432", "10.0.3.41:48732", "10.0.7.12:5432"),
        ("read tcp 10.0.3.41:48732->10.0.7.12:5432: read", "10.0.3.41:48732", "10.0.7.12:5432"),
        (" 10.0.3.41 -> 10.0.7.12:5432 ", "10.0.3.41", "10.0.7.12:5432"),
        ("2001:db8::5->[2001:db8::1]:443", "2001:db8::5", "[2001:db8::1]:443"),
        ("[2001:db8::5]:40000->[2001:db8::1]:443", "[2001:db8::5]:40000", "[2001:db8::1]:443"),
    ],
)
def test_flow_forms(text: str, client: str, server: str) -> None:
    flow = parse_flow(text)
    assert (str(flow.client), str(flow.server)) == (client, server)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nonsense", "expected CLIENT[:PORT]->SERVER:PORT"),
        ("10.0.0.1->10.0.0.2", "needs a port"),
        ("10.0.0.1->10.0.0.2:0", "1 to 65535"),
        ("10.0.0.1->10.0.0.2:70000", "1 to 65535"),
        ("10.0.0.1->2001:db8::1", "needs a port"),
        ("10.0.0.1->[2001:db8::1]:443", "same IP version"),
        ("10.0.0.1;reboot->10.0.0.2:80", "not an IPv4 or IPv6 address"),
        ("$(id)->10.0.0.2:80", "not an IPv4 or IPv6 address"),
        ("10.0.0.1->10.0.0.2:80 or port 22", "port"),
        ("host1->10.0.0.2:80", "not an IPv4 or IPv6 address"),
    ],
)
def test_bad_flows_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(FlowError) as err:
        parse_flow(text)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_leg_filters_are_built_from_parsed_values_only() -> None:
    leg = Leg(
        "client leg", Endpoint(ipaddress.ip_address("10.0.0.2"), 443), Endpoint(ipaddress.ip_address("10.0.0.1"), 40000)
    )
    up = Leg("up", Endpoint(ipaddress.ip_address("10.0.1.5"), 80))
    assert leg.bpf() == "(tcp and host 10.0.0.2 and port 443 and host 10.0.0.1 and port 40000)"
    excl = ssh_exclusion("10.9.9.9", 51000, "10.0.0.2", 22)
    assert combine([leg, up], excl) == (
        "((tcp and host 10.0.0.2 and port 443 and host 10.0.0.1 and port 40000) or "
        "(tcp and host 10.0.1.5 and port 80)) and not (host 10.9.9.9 and host 10.0.0.2 and port 51000 and port 22)"
    )
    with pytest.raises(ValueError):
        ssh_exclusion("10.9.9.9 or 1=1", 1, "10.0.0.2", 22)
