"""The attribution rules on small synthetic captures: who sent it, or why we cannot tell."""

from __future__ import annotations

import io

from analysis.correlate import Reset
from analysis.decode import ACK, PSH, RST, SYN
from analysis.evidence import Evidence, Fact
from analysis.extract import extract_all
from analysis.model import ClockProbe, HostFacts, VantageInput
from analysis.verdict import analyze
from tests.pcapgen import ethernet, pcap, tcp_packet

C, P, B = "198.18.1.10", "198.18.2.10", "198.18.3.10"
MAC_C, MAC_R, MAC_P = b"\x02\x00\x00\x00\x00\x0c", b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"
T = 1_795_000_000 * 10**9


def handshake_and_request(ttl_at_client: int) -> list[tuple[int, bytes, bool]]:
    """(time, IP packet, sent by the client?) for a connection client:40000 -> proxy:443."""
    return [
        (T, tcp_packet(C, P, 40000, 443, SYN, seq=100), True),
        (T + 1000, tcp_packet(P, C, 443, 40000, SYN | ACK, seq=500, ack=101, ttl=ttl_at_client), False),
        (T + 2000, tcp_packet(C, P, 40000, 443, ACK, seq=101, ack=501), True),
        (T + 3000, tcp_packet(C, P, 40000, 443, PSH | ACK, seq=101, ack=501, payload=b"GET /"), True),
    ]


def client_capture(packets: list[tuple[int, bytes, bool]]) -> VantageInput:
    frames = [(t, ethernet(ip, src_mac=MAC_C if mine else MAC_R, dst_mac=MAC_R if mine else MAC_C))
              for t, ip, mine in packets]  # fmt: skip
    return VantageInput("client", "client", captures=[("eth1", io.BytesIO(pcap(frames)))],
                        facts=HostFacts(own_ips={C}, own_macs={MAC_C}))  # fmt: skip


def proxy_capture(packets: list[tuple[int, bytes, bool]], **kw: object) -> VantageInput:
    """The proxy's view of the same connection (its own packets leave with TTL 64)."""
    frames = [(t + 500, ethernet(ip, src_mac=MAC_R if mine else MAC_P, dst_mac=MAC_P if mine else MAC_R))
              for t, ip, mine in packets]  # fmt: skip
    return VantageInput("proxy", "proxy", captures=[("eth1", io.BytesIO(pcap(frames)))],
                        facts=HostFacts(own_ips={P}, own_macs={MAC_P}), **kw)  # type: ignore[arg-type]  # fmt: skip


def forged() -> tuple[int, bytes, bool]:
    # A reset in the proxy's name, one hop closer than the proxy: TTL 64 where the proxy's are 63.
    return (T + 4000, tcp_packet(P, C, 443, 40000, RST, seq=501, ttl=64, ip_id=0), False)


def fact(r: Reset, kind: Fact) -> Evidence:
    """The reset's evidence record of this kind (the test fails if there is none)."""
    found = [e for e in r.evidence if e.kind == kind]
    assert found, (kind, [e.kind for e in r.evidence])
    return found[0]


def first(inputs: list[VantageInput]):  # type: ignore[no-untyped-def]
    a = analyze(extract_all(inputs))
    assert a.first is not None
    return a, a.first


def test_injected_between_client_and_proxy_with_the_ttl_numbers() -> None:
    at_client = handshake_and_request(63) + [forged()]
    at_proxy = [(t, ip, mine) for t, ip, mine in handshake_and_request(64)]
    a, r = first([client_capture(at_client), proxy_capture(at_proxy)])
    assert (r.origin_kind, r.origin_host, r.between, r.cause) == ("middlebox", None, ["client", "proxy"], "middlebox")
    ttl = fact(r, Fact.TTL_DIFFERS).data
    assert (ttl["at"], ttl["rst_ttl"], ttl["genuine_ttls"]) == ("client", 64, [63])
    assert "injected by a box between client and proxy" in a.verdict


def test_the_same_reset_leaving_the_proxy_is_the_proxys() -> None:
    rst = (T + 4000, tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106, ttl=64, ip_id=0), False)
    at_client = handshake_and_request(63) + [(rst[0], tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106,
                                                                 ttl=63, ip_id=0), False)]  # fmt: skip
    a, r = first([client_capture(at_client), proxy_capture(handshake_and_request(64) + [rst])])
    assert (r.origin_kind, r.origin_host) == ("host", "proxy")
    assert {(o.vantage, o.direction) for o in r.seen} == {("client", "in"), ("proxy", "out")}
    assert "proxy's own TCP stack sent the first reset" in a.verdict


def test_unknown_when_the_claimed_sender_was_not_captured() -> None:
    at_client = handshake_and_request(63) + [forged()]
    failed = VantageInput("proxy", "proxy", status="failed", error="unreachable: connection refused",
                          facts=HostFacts(own_ips={P}))  # fmt: skip
    a, r = first([client_capture(at_client), failed])
    assert r.origin_kind == "unknown"
    assert "proxy was not captured (unreachable: connection refused)" in fact(r, Fact.CLAIMED_NOT_CAPTURED).text
    assert fact(r, Fact.TTL_DIFFERS).data["rst_ttl"] == 64  # the hint is still given, with its numbers
    assert "cannot be attributed" in a.verdict
    assert any("proxy (proxy) was not captured" in c for c in a.caveats)


