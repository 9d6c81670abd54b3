"""Attribution through address translation, on synthetic captures of one path:

    client 198.18.4.10:40000 -> nat (inside 198.18.4.1 | outside 198.18.5.2:20001) -> proxy 198.18.2.10:443

The NAT masquerades with a new source port, as a cloud NAT or a Kubernetes node does. Every rule
must hold through it: the same reset under two names is one reset, "not seen" counts only where
the vantage could have seen it, and contrary evidence stops a middlebox conviction.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

from analysis.decode import ACK, PSH, RST, SYN
from analysis.evidence import Fact
from analysis.extract import extract_all
from analysis.model import ClockProbe, HostFacts, VantageInput
from analysis.verdict import Analysis, analyze
from analysis.witness import KernelEvent, Witness
from tests.pcapgen import ethernet, pcap, tcp_packet
from tests.unit.test_verdict import fact

C, NI, NO, P = "198.18.4.10", "198.18.4.1", "198.18.5.2", "198.18.2.10"
CP, NP = 40000, 20001
MAC_C, MAC_NI, MAC_NO, MAC_P = (bytes([2, 0, 0, 0, 0, i]) for i in (0x0C, 0x1A, 0x1B, 0x0B))
T = 1_795_000_000 * 10**9


@dataclass
class Pkt:
    t: int
    to_server: bool
    flags: int
    seq: int
    ack: int = 0
    payload: bytes = b""
    ip_id: int = 7
    ttl: int | None = None  # as it arrives at the client, when not the path's (a forged reset)


def conversation(extra: Iterable[Pkt] = ()) -> list[Pkt]:
    return [
        Pkt(T, True, SYN, 100, ip_id=11),
        Pkt(T + 10_000, False, SYN | ACK, 500, 101, ip_id=0),
        Pkt(T + 20_000, True, ACK, 101, 501, ip_id=12),
        Pkt(T + 30_000, True, PSH | ACK, 101, 501, b"GET /", ip_id=13),
        Pkt(T + 40_000, False, PSH | ACK, 501, 106, b"HTTP/1.1 200 OK\r\n", ip_id=1),
        *extra,
    ]


def _ip(p: Pkt, outside: bool, ttl: int) -> bytes:
    me, port = (NO, NP) if outside else (C, CP)
    if p.to_server:
        return tcp_packet(me, P, port, 443, p.flags, seq=p.seq, ack=p.ack, payload=p.payload, ttl=ttl, ip_id=p.ip_id)
    return tcp_packet(P, me, 443, port, p.flags, seq=p.seq, ack=p.ack, payload=p.payload, ttl=ttl, ip_id=p.ip_id)


def _frame(p: Pkt, outside: bool, ttl_up: int, ttl_down: int) -> bytes:
    """The packet on the inside link (client - NAT) or the outside one (NAT - proxy)."""
    up, down = ((MAC_NO, MAC_P), (MAC_P, MAC_NO)) if outside else ((MAC_C, MAC_NI), (MAC_NI, MAC_C))
    return ethernet(_ip(p, outside, ttl_up if p.to_server else ttl_down), *(up if p.to_server else down))


def client(pkts: list[Pkt]) -> VantageInput:
    # The client's own packets leave with TTL 64; the proxy's arrive with 63 (one hop: the NAT).
    frames = [(p.t + (0 if p.to_server else 200), _frame(p, False, 64, p.ttl or 63)) for p in pkts]
    return VantageInput("client", "client", captures=[("eth1", io.BytesIO(pcap(frames)))],
                        facts=HostFacts(own_ips={C}, own_macs={MAC_C}))  # fmt: skip


def nat(pkts: list[Pkt], forged: list[Pkt] = (), *, inside_only: bool = False, role: str = "nat") -> VantageInput:  # type: ignore[assignment]
    """The NAT box captures both interfaces (or only the inside one). ``forged``: resets it builds
    itself toward the client in the proxy's name (TTL 64, never arriving from the proxy)."""
    inside = [(p.t + (50 if p.to_server else 150), _frame(p, False, 64, 63)) for p in pkts]
    inside += [(p.t, _frame(p, False, 64, 64)) for p in forged]
    outside = [(p.t + 100, _frame(p, True, 63, 64)) for p in pkts]
    caps = [("eth1", io.BytesIO(pcap(sorted(inside, key=lambda f: f[0]))))]
    if not inside_only:
        caps.append(("eth2", io.BytesIO(pcap(outside))))
    return VantageInput("nat", role, captures=caps, facts=HostFacts(own_ips={NI, NO}, own_macs={MAC_NI, MAC_NO}))


