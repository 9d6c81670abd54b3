from __future__ import annotations

import io

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.decode import ACK, PKT_HOST, PKT_OUTGOING, PSH, RST, SYN, decode, flag_text
from analysis.extract import extract
from analysis.model import HostFacts, VantageInput
from analysis.pcap import NotACapture, ReadStats, read_records
from tests.pcapgen import ethernet, pcap, pcapng, sll, sll2, tcp_packet

T0 = 1_795_238_229_832_322_513  # a nanosecond timestamp floats cannot hold exactly


def frames() -> list[tuple[int, bytes]]:
    return [
        (T0, ethernet(tcp_packet("198.18.1.10", "198.18.2.10", 40000, 8081, SYN, seq=100, ttl=64))),
        (
            T0 + 1_000,
            ethernet(
                tcp_packet("198.18.2.10", "198.18.1.10", 8081, 40000, SYN | ACK, seq=500, ack=101, ttl=63),
                src_mac=b"\x02\x00\x00\x00\x00\x02",
                dst_mac=b"\x02\x00\x00\x00\x00\x01",
            ),
        ),
        (
            T0 + 2_000,
            ethernet(
                tcp_packet(
                    "198.18.1.10",
                    "198.18.2.10",
                    40000,
                    8081,
                    PSH | ACK,
                    seq=101,
                    ack=501,
                    payload=b"GET / HTTP/1.1\r\n\r\n",
                ),
                vlan=12,
            ),
        ),
        (
            T0 + 3_000,
            ethernet(
                tcp_packet("198.18.2.10", "198.18.1.10", 8081, 40000, RST, seq=501, ttl=64, ip_id=0),
                src_mac=b"\x02\x00\x00\x00\x00\x02",
                dst_mac=b"\x02\x00\x00\x00\x00\x01",
            ),
        ),
    ]


def read_all(data: bytes) -> tuple[list, ReadStats]:  # type: ignore[type-arg]
    stats = ReadStats()
    return list(read_records(io.BytesIO(data), stats)), stats


def test_pcap_nanoseconds_are_exact_and_fields_decode() -> None:
    recs, stats = read_all(pcap(frames()))
    assert stats.format == "pcap-ns" and stats.records == 4 and not stats.truncated
    segs = [decode(r) for r in recs]
    assert [s.ts_ns for s in segs if s] == [T0, T0 + 1_000, T0 + 2_000, T0 + 3_000]
    syn, synack, data, rst = segs
    assert syn and (syn.src, syn.dst, syn.sport, syn.dport, syn.seq, syn.ttl, syn.df) == (
        "198.18.1.10",
        "198.18.2.10",
        40000,
        8081,
        100,
        64,
        True,
    )
    assert synack and flag_text(synack.flags) == "S." and synack.ack == 101
    assert data and data.payload_len == 18 and data.payload_crc != 0  # decoded through the VLAN tag
    assert rst and rst.is_rst and rst.ip_id == 0 and rst.src_mac == b"\x02\x00\x00\x00\x00\x02"


def test_pcap_microseconds_and_pcapng() -> None:
    recs, stats = read_all(pcap(frames(), nano=False))
    assert stats.format == "pcap-us"
    assert recs[0].ts_ns % 1000 == 0 and abs(recs[0].ts_ns - T0) <= 500
    recs, stats = read_all(pcapng(frames()))
    assert stats.format == "pcapng" and len(recs) == 4
    assert abs(recs[3].ts_ns - (T0 + 3_000)) < 1_000  # dpkt writes microseconds
    assert decode(recs[3]).is_rst  # type: ignore[union-attr]


def test_cooked_captures_carry_direction() -> None:
    ip = tcp_packet("2001:db8::2", "2001:db8::1", 443, 50000, RST | ACK, seq=9, ack=10, ttl=61)
    recs, _ = read_all(pcap([(T0, sll2(ip, PKT_OUTGOING, 7))], linktype=276))
    seg = decode(recs[0])
    assert seg and seg.pkt_type == PKT_OUTGOING and seg.if_index == 7 and seg.src == "2001:db8::2"
    assert seg.ttl == 61 and seg.ip_id is None
    recs, _ = read_all(pcap([(T0, sll(tcp_packet("10.0.0.1", "10.0.0.2", 1, 2, RST), PKT_HOST))], linktype=113))
    seg = decode(recs[0])
    assert seg and seg.pkt_type == PKT_HOST and seg.is_rst
    recs, _ = read_all(pcap([(T0, tcp_packet("10.0.0.1", "10.0.0.2", 1, 2, SYN))], linktype=101))
    assert decode(recs[0]) is not None


