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


ESTABLISHED = "net.netfilter.nf_conntrack_tcp_timeout_established"
LOOSE = "net.netfilter.nf_conntrack_tcp_loose"


def test_the_nat_forgetting_an_idle_connection_resets_its_reuse(clean_lab: Lab, tmp_path: Path) -> None:
    """Issue 30.5: a NAT with strict tracking (nf_conntrack_tcp_loose=0, a 3 s established timeout,
    invalid packets rejected with a reset: what AWS and Azure NAT gateways, Juniper's tcp-rst and
    Palo Alto's reset actions do after their idle timeouts). The client's pool keeps idle
    connections 10 s (inventory); it reuses one after 4.5 s of silence: the NAT no longer knows it
    and resets the reuse in the proxy's name. The cause is the NAT's idle expiry, with both values
    and their sources (the NAT's own sysctl, read during the capture); the proxy and the backend,
    which still held the connection, are named by nothing."""
    from tests.lab.labnet import sh
    from tests.lab.test_audit import with_client_idle
    from tests.lab.test_scenarios import capture_restarting_backend as capture_run

    lab = clean_lab
    saved = {k: sh("sysctl", "-n", k, ns="nat").strip() for k in (ESTABLISHED, LOOSE)}
    sh("sysctl", "-qw", f"{ESTABLISHED}=3", f"{LOOSE}=0", ns="nat")
    sh("nft", "-f", "-", ns="nat", input=(
        "table inet capture_all_lab {\n  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        "    ct state invalid meta l4proto tcp reject with tcp reset\n"
        "  }\n}\n"
    ))  # fmt: skip
    lab.via_nat()
    try:
        assert sh("sysctl", "-n", ESTABLISHED, ns="nat").strip() == "3"
        reports = {}
        for declared in (True, False):
            inv = with_client_idle(lab, tmp_path, "10s", lab.nat_inventory(declared=declared))
            reports[declared] = capture_run(lab, inv, f"{CLIENT_NAT_SIDE}->{PROXY_FRONT}:8082",
                                            f"{CLIENTS} reuse {PROXY_FRONT} 8082 4.5", "7", tmp_path / str(declared),
                                            restart=False)  # fmt: skip
    finally:
        lab.direct()
        lab.nat_clear()
        sh("sysctl", "-qw", *(f"{k}={v}" for k, v in saved.items()), ns="nat")
    report = reports[True]
    r = first(report)
    assert r["origin"]["kind"] == "middlebox" and r["origin"]["host"] == "nat", r["evidence"]
    assert r["cause"] == "idle_expiry", r["evidence"]
    said = next(e for e in r["evidence"] if e["kind"] == "cause")
    assert said["closer"] == {"host": "nat", "what": "conntrack established timeout", "ms": 3000.0,
                              "source": f"sysctl {ESTABLISHED}"}, said  # the NAT's own value, as set
    assert said["reuser"]["ms"] == 10000.0 and 4.3e9 <= said["idle_ns"] < 5e9, said
    chain = report["idle_chain"]
    assert [x["reset_id"] for x in chain["explains"]] == [r["id"]], chain
    assert "nat forgot this connection after 3 s idle" in report["verdict"], report["verdict"]
    # Left out of the inventory, the NAT is a box between client and proxy nobody read: injected,
    # its timeout unknown, so no expiry is claimed for it (nor for any host that was read).
    r = first(reports[False])
    assert (r["origin"]["kind"], r["origin"]["host"], r["cause"]) == ("middlebox", None, "middlebox"), r["evidence"]