def proxy(pkts: list[Pkt], **kw: object) -> VantageInput:
    frames = [(p.t + (150 if p.to_server else 0), _frame(p, True, 63, 64)) for p in pkts]
    return VantageInput("proxy", "proxy", captures=[("eth1", io.BytesIO(pcap(frames)))],
                        facts=HostFacts(own_ips={P}, own_macs={MAC_P}), **kw)  # type: ignore[arg-type]  # fmt: skip


def run(*inputs: VantageInput) -> Analysis:
    a = analyze(extract_all(list(inputs)))
    assert a.first is not None
    return a


PROXY_RST = Pkt(T + 50_000, False, RST | ACK, 518, 106, ip_id=0)
FORGED = Pkt(T + 50_000, False, RST, 518, ip_id=0, ttl=64)  # built one hop from the client


def test_the_proxys_own_reset_is_one_reset_under_two_names() -> None:
    pkts = conversation([PROXY_RST])
    a = run(client(pkts), nat(pkts), proxy(pkts))
    r = a.first
    assert r is not None and len(a.resets) == 1
    assert (r.origin_kind, r.origin_host) == ("host", "proxy")
    assert {(o.vantage, o.iface, o.direction) for o in r.seen} == {
        ("proxy", "eth1", "out"),
        ("nat", "eth2", "in"),
        ("nat", "eth1", "out"),
        ("client", "eth1", "in"),
    }
    assert set(r.names) == {(P, 443, NO, NP), (P, 443, C, CP)}
    assert any(f"{NO}:{NP}" in c and f"{C}:{CP}" in c for c in a.caveats)


def test_the_nat_forging_a_reset_is_named_through_its_own_translation() -> None:
    pkts = conversation()
    a = run(client([*pkts, FORGED]), nat(pkts, [FORGED]), proxy(pkts))
    r = a.first
    assert r is not None and (r.origin_kind, r.origin_host) == ("middlebox", "nat")
    assert fact(r, Fact.FORGED_AT).data["claimed"] == "proxy"
    ttl = fact(r, Fact.TTL_DIFFERS).data
    assert (ttl["rst_ttl"], ttl["genuine_ttls"]) == (64, [63])
    assert "forged by nat in proxy's name" in a.verdict


def test_a_nat_that_never_saw_the_proxys_side_is_not_convicted_by_its_silence() -> None:
    """Its capture holds only the inside interface: that the RST never arrived there proves
    nothing. The proxy, whose capture holds the connection under its translated name (learned
    from the SYN), never sent it: injected between the NAT's inside capture point (where it was
    first seen) and the proxy, which is true: the NAT is the box that did."""
    pkts = conversation()
    a = run(client([*pkts, FORGED]), nat(pkts, [FORGED], inside_only=True), proxy(pkts))
    r = a.first
    assert r is not None and fact(r, Fact.FORGERY_UNPROVEN).data["host"] == "nat"
    assert (r.origin_kind, r.origin_host, r.between) == ("middlebox", None, ["nat", "proxy"])
    assert fact(r, Fact.INJECTED).data == {"host": "proxy", "packets": len(pkts)}


def test_an_undeclared_nat_does_not_hide_the_proxys_capture() -> None:
    """The NAT is not in the run: the proxy's capture of the connection (another name) is found
    through the SYN, so its silence counts and the TTL confirms it."""
    pkts = conversation()
    a = run(client([*pkts, FORGED]), proxy(pkts))
    r = a.first
    assert r is not None and (r.origin_kind, r.between) == ("middlebox", ["client", "proxy"])
    assert (P, 443, NO, NP) in r.names
    assert fact(r, Fact.TTL_DIFFERS).data["rst_ttl"] == 64
    assert any(NO in c and "Not in the inventory" in c for c in a.caveats)