def test_direction_by_mac_given_inferred_or_declared_unknown() -> None:
    own_mac = b"\x02\x00\x00\x00\x00\x01"

    def vantage(data: bytes, **facts: object) -> VantageInput:
        return VantageInput("c", captures=[("eth0", io.BytesIO(data))], facts=HostFacts(**facts))  # type: ignore[arg-type]

    # The reset connection's frames, host = 198.18.1.10 behind MAC ...01.
    given = extract(vantage(pcap(frames()), own_ips={"198.18.1.10"}, own_macs={own_mac}))
    assert [s.direction for s in given.segments] == ["out", "in", "out", "in"]
    # By hand, with the inventory's addresses: the MAC on frames from/to them is the host's.
    by_address = extract(vantage(pcap(frames()), own_ips={"198.18.1.10"}))
    assert by_address.inferred_macs and [s.direction for s in by_address.segments] == ["out", "in", "out", "in"]
    # By hand, nothing known, two MACs in every frame: cannot tell, and says so (no guess).
    unknown = extract(vantage(pcap(frames())))
    assert unknown.directions_unknown and not unknown.inferred_macs
    assert {s.direction for s in unknown.segments} == {"in"}
    # By hand, nothing known, but the host talks to several peers: its MAC is the one in every frame.
    other = b"\x02\x00\x00\x00\x00\x07"
    more = frames() + [
        (
            T0 + 10_000 + i,
            ethernet(tcp_packet("198.18.1.10", "198.18.9.9", 41000 + i, 80, SYN), src_mac=own_mac, dst_mac=other),
        )  # fmt: skip
        for i in range(4)
    ]
    majority = extract(vantage(pcap(more)))
    assert majority.inferred_macs and [s.direction for s in majority.segments] == ["out", "in", "out", "in"]
    assert given.packets == 4


def test_truncated_at_every_byte_never_raises() -> None:
    data = pcap(frames())
    full = len(read_all(data)[0])
    for cut in range(24, len(data)):
        recs, stats = read_all(data[:cut])
        assert len(recs) <= full
        assert stats.truncated == (0 if len(recs) < full and cut in _record_ends(data) else stats.truncated)
    recs, stats = read_all(data[:-5])
    assert len(recs) == 3 and stats.truncated == 1 and "cut short" in stats.problems[0]


def _record_ends(data: bytes) -> set[int]:
    ends, off = {24}, 24
    while off + 16 <= len(data):
        off += 16 + int.from_bytes(data[off + 8 : off + 12], "little")
        ends.add(off)
    return ends


def test_not_a_capture() -> None:
    with pytest.raises(NotACapture):
        read_all(b"hello world, not a pcap")
    with pytest.raises(NotACapture):
        read_all(b"")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(blob: bytes) -> None:
    for head in (b"", pcap([])[:24], bytes.fromhex("0a0d0d0a")):
        try:
            for rec in read_records(io.BytesIO(head + blob)):
                decode(rec)
        except NotACapture:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255), st.booleans())
def test_mutated_captures_never_crash(pos: int, value: int, ng: bool) -> None:
    data = bytearray(pcapng(frames()) if ng else pcap(frames()))
    data[pos % len(data)] = value
    try:
        for rec in read_records(io.BytesIO(bytes(data))):
            decode(rec)
    except NotACapture:
        pass


def test_dpkt_agrees_on_every_field() -> None:
    """Cross-check our decoder against dpkt's on the same frames."""
    for rec in read_all(pcap(frames()))[0]:
        ours = decode(rec)
        eth = dpkt.ethernet.Ethernet(rec.data)
        ip = eth.data
        assert ours and (ours.seq, ours.ack, ours.flags, ours.ttl, ours.ip_id) == (
            ip.data.seq,
            ip.data.ack,
            ip.data.flags,
            ip.ttl,
            ip.id,
        )
