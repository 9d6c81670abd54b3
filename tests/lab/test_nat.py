"""Every scenario through a masquerading NAT gateway, with the NAT in the inventory and without it.

The client reaches the proxy and the backend through the lab's `nat` host (nftables masquerade,
a new source port for every connection), then the router. Each scenario is captured three times:
straight to the router (no NAT), through the NAT declared in the inventory, and through the NAT
left out of it. The metamorphic rule: the first reset's origin and cause are the same all three
ways. No verdict may name a host that did not send the reset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.labnet import (
    BACKEND_IP,
    CLIENT_IP,
    CLIENT_NAT_SIDE,
    NAT_OUTSIDE,
    NAT_PORTS,
    PROXY_FRONT,
    Lab,
)
from tests.lab.test_scenarios import CLIENTS, capture_restarting_backend, fact, first

Outcome = tuple[str, str | None, str]  # origin kind, origin host, cause


@dataclass
class Scenario:
    name: str
    server: str  # SERVER:PORT of the flow
    reproduce: str  # {server} is filled in
    expected: Outcome
    duration: str = "2"
    setup: Callable[[Lab], None] | None = None
    restart_backend: bool = False  # kill and restart the backend while the client idles


SCENARIOS = [
    Scenario("idle_reuse", f"{BACKEND_IP}:81", f"{CLIENTS} reuse {BACKEND_IP} 81 1.6",
             ("host", "backend", "idle_reuse"), duration="3"),
    Scenario("proxy_policy", f"{PROXY_FRONT}:8083", f"{CLIENTS} hold {PROXY_FRONT} 8083 /admin 1",
             ("host", "proxy", "proxy_policy")),
    Scenario("refused", f"{PROXY_FRONT}:9999", f"curl -sS -m 3 http://{PROXY_FRONT}:9999/",
             ("host", "proxy", "refused")),
    Scenario("peer_restart", f"{BACKEND_IP}:80", f"{CLIENTS} reuse {BACKEND_IP} 80 1.5",
             ("host", "backend", "peer_restart"), duration="4", restart_backend=True),
    Scenario("unread_data", f"{BACKEND_IP}:80", f"{CLIENTS} upload {BACKEND_IP} 80 /early 2000000",
             ("host", "backend", "unread_data_close")),
    Scenario("propagated", f"{PROXY_FRONT}:8082", f"{CLIENTS} hold {PROXY_FRONT} 8082 /partial 1",
             ("host", "backend", "app_abort")),
    Scenario("router_forges", f"{PROXY_FRONT}:8081", f"curl -sS -m 3 http://{PROXY_FRONT}:8081/",
             ("middlebox", "router", "middlebox"), setup=lambda lab: lab.router_forges_resets(8081)),
]  # fmt: skip


def capture(lab: Lab, inventory: Path, client_ip: str, sc: Scenario, out: Path) -> dict[str, Any]:
    return capture_restarting_backend(lab, inventory, f"{client_ip}->{sc.server}", sc.reproduce, sc.duration, out,
                                      restart=sc.restart_backend)  # fmt: skip


def outcome(report: dict[str, Any]) -> Outcome:
    r = first(report)
    return r["origin"]["kind"], r["origin"]["host"], r["cause"]


def through(lab: Lab, sc: Scenario, tmp: Path, how: str) -> dict[str, Any]:
    """One capture of the scenario: ``none`` (straight to the router), ``declared`` or ``undeclared``."""
    if sc.setup:
        sc.setup(lab)
    if how == "none":
        lab.direct()
        return capture(lab, lab.inventory, CLIENT_IP, sc, tmp / how)
    lab.via_nat()
    try:
        return capture(lab, lab.nat_inventory(declared=how == "declared"), CLIENT_NAT_SIDE, sc, tmp / how)
    finally:
        lab.direct()


def _translated(report: dict[str, Any]) -> bool:
    """The capture holds the connection under the NAT's name: its masquerade really rewrote the port."""
    lo, hi = NAT_PORTS
    return any(
        x["kind"] == "packet" and NAT_OUTSIDE in (x["src"], x["dst"]) and lo <= (x["sport"] if x["src"] == NAT_OUTSIDE
                                                                                else x["dport"]) <= hi
        for x in report["timeline"]
    )  # fmt: skip


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_same_origin_and_cause_with_and_without_the_nat(clean_lab: Lab, tmp_path: Path, sc: Scenario) -> None:
    reports = {how: through(clean_lab, sc, tmp_path, how) for how in ("none", "declared", "undeclared")}
    got = {how: outcome(rep) for how, rep in reports.items()}
    assert got == {"none": sc.expected, "declared": sc.expected, "undeclared": sc.expected}, got
    for way in ("declared", "undeclared"):
        rep = reports[way]
        assert _translated(rep), f"{way}: no packet under the NAT's name on the timeline"
        # Every host's filter matched the translated connection: nobody captured nothing.
        assert not [c for c in rep["caveats"] if "captured no packet" in c], rep["caveats"]
        r = first(rep)
        if len(r["names"]) > 1:
            learned = fact(r, "translated")["how"]
            # Learned from the packets; declared, the NAT's own conntrack table says the same (a
            # refused connection's entry was no longer in the table when finish read it).
            assert any("the same" in h for h in learned), learned
            conntrack = any("nat's conntrack table" in h for h in learned)
            assert conntrack == (way == "declared") or (sc.name == "refused" and not conntrack), learned
    if sc.name == "refused":
        # The proxy's kernel logged the refusal under the name it knows: to the NAT's address.
        for way in ("declared", "undeclared"):
            sent = first(reports[way])["kernel"]["sent"]
            assert (sent["host"], sent["reason"], sent["dst"]) == ("proxy", "NO_SOCKET", NAT_OUTSIDE), sent


def test_the_nat_forging_a_reset_itself(clean_lab: Lab, tmp_path: Path) -> None:
    """Declared, the NAT captured itself forging it (having seen the proxy's side arrive); left out
    of the inventory, the proxy's capture of the translated connection shows it never sent it:
    injected between the client and the proxy. Neither names the proxy or the router."""
    sc = Scenario("nat_forges", f"{PROXY_FRONT}:8081", f"curl -sS -m 3 http://{PROXY_FRONT}:8081/",
                  ("middlebox", "nat", "middlebox"), setup=lambda lab: lab.nat_forges_resets(8081))  # fmt: skip
    declared = through(clean_lab, sc, tmp_path, "declared")
    r = first(declared)
    assert r["origin"] == {"kind": "middlebox", "host": "nat", "between": ["client", "proxy"]}, r["evidence"]
    assert fact(r, "forged_at")["genuine_packets"] > 0
    ttl = fact(r, "ttl_differs")
    assert (ttl["rst_ttl"], ttl["genuine_ttls"]) == (64, [62])  # proxy -> router -> nat -> client
    undeclared = through(clean_lab, sc, tmp_path, "undeclared")
    r = first(undeclared)
    assert r["origin"] == {"kind": "middlebox", "host": None, "between": ["client", "proxy"]}, r["evidence"]
    assert fact(r, "injected")["host"] == "proxy"
    assert any(NAT_OUTSIDE in n["dst"] for n in r["names"]), r["names"]
    assert "injected by a box between client and proxy" in undeclared["verdict"]