def test_unknown_when_the_claimed_senders_capture_dropped_packets() -> None:
    at_client = handshake_and_request(63) + [forged()]
    a, r = first([client_capture(at_client), proxy_capture(handshake_and_request(64), kernel_drops=3)])
    assert r.origin_kind == "unknown"
    assert fact(r, Fact.CLAIMED_DROPPED).data["drops"] == 3


def test_unknown_when_no_host_of_the_run_owns_the_source() -> None:
    a, r = first([client_capture(handshake_and_request(63) + [forged()])])
    assert r.origin_kind == "unknown" and fact(r, Fact.CLAIMED_UNOWNED).data["src"] == P
    assert any("Not in the inventory" in c and P in c for c in a.caveats)


BACKEND_RST = (T + 3500, tcp_packet(B, P, 80, 50000, RST | ACK, seq=91, ack=16), False)


def proxy_propagates() -> list[tuple[int, bytes]]:
    """The proxy's capture: its upstream connection is reset by the backend at T+3.5 us, and
    0.3 us later the proxy resets its client."""
    up = [
        (T, tcp_packet(P, B, 50000, 80, SYN, seq=10), True),
        (T + 100, tcp_packet(B, P, 80, 50000, SYN | ACK, seq=90, ack=11), False),
        (T + 200, tcp_packet(P, B, 50000, 80, PSH | ACK, seq=11, ack=91, payload=b"GET /"), True),
        BACKEND_RST,
    ]
    down = handshake_and_request(64) + [(T + 3800, tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106), False)]
    frames = [(t, ethernet(ip, src_mac=MAC_P if mine else MAC_R, dst_mac=MAC_R if mine else MAC_P))
              for t, ip, mine in up + [(t, ip, not mine) for t, ip, mine in down]]  # fmt: skip
    return sorted(frames, key=lambda f: f[0])


def test_a_proxy_reset_after_an_upstream_reset_is_propagation() -> None:
    frames = proxy_propagates()
    proxy = VantageInput("proxy", "proxy", captures=[("eth1", io.BytesIO(pcap(frames)))],
                         facts=HostFacts(own_ips={P}, own_macs={MAC_P}))  # fmt: skip
    a = analyze(extract_all([proxy]))
    to_client = next(r for r in a.resets if r.tuple4[2] == C)
    from_backend = next(r for r in a.resets if r.tuple4[0] == B)
    assert to_client.chain_role == "propagated" and to_client.propagated_from == from_backend.id
    assert to_client.chain == from_backend.chain and a.first is from_backend
    assert from_backend.origin_kind == "unknown"  # the backend was not captured: the proxy only received it


def test_host_clock_skew_does_not_turn_a_host_reset_into_an_injection() -> None:
    """The proxy's clock is 2.5 s ahead: its own RST must still be recognised as the one the
    client received (same seq/ack/flags/IP ID), not called an injection."""
    rst_at_proxy = (T + 4000, tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106, ttl=64, ip_id=0), False)
    rst_at_client = (T + 4000, tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106, ttl=63, ip_id=0), False)
    skewed = [(t + 2_500_000_000, ip, mine) for t, ip, mine in handshake_and_request(64) + [rst_at_proxy]]
    a, r = first([client_capture(handshake_and_request(63) + [rst_at_client]), proxy_capture(skewed)])
    assert (r.origin_kind, r.origin_host) == ("host", "proxy"), r.evidence


def test_resets_closer_than_the_clocks_can_tell_are_ordered_by_the_packets() -> None:
    """The backend shares no packet both ways with the proxy, so only the SSH probe (+-1 ms)
    aligns it; the proxy resets the client 300 ns after receiving the backend's reset."""
    frames = proxy_propagates()
    mac_b = b"\x02\x00\x00\x00\x00\x0d"
    probe = [ClockProbe("start", T, 0, 1_000_000)]
    proxy = VantageInput("proxy", "proxy", captures=[("eth1", io.BytesIO(pcap(frames)))],
                         facts=HostFacts(own_ips={P}, own_macs={MAC_P}), probes=probe)  # fmt: skip
    backend_frames = [(T + 3400, ethernet(BACKEND_RST[1], src_mac=mac_b, dst_mac=MAC_R))]
    backend = VantageInput("backend", "backend", captures=[("eth0", io.BytesIO(pcap(backend_frames)))],
                           facts=HostFacts(own_ips={B}, own_macs={mac_b}), probes=probe)  # fmt: skip
    a = analyze(extract_all([proxy, backend]))
    assert a.clocks is not None and a.clocks.method == {"proxy": "reference", "backend": "probe"}
    to_client = next(r for r in a.resets if r.tuple4[2] == C)
    assert a.first is not None and a.first.origin_host == "backend" and to_client.chain_role == "propagated"
    assert "The packets do: proxy received" in fact(to_client, Fact.CLOCKS_CANNOT_ORDER).text
    assert "The clocks alone could not order this chain" in a.verdict
