"""The kernel reset witness: its files parsed as the host's kernel wrote them, and its weight in
the verdict (proof of origin and cause, or evidence of forgery by its silence)."""

from __future__ import annotations

from pathlib import Path

from analysis.decode import ACK, RST
from analysis.evidence import Fact
from analysis.report import to_json
from analysis.witness import KernelEvent, Witness, parse_format, parse_stats, parse_witness
from tests.pcapgen import tcp_packet
from tests.unit.test_verdict import C, P, T, client_capture, fact, first, handshake_and_request, proxy_capture

DATA = Path(__file__).resolve().parents[1] / "data" / "witness"

# Built from Linux 4.15's include/trace/events/tcp.h (tcp_event_sk_skb: no state, no reason), as
# its format file prints it; not captured from a 4.15 host.
FORMAT_4_15 = """name: tcp_send_reset
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:36;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:52;\tsize:16;\tsigned:0;

print fmt: "sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c", REC->sport, REC->dport, \
REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6
"""


def read(name: str) -> str:
    return (DATA / name).read_text()


def formats() -> dict[str, str]:
    return {ev: read(f"{ev}-6.18.format") for ev in ("tcp_send_reset", "tcp_receive_reset")}


def test_the_format_file_says_which_keys_the_lines_carry() -> None:
    new = parse_format(read("tcp_send_reset-6.18.format"))
    assert new.name == "tcp_send_reset" and new.has_reason
    assert new.keys == ["skbaddr", "skaddr", "src", "dest", "state", "reason"]
    assert "reason" in new.fields and "saddr" in new.fields
    old = parse_format(FORMAT_4_15)
    assert not old.has_reason and old.keys == ["sport", "dport", "saddr", "daddr", "saddrv6", "daddrv6"]


def test_a_real_trace_is_split_by_host_and_placed_on_the_capture_clock() -> None:
    """A SYN to a closed port on the lab's proxy (kernel 6.18): the proxy's instance also logged
    the client's receive event (one kernel); each host keeps its own."""
    status = {"state": "ran"}
    proxy = parse_witness(status, read("refused-6.18.trace"), formats(), read("refused-6.18.sync"),
                          read("refused-6.18.stats"), {P})  # fmt: skip
    assert proxy.has_reason and proxy.lost == 0 and proxy.foreign == 1
    [sent] = proxy.events
    assert (sent.kind, sent.src, sent.sport, sent.dst, sent.dport) == ("send", P, 9999, C, 48776)
    assert (sent.reason, sent.state, sent.softirq) == ("NO_SOCKET", "UNKNOWN", True)
    # Mono 7480.354542 s, 84.527 ms after the marker written at mono 7480.270015 s between wall
    # clock 1795244763.290651 and .290668 s (the narrowest bracket at the start).
    expected = 1795244763290651000 + (7480354542 - 7480270015) * 1000
    assert 0 <= sent.ts_ns - expected <= 17_000, sent.ts_ns - expected
    assert proxy.clock_bound_ns <= 10_000
    assert proxy.start_ns is not None and proxy.end_ns is not None and proxy.covers(sent.ts_ns)
    assert "in softirq" in sent.describe("proxy") and "reason NO_SOCKET, no socket" in sent.describe("proxy")

    client = parse_witness(status, read("refused-6.18.trace"), formats(), read("refused-6.18.sync"), "", {C})
    [got] = client.events
    # Stored as the reset packet's tuple: from the proxy's port to the client's.
    assert (got.kind, got.src, got.sport, got.dst, got.dport) == ("receive", P, 9999, C, 48776)
    assert not got.softirq and got.describe("client").endswith("pid 21941 (curl)")


def test_a_kernel_without_reason_still_works() -> None:
    trace = (
        "  bash-10 [000] ...1  100.000000: tracing_mark_write: capture-all-sync start 1\n"
        "  nginx-42 [001] ....  100.500000: tcp_send_reset: sport=80 dport=40312 saddr=198.18.3.10 "
        "daddr=198.18.1.10 saddrv6=::ffff:198.18.3.10 daddrv6=::ffff:198.18.1.10\n"
        "  bash-11 [000] ...1  101.000000: tracing_mark_write: capture-all-sync end 1\n"
    )
    sync = f"start 1 {T} {T + 4000}\nend 1 {T + 10**9} {T + 10**9 + 4000}\n"
    w = parse_witness({"state": "ran"}, trace, {"tcp_send_reset": FORMAT_4_15}, sync, "", {"198.18.3.10"})
    [e] = w.events
    assert (e.src, e.sport, e.dst, e.dport, e.reason, e.state) == ("198.18.3.10", 80, "198.18.1.10", 40312, None, None)
    assert not w.has_reason and e.describe("api-1") == "api-1 kernel sent RST to 198.18.1.10:40312, pid 42 (nginx)"
    assert abs(e.ts_ns - (T + 500_000_000)) <= 3_000


def test_without_its_clock_markers_a_trace_is_not_used() -> None:
    trace = read("refused-6.18.trace").replace("capture-all-sync", "someone-else")
    w = parse_witness({"state": "ran"}, trace, formats(), read("refused-6.18.sync"), "", {P})
    assert w.state == "unusable" and not w.events and not w.ran and "clock markers" in w.reason


def test_lost_events_are_counted_over_every_cpu() -> None:
    stats = "@@cpu 0\nentries: 3\noverrun: 2\ndropped events: 1\n@@cpu 1\noverrun: 0\ndropped events: 4\n"
    assert parse_stats(stats) == 7