def test_a_ttl_equal_to_the_proxys_blocks_the_conviction() -> None:
    """The proxy's capture stopped before the reset (so it "never sent it"), but the RST arrives
    with exactly the proxy's TTL: unknown, with both sides stated."""
    pkts = conversation()
    real = Pkt(T + 50_000, False, RST, 518, ip_id=0)
    a = run(client([*pkts, real]), proxy(pkts))
    r = a.first
    assert r is not None and (r.origin_kind, r.origin_host, r.between) == ("unknown", None, None)
    assert [e.kind for e in r.blocked] == [Fact.TTL_MATCHES]
    assert fact(r, Fact.CONTRARY).data["claimed"] == "proxy"
    assert "cannot be attributed" in a.verdict and "injected by" not in a.verdict


def test_the_proxys_reset_counters_rising_block_the_conviction() -> None:
    pkts = conversation()
    wrong_ttl = [*pkts[:-1], Pkt(pkts[-1].t, False, PSH | ACK, 501, 106, b"HTTP/1.1 200 OK\r\n", ip_id=1)]
    forged_ttl64 = FORGED
    counters = HostFacts(own_ips={P}, own_macs={MAC_P}, counters_before={"TcpOutRsts": 10},
                         counters_after={"TcpOutRsts": 11})  # fmt: skip
    at_proxy = proxy(wrong_ttl)
    at_proxy.facts = counters
    a = run(nat(pkts, [forged_ttl64], inside_only=True), client([*pkts, forged_ttl64]), at_proxy)
    r = a.first
    assert r is not None and r.origin_kind == "unknown"
    rose = fact(r, Fact.COUNTERS_ROSE).data
    assert (rose["counters"], rose["accounted"]) == ({"TcpOutRsts": 1}, 0)
    assert [e.kind for e in r.blocked] == [Fact.COUNTERS_ROSE]


def test_a_nat_translating_the_clients_reset_into_its_own_name_only_forwarded_it() -> None:
    """The client is not captured; the RST leaves the NAT with the NAT's own address (masquerade),
    but it arrived from the inside first: the NAT did not build it, and is not its claimed sender."""
    pkts = conversation([Pkt(T + 50_000, True, RST, 106, ip_id=0)])
    a = run(nat(pkts), proxy(pkts))
    r = a.first
    assert r is not None and fact(r, Fact.FORWARDED).data["host"] == "nat"
    assert (r.origin_kind, r.origin_host) == ("unknown", None)
    assert fact(r, Fact.CLAIMED_UNOWNED).data["src"] == C


def _witness(*events: KernelEvent) -> Witness:
    return Witness("ran", events=list(events), start_ns=T - 10**9, end_ns=T + 10**9, has_reason=True)


def test_the_proxys_witness_is_read_under_the_name_the_proxy_knows() -> None:
    """The proxy's capture missed the connection; the NAT's capture teaches its name there. The
    proxy's kernel logged the reset under that name: the proxy sent it (not "never sent it")."""
    pkts = conversation([PROXY_RST])
    sent = KernelEvent("send", T + 50_000, P, 443, NO, NP, "TCP_CLOSE", "NO_SOCKET", 0, "swapper/0", True)
    missed = proxy([], witness=_witness(sent))
    # The proxy shares no packet with the others: its clock is aligned by the SSH probes.
    probes = [ClockProbe("start", T, 0, 100_000)]
    at_client, at_nat = client(pkts), nat(pkts)
    for v in (at_client, at_nat, missed):
        v.probes = probes
    a = run(at_client, at_nat, missed)
    r = a.first
    assert r is not None and r.kernel_sent is not None and r.kernel_sent[0] == "proxy"
    assert (r.origin_kind, r.origin_host) == ("host", "proxy")
    assert r.cause == "no_socket"


def test_the_proxys_silent_witness_counts_once_the_name_is_learned() -> None:
    pkts = conversation()
    missed = proxy([], witness=_witness())
    a = run(client([*pkts, FORGED]), nat(pkts, [FORGED], inside_only=False, role="router"), missed)
    r = a.first
    assert r is not None
    # The router-role box captured itself forging it, having seen the proxy's side: forged there.
    assert (r.origin_kind, r.origin_host) == ("middlebox", "nat")
    assert fact(r, Fact.WITNESS_SILENT).data["names"] == [[P, 443, NO, NP]]
    # Without the NAT's outside capture nothing teaches the proxy's name: its silence proves nothing.
    b = run(client([*pkts, FORGED]), nat(pkts, [FORGED], inside_only=True), proxy([], witness=_witness()))
    assert b.first is not None and b.first.origin_kind == "unknown"
    assert fact(b.first, Fact.WITNESS_UNKNOWN_TUPLE).data["host"] == "proxy"


