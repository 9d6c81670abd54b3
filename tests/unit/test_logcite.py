"""A proxy's log line set against the packets: matched to its connection by the client's address
and port (or address and time), cited as agreeing when it names the side the packets convict,
as disagreeing when it names another; a line about another connection is not cited."""

from __future__ import annotations

from analysis.decode import ACK, PSH, RST
from analysis.extract import extract_all
from analysis.logs import parse_line
from analysis.verdict import analyze
from tests.pcapgen import tcp_packet
from tests.unit.test_verdict import C, P, T, client_capture, handshake_and_request, proxy_capture


def verdict_with(lines: list[str]):  # type: ignore[no-untyped-def]
    """The proxy (P) resets client:40000 itself; its log says ``lines`` (UTC, HAProxy format)."""
    rst = (T + 4000, tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106, ttl=64, ip_id=0), False)
    at_client = handshake_and_request(63) + [(rst[0], tcp_packet(P, C, 443, 40000, RST | ACK, seq=501, ack=106,
                                                                 ttl=63, ip_id=0), False)]  # fmt: skip
    proxy = proxy_capture(handshake_and_request(64) + [rst])
    proxy.logs = [parse_line("proxy", "/var/log/haproxy.log", x, 0) for x in lines]
    a = analyze(extract_all([client_capture(at_client), proxy]))
    assert a.first is not None and a.first.origin_host == "proxy"
    return a


def haproxy(port: int, term: str) -> str:
    # T is 1_795_000_000 s: 2026-11-18 11:06:40 UTC; the session accepted then, 0 ms long.
    return f"{C}:{port} [18/Nov/2026:11:06:40.000] fe be/b1 0/0/0/0/0 403 200 - - {term} 1/1/0/0/0 0/0 \"GET /\""


def test_a_line_naming_the_proxy_agrees_and_one_naming_the_server_disagrees() -> None:
    a = verdict_with([haproxy(40000, "PR--"), haproxy(40000, "SD--")])
    r = a.first
    assert r is not None
    kinds = [(e.kind, e.data["meaning"]) for e in r.evidence if e.kind in ("log_agrees", "log_disagrees")]
    assert kinds == [("log_agrees", "proxy_abort"), ("log_disagrees", "upstream_reset")]
    agree = next(e for e in r.evidence if e.kind == "log_agrees")
    said = 'HAProxy on proxy logged "termination state PR: the proxy (HAProxy) aborted it, waiting for the request; '
    assert agree.text == said + f'status 403" for {C}:40000: it agrees with the packets (proxy sent R1).'

    assert all(a.log_reset[id(x)] == r.id for x in a.vantages[1].logs)


def test_a_line_about_another_connection_or_another_time_is_not_cited() -> None:
    a = verdict_with([haproxy(40001, "PR--"), haproxy(40000, "PR--").replace("11:06:40", "11:16:40")])
    assert a.first is not None
    assert not [e for e in a.first.evidence if e.kind.startswith("log_")]
    assert a.log_reset == {}


def test_an_unmatched_format_is_kept_raw_and_uncited() -> None:
    a = verdict_with(["the proxy said something", haproxy(40000, "----")])  # a normal end means nothing here
    assert a.first is not None and not [e for e in a.first.evidence if e.kind.startswith("log_")]
    assert [x.kind for x in a.vantages[1].logs] == ["raw", "haproxy"]


def test_a_line_is_set_against_the_reset_that_ended_the_connection_not_its_aftermath() -> None:
    # A box between them forges R1 at the client; two seconds later HAProxy gives up on the request
    # ("cR", 408) and the client, its socket gone with R1, resets that answer (R2). The line is the
    # nearest to R2, but R2 ended nothing: it is not "contradicted" by the client's reset.
    from tests.unit.test_verdict import forged

    s = 10**9
    answer = (T + 2 * s, tcp_packet(P, C, 443, 40000, PSH | ACK, seq=501, ack=106, ttl=63, payload=b"HTTP/1.1 408"),
              False)  # fmt: skip
    r2 = (T + 2 * s + 10**6, tcp_packet(C, P, 40000, 443, RST, seq=106, ttl=64, ip_id=7), True)
    client = client_capture([*handshake_and_request(63), forged(), answer, r2])
    proxy = proxy_capture([*handshake_and_request(64),
                           (answer[0], tcp_packet(P, C, 443, 40000, PSH | ACK, seq=501, ack=106, ttl=64,
                                                  payload=b"HTTP/1.1 408"), False),
                           (r2[0], tcp_packet(C, P, 40000, 443, RST, seq=106, ttl=63, ip_id=7), True)])  # fmt: skip
    line = (f"{C}:40000 [18/Nov/2026:11:06:40.000] fe be/<NOSRV> 0/-1/-1/-1/2000 408 200 - - cR-- 1/1/0/0/0 0/0 "
            '"<BADREQ>"')  # Tt 2000: the line speaks of 2 s after the accept
    proxy.logs = [parse_line("proxy", "/var/log/haproxy.log", line, 0)]
    a = analyze(extract_all([client, proxy]))
    by_id = {r.id: r for r in a.resets}
    aftermath = next(r for r in a.resets if r.origin_host == "client")
    after = next(e for e in aftermath.evidence if e.kind == "after_reset")
    assert by_id[str(after.data["after"])].origin_kind == "middlebox"
    assert a.log_reset == {id(proxy.logs[0]): aftermath.id}  # matched by time to R2 ...
    cited = [e for r in a.resets for e in r.evidence if e.kind.startswith("log_")]
    assert not [e for e in cited if "client sent" in e.text], cited  # ... but never set against it