# ---- in the verdict ------------------------------------------------------------------------------
def proxy_resets() -> tuple[list[tuple[int, bytes, bool]], list[tuple[int, bytes, bool]]]:
    """The proxy resets the client's connection itself (the RST leaves the proxy)."""
    rst = tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106, ttl=64, ip_id=0)
    at_client = [*handshake_and_request(63), (T + 4000, tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106,
                                                                   ttl=63, ip_id=0), False)]  # fmt: skip
    return at_client, [*handshake_and_request(64), (T + 4000, rst, False)]


def witness(*events: KernelEvent, lost: int = 0) -> Witness:
    return Witness("ran", events=list(events), start_ns=T - 10**9, end_ns=T + 10**9, lost=lost, has_reason=True)


def send(reason: str, *, softirq: bool = False, at: int = T + 4500) -> KernelEvent:
    return KernelEvent("send", at, P, 443, C, 40000, "TCP_CLOSE", reason, 4242, "haproxy", softirq)


def test_the_senders_kernel_proves_origin_and_names_the_cause() -> None:
    at_client, at_proxy = proxy_resets()
    a, r = first([client_capture(at_client), proxy_capture(at_proxy, witness=witness(send("TCP_ABORT_ON_CLOSE")))])
    assert r.kernel_sent is not None and r.kernel_sent[0] == "proxy"
    # A proxy resetting on its own, upstream healthy: its policy; the kernel's reason agrees.
    assert r.cause == "proxy_policy" and fact(r, Fact.KERNEL_AGREES).data["reason"] == "TCP_ABORT_ON_CLOSE"
    # The same packets from a plain server match no pattern: the kernel's reason names the cause.
    server = proxy_capture(at_proxy, witness=witness(send("TCP_ABORT_ON_CLOSE")))
    server.role = "server"
    assert first([client_capture(at_client), server])[1].cause == "unread_data_close"
    assert "its kernel logged it, reason TCP_ABORT_ON_CLOSE" in a.verdict
    sent = fact(r, Fact.KERNEL_SENT)
    assert sent.data == {"host": "proxy", "reason": "TCP_ABORT_ON_CLOSE"} and "pid 4242 (haproxy)" in sent.text
    rep = to_json(a, "flow")
    assert rep["resets"][0]["kernel"]["sent"]["sender_process"] == "haproxy pid 4242"
    rows = [x for x in rep["timeline"] if x["kind"] == "kernel"]
    assert [x["reset_id"] for x in rows] == [r.id]


def test_a_softirq_event_credits_no_process() -> None:
    at_client, at_proxy = proxy_resets()
    a, r = first([client_capture(at_client),
                  proxy_capture(at_proxy, witness=witness(send("NO_SOCKET", softirq=True)))])  # fmt: skip
    assert r.kernel_sent is not None
    assert to_json(a, "flow")["resets"][0]["kernel"]["sent"]["sender_process"] is None
    assert "in softirq" in fact(r, Fact.KERNEL_SENT).text


def test_a_send_event_far_from_the_packet_is_not_its_event() -> None:
    at_client, at_proxy = proxy_resets()
    far = send("TCP_STATE", at=T + 500_000_000)
    _, r = first([client_capture(at_client), proxy_capture(at_proxy, witness=witness(far))])
    assert r.kernel_sent is None


def test_a_reset_leaving_a_host_its_kernel_never_sent_is_a_firewall_rule_there() -> None:
    at_client, at_proxy = proxy_resets()
    a, r = first([client_capture(at_client), proxy_capture(at_proxy, witness=witness())])
    assert (r.origin_kind, r.origin_host, r.cause, r.witness_absent) == ("host", "proxy", "host_firewall", "proxy")
    assert "a firewall rule or raw socket on that host, not its TCP stack" in a.verdict


def test_a_witness_that_lost_events_proves_nothing_by_its_silence() -> None:
    at_client, at_proxy = proxy_resets()
    _, r = first([client_capture(at_client), proxy_capture(at_proxy, witness=witness(lost=3))])
    assert r.witness_absent is None and r.cause != "host_firewall"
    assert fact(r, Fact.WITNESS_LOST).data["lost"] == 3


def test_a_silent_witness_proves_nothing_when_the_name_it_would_log_is_not_known() -> None:
    """The proxy's capture missed the connection (wrong interface or filter). The client's name of
    it carries the proxy's address, but an unseen NAT between them would give the proxy another
    name for it: the proxy's silent witness is not read as its innocence (tests/unit/test_nat.py
    has the case where the NAT's capture teaches the name, and the witness then counts)."""
    at_client = handshake_and_request(63) + [(T + 4000, tcp_packet(P, C, 443, 40000, RST, seq=501, ttl=64), False)]
    other = [(T, tcp_packet(C, P, 40001, 8443, ACK, seq=1, ack=1), True),
             (T + 10, tcp_packet(P, C, 8443, 40001, ACK, seq=1, ack=1), False)]  # fmt: skip
    a, r = first([client_capture(at_client), proxy_capture(other, witness=witness())])
    assert (r.origin_kind, r.witness_absent) == ("unknown", None)
    assert fact(r, Fact.WITNESS_UNKNOWN_TUPLE).data["host"] == "proxy"
    assert "cannot be attributed" in a.verdict and "forged" not in a.verdict


def test_a_witness_whose_trace_did_not_come_back_says_so() -> None:
    w = parse_witness({"state": "ran"}, "", formats(), read("refused-6.18.sync"), "", {P})
    assert (w.state, w.ran) == ("unusable", False) and "not in the bundle" in w.reason