def test_a_new_handshake_on_a_reused_tuple_is_another_connection() -> None:
    """The proxy still holds an old connection on 40000 -> 443; the client's new SYN draws a
    challenge ACK, the client's stack resets the old one, then the new connection is forged-reset.
    The two resets are not one teardown."""
    pkts = [
        Pkt(T, True, SYN, 7000, ip_id=21),
        Pkt(T + 10_000, False, ACK, 888, 5555, ip_id=2),  # challenge ACK: acks the old connection
        Pkt(T + 20_000, True, RST, 5555, ip_id=0),
        Pkt(T + 1_000_000_000, True, SYN, 7000, ip_id=22),  # SYN retransmitted: same connection
        Pkt(T + 1_000_010_000, False, SYN | ACK, 900, 7001, ip_id=0),
        Pkt(T + 1_000_020_000, True, ACK, 7001, 901, ip_id=23),
        Pkt(T + 1_000_030_000, True, PSH | ACK, 7001, 901, b"GET /", ip_id=24),
    ]
    forged = Pkt(T + 1_000_050_000, False, RST, 901, ip_id=0, ttl=64)
    a = run(client([*pkts, forged]), proxy(pkts))
    challenge = next(r for r in a.resets if r.tuple4[0] == C)
    later = next(r for r in a.resets if r.tuple4[0] == P)
    assert (challenge.origin_kind, challenge.origin_host, challenge.cause) == ("host", "client", "challenge_ack")
    assert fact(challenge, Fact.CAUSE).data["challenge_ack"] == 5555
    assert (challenge.isn, later.isn) == (None, 7000)
    assert challenge.chain != later.chain and later.chain_role == "first" and later.propagated_from is None
    assert not any(e.kind == Fact.SAME_TEARDOWN for e in later.evidence)
    assert later.origin_kind == "middlebox"


def test_a_dnat_vip_is_not_taken_for_the_sender() -> None:
    """The client talks to a VIP (198.18.9.9:443) that a box nobody listed DNATs to the backend's
    198.18.3.10:8443. A reset in the VIP's name that the backend, which captured the connection
    under its own name (learned from the SYN), never sent: injected between client and backend."""
    vip, b = "198.18.9.9", "198.18.3.10"
    mac_b = b"\x02\x00\x00\x00\x00\x0e"
    # (us after T, from the client?, flags, seq, ack, payload)
    conv = [(0, True, SYN, 100, 0, b""), (1, False, SYN | ACK, 500, 101, b""), (2, True, ACK, 101, 501, b""),
            (3, True, PSH | ACK, 101, 501, b"GET /")]  # fmt: skip

    def capture(
        name: str, server: tuple[str, int], own: str, mac: bytes, extra: list[tuple[int, bytes]]
    ) -> VantageInput:
        frames = []
        for t, up, flags, seq, ack, data in conv:
            ends = (C, server[0], CP, server[1]) if up else (server[0], C, server[1], CP)
            ip = tcp_packet(*ends, flags, seq=seq, ack=ack, payload=data, ip_id=t, ttl=63)
            mine = (up and own == C) or (not up and own != C)
            frames.append(
                (T + t * 1000, ethernet(ip, src_mac=mac if mine else MAC_NI, dst_mac=MAC_NI if mine else mac))
            )
        return VantageInput(name, name, captures=[("eth1", io.BytesIO(pcap(frames + extra)))],
                            facts=HostFacts(own_ips={own}, own_macs={mac}))  # fmt: skip

    forged = tcp_packet(vip, C, 443, CP, RST, seq=506, ip_id=0, ttl=64)
    a = run(capture("client", (vip, 443), C, MAC_C, [(T + 5000, ethernet(forged, src_mac=MAC_NI, dst_mac=MAC_C))]),
            capture("backend", (b, 8443), b, mac_b, []))  # fmt: skip
    r = a.first
    assert r is not None and (b, 8443, C, CP) in r.names
    assert (r.origin_kind, r.origin_host, r.between) == ("middlebox", None, ["client", "backend"])
    assert fact(r, Fact.INJECTED).data["host"] == "backend"
    assert (fact(r, Fact.TTL_DIFFERS).data["rst_ttl"], fact(r, Fact.TTL_DIFFERS).data["genuine_ttls"]) == (64, [63])
