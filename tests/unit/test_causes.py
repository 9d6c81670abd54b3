"""Each row of the cause table (analysis.causes.CAUSE_RULES), from a synthetic capture at the
server that reset the connection: the pattern it matches, and a near miss it must not."""

from __future__ import annotations

import io

import pytest

from analysis.causes import CAUSE_RULES
from analysis.correlate import Reset
from analysis.decode import ACK, FIN, PSH, RST, SYN
from analysis.evidence import Cause, Fact
from analysis.extract import extract_all
from analysis.model import HostFacts, VantageInput
from analysis.verdict import analyze
from tests.pcapgen import ethernet, pcap, tcp_packet
from tests.unit.test_verdict import fact

C, S = "198.18.1.10", "198.18.3.10"
MAC_S, MAC_GW = b"\x02\x00\x00\x00\x00\x0d", b"\x02\x00\x00\x00\x00\x01"
T = 1_795_000_000 * 10**9
MS = 1_000_000

Packet = tuple[int, bool, int, int, int, bytes]  # (ms after T, from the server?, flags, seq, ack, payload)
WIN = 65535  # the window every packet advertises, but those in ZERO_WINDOW


def server(
    packets: list[Packet], role: str = "backend", zero_window: frozenset[int] = frozenset(), **facts: object
) -> VantageInput:
    """The server's capture; the packets sent at the times (ms) in zero_window advertise window 0."""
    frames = []
    for ms, mine, flags, seq, ack, payload in packets:
        src, dst, sport, dport = (S, C, 80, 40000) if mine else (C, S, 40000, 80)
        win = 0 if ms in zero_window else WIN
        ip = tcp_packet(src, dst, sport, dport, flags, seq=seq, ack=ack, payload=payload, ip_id=ms % 65536, win=win)
        frames.append((T + ms * MS, ethernet(ip, src_mac=MAC_S if mine else MAC_GW, dst_mac=MAC_GW if mine else MAC_S)))
    return VantageInput("srv", role, captures=[("eth1", io.BytesIO(pcap(frames)))],
                        facts=HostFacts(own_ips={S}, own_macs={MAC_S}, **facts))  # type: ignore[arg-type]  # fmt: skip


HANDSHAKE: list[Packet] = [
    (0, False, SYN, 100, 0, b""),
    (1, True, SYN | ACK, 500, 101, b""),
    (2, False, ACK, 101, 501, b""),
]
REFUSED: list[Packet] = [(0, False, SYN, 100, 0, b""), (1, True, RST | ACK, 0, 101, b"")]


def cause_of(v: VantageInput) -> tuple[Cause, Fact]:
    a = analyze(extract_all([v]))
    assert a.first is not None and a.first.origin_host == "srv"
    hints = (Fact.CAUSE, Fact.APP_ABORT_HINT, Fact.NO_CONNECTION_HINT, Fact.NO_PATTERN)
    found = [e for e in a.first.evidence if e.kind in hints]
    return a.first.cause, found[0].kind


def test_every_rule_of_the_table_is_tested_here() -> None:
    tested = {"challenge_ack"}  # tests/unit/test_nat.py::test_a_new_handshake_on_a_reused_tuple_is_another_connection
    tested |= {name.removeprefix("test_").split("__")[0] for name in globals() if name.startswith("test_")}
    assert {rule.__name__ for _, rule in CAUSE_RULES} <= tested


def test_refused__an_rst_answering_a_syn() -> None:
    assert cause_of(server(REFUSED)) == (Cause.REFUSED, Fact.CAUSE)


def test_capacity__an_rst_answering_a_syn_while_the_listen_queue_overflowed() -> None:
    full = server(REFUSED, counters_before={"TcpExtListenOverflows": 0}, counters_after={"TcpExtListenOverflows": 4})
    assert cause_of(full) == (Cause.CAPACITY, Fact.CAUSE)


def test_restart_on_syn__an_rst_answering_a_syn_while_the_listener_restarted() -> None:
    moved = server(REFUSED, listeners_before={80: {100}}, listeners_after={80: {200}})
    assert cause_of(moved) == (Cause.PEER_RESTART, Fact.CAUSE)


ESTABLISHED: list[Packet] = [
    *HANDSHAKE,
    (3, False, PSH | ACK, 101, 501, b"GET /"),
    (4, True, PSH | ACK, 501, 106, b"200"),
    (5, False, ACK, 106, 504, b""),
]


def test_peer_restart__an_open_connection_reset_after_its_listener_changed() -> None:
    reset = [*ESTABLISHED, (900, False, PSH | ACK, 106, 504, b"GET /"), (901, True, RST, 504, 0, b"")]
    assert cause_of(server(reset, listeners_before={80: {100}}, listeners_after={80: {200}})) == (
        Cause.PEER_RESTART, Fact.CAUSE)  # fmt: skip
    # The same packets with the same listener before and after: not a restart.
    assert cause_of(server(reset, listeners_before={80: {100}}, listeners_after={80: {100}}))[0] != Cause.PEER_RESTART


def test_proxy_policy__a_proxy_resetting_with_no_reset_received() -> None:
    reset = [*ESTABLISHED, (100, True, RST | ACK, 504, 106, b"")]
    assert cause_of(server(reset, role="proxy")) == (Cause.PROXY_POLICY, Fact.CAUSE)
    # The same packets at a plain server match no pattern: no policy is claimed for it.
    assert cause_of(server(reset)) == (Cause.UNKNOWN, Fact.NO_PATTERN)


@pytest.mark.parametrize("gap_ms", [1600, 400])
def test_idle_reuse__the_first_data_after_a_silence_answered_with_an_rst(gap_ms: int) -> None:
    fin = [(300, True, FIN | ACK, 504, 106, b""), (301, False, ACK, 106, 505, b"")] if gap_ms > 1000 else []
    reset = [
        *ESTABLISHED,
        *fin,
        (5 + gap_ms, False, PSH | ACK, 106, 505, b"GET /"),
        (6 + gap_ms, True, RST, 505, 0, b""),
    ]
    a = analyze(extract_all([server(reset)]))
    assert a.first is not None
    if gap_ms > 1000:
        assert a.first.cause == Cause.IDLE_REUSE and fact(a.first, Fact.CAUSE).data == {
            "cause": "idle_reuse", "idle_ns": (gap_ms + 1) * MS, "fin": True}  # fmt: skip
    else:  # reused after 0.4 s: not idle
        assert a.first.cause != Cause.IDLE_REUSE


def test_unread_data_close__answered_early_then_reset_while_the_peer_was_still_sending() -> None:
    upload = [*HANDSHAKE, (3, False, PSH | ACK, 101, 501, b"POST /early"), (4, True, PSH | ACK, 501, 112, b"413"),
              (5, False, PSH | ACK, 112, 504, b"x" * 500), (6, True, RST | ACK, 504, 612, b"")]  # fmt: skip
    a = analyze(extract_all([server(upload)]))
    assert a.first is not None and a.first.cause == Cause.UNREAD_DATA_CLOSE
    assert fact(a.first, Fact.CAUSE).data["bytes_after"] == 500
    # Had the server closed with a FIN first, it is not a close with unread data.
    with_fin = [*upload[:4], (4, True, FIN | PSH | ACK, 501, 112, b"413"), *upload[5:]]
    assert cause_of(server(with_fin))[0] != Cause.UNREAD_DATA_CLOSE


def test_unread_data_close__reset_after_a_zero_window_though_nothing_came_after_the_answer() -> None:
    # The peer filled the window before the server answered; the server's last ACK says its
    # receive queue is full (window 0), and the close resets (a lab run showed this race).
    full = [*HANDSHAKE, (3, False, PSH | ACK, 101, 501, b"POST /early" + b"x" * 900),
            (4, True, ACK, 501, 1012, b""), (5, True, PSH | ACK, 501, 1012, b"413"),
            (6, True, ACK, 504, 1012, b""), (7, True, RST | ACK, 504, 1012, b"")]  # fmt: skip
    assert cause_of(server(full, zero_window=frozenset({4, 5, 6}))) == (Cause.UNREAD_DATA_CLOSE, Fact.CAUSE)
    a = analyze(extract_all([server(full, zero_window=frozenset({4, 5, 6}))]))
    assert a.first is not None
    assert fact(a.first, Fact.CAUSE).data == {"cause": "unread_data_close", "bytes_after": 0, "zero_window": True}
    # The window reopened in its last ACK (the application read): no sign of unread data.
    assert cause_of(server(full, zero_window=frozenset({4, 5})))[0] != Cause.UNREAD_DATA_CLOSE
    # A zero window with nothing received from the peer is no queue of unread data either.
    empty = [*HANDSHAKE, (5, True, PSH | ACK, 501, 101, b"413"), (6, True, ACK, 504, 101, b""),
             (7, True, RST | ACK, 504, 101, b"")]  # fmt: skip
    assert cause_of(server(empty, zero_window=frozenset({6})))[0] != Cause.UNREAD_DATA_CLOSE


def test_every_cause_has_its_sentence() -> None:
    from analysis.verdict import CAUSE_TEXT

    assert set(CAUSE_TEXT) == set(Cause)


def test_a_bare_reset_answering_data_is_a_stack_without_the_connection_not_an_abort() -> None:
    # The peer's data after a long-open connection the server no longer has (seen from the
    # middle: no handshake in the capture), answered by <SEQ=SEG.ACK><CTL=RST>.
    late = [(0, False, PSH | ACK, 7000, 9000, b"HTTP/1.1 408"), (1, True, RST, 9000, 0, b"")]
    assert cause_of(server(late)) == (Cause.UNKNOWN, Fact.NO_CONNECTION_HINT)
    # The application's abort after the same data: RST with ACK.
    abort = [(0, False, PSH | ACK, 7000, 9000, b"HTTP/1.1 408"), (1, True, RST | ACK, 9000, 7012, b"")]
    assert cause_of(server(abort)) == (Cause.UNKNOWN, Fact.APP_ABORT_HINT)
    # A bare reset whose sequence number is not the segment's ack is not that answer.
    other = [(0, False, PSH | ACK, 7000, 9000, b"HTTP/1.1 408"), (1, True, RST, 8000, 0, b"")]
    assert cause_of(server(other)) == (Cause.UNKNOWN, Fact.APP_ABORT_HINT)


def test_after_reset__a_reset_answering_the_peer_after_the_host_took_one_is_its_aftermath() -> None:
    # The demo's second reset: the client took a (forged) reset, its socket went with it; the
    # proxy's 408 two seconds later met no socket. Not an idle reuse: the first reset's aftermath.
    def second(taken_seq: int) -> tuple[Reset, Reset]:
        packets = [*ESTABLISHED, (100, False, RST, taken_seq, 0, b""),
                   (2100, False, PSH | ACK, 106, 504, b"HTTP/1.1 408"), (2101, True, RST, 504, 0, b"")]  # fmt: skip
        a = analyze(extract_all([server(packets)]))
        mine = [r for r in a.resets if r.origin_host == "srv"]
        taken = [r for r in a.resets if r.origin_host != "srv"]
        assert len(mine) == 1 and len(taken) == 1, a.resets
        return mine[0], taken[0]

    r, taken = second(106)  # the sequence number srv expected next: its stack took it
    assert fact(r, Fact.AFTER_RESET).data == {"after": taken.id, "gap_ns": 2001 * MS}
    assert r.cause != Cause.IDLE_REUSE and not [e for e in r.evidence if e.kind == Fact.CAUSE]
    # A reset outside what srv expected is not taken (RFC 5961): srv still held the connection,
    # and the packets' rules read the reset as before (the data after a silence: an idle reuse).
    r, _ = second(9999)
    assert r.cause == Cause.IDLE_REUSE and not [e for e in r.evidence if e.kind == Fact.AFTER_RESET]
