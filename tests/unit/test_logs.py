"""The proxies' log lines, parsed: each format's time (zone, resolution), tuple and meaning, from
lines in the formats the projects document (HAProxy's "Log formats", nginx's error.log and
combined access log, Envoy's default access log format)."""

from __future__ import annotations

import calendar

import pytest

from analysis.logs import parse, parse_line


def utc(y: int, mo: int, d: int, h: int, mi: int, s: int) -> int:
    return calendar.timegm((y, mo, d, h, mi, s)) * 10**9


def test_haproxy_tcp_log_server_abort_in_data_phase_with_syslog_header_and_local_time() -> None:
    line = ("Dec  1 23:22:43 lb-1 haproxy[1411]: 10.20.2.17:51644 [01/Dec/2026:23:22:43.120] fe_tcp be_tcp/b1 "
            "0/0/380 212 SD 1/1/0/0/0 0/0")  # fmt: skip
    x = parse_line("lb-1", "/var/log/haproxy.log", line, utc_offset_s=2 * 3600)  # the host runs at UTC+2
    assert x.kind == "haproxy" and x.client == ("10.20.2.17", 51644) and x.upstream == "be_tcp/b1"
    assert x.time_ns == utc(2026, 12, 1, 21, 22, 43) + 120_000_000 + 380_000_000  # accept + total time
    assert x.resolution_ns == 10**6 and x.meaning == "upstream_reset"
    assert x.says == "termination state SD: the server aborted or refused, in the data phase"


@pytest.mark.parametrize(
    ("term", "meaning", "words"),
    [
        ("cD--", "client_timeout", "the client-side timeout expired, in the data phase"),
        ("sH--", "proxy_timeout", "the server-side timeout expired, waiting for the headers"),
        ("CD--", "client_abort", "the client aborted, in the data phase"),
        ("PR--", "proxy_abort", "the proxy (HAProxy) aborted it, waiting for the request"),
        ("----", None, "normal end"),
    ],
)
def test_haproxy_http_log_termination_states(term: str, meaning: str | None, words: str) -> None:
    line = (f"198.18.1.10:40000 [02/Dec/2026:04:09:23.096] fe_main be/b1 0/0/1/2/3 502 1043 - - {term} "
            '1/1/0/0/0 0/0 "GET / HTTP/1.1"')  # fmt: skip
    x = parse_line("proxy", "f", line, 0)
    assert (x.meaning, x.client) == (meaning, ("198.18.1.10", 40000))
    assert words in x.says and "status 502" in x.says
    assert x.time_ns == utc(2026, 12, 2, 4, 9, 23) + 96_000_000 + 3_000_000


def test_nginx_error_log_phrases_client_and_upstream() -> None:
    text = "\n".join([
        '2026/12/01 21:22:43 [error] 31#31: *5 recv() failed (104: Connection reset by peer) while reading response '
        'header from upstream, client: 10.20.2.17, server: _, request: "GET / HTTP/1.1", upstream: '
        '"http://10.20.4.18:8080/", host: "api"',
        "2026/12/01 21:22:44 [info] 31#31: *6 client timed out (110: Connection timed out) while reading client "
        "request body, client: 10.20.2.17, server: _",
        "2026/12/01 21:22:45 [error] 31#31: *7 upstream prematurely closed connection while reading response header "
        'from upstream, client: 10.20.2.18, server: _, upstream: "http://10.20.4.18:8080/x"',
        "something else entirely",
    ])  # fmt: skip
    a, b, c, d = parse("lb", "/var/log/nginx/error.log", text, 0)
    assert (a.kind, a.meaning, a.client, a.upstream) == ("nginx_error", "upstream_reset", ("10.20.2.17", None),
                                                        "10.20.4.18:8080")  # fmt: skip
    assert a.time_ns == utc(2026, 12, 1, 21, 22, 43) and a.resolution_ns == 10**9
    assert b.meaning == "client_body_timeout" and c.meaning == "upstream_close" and c.client == ("10.20.2.18", None)
    assert (d.kind, d.time_ns, d.meaning) == ("raw", None, None)


def test_nginx_access_log_statuses_carry_their_own_zone() -> None:
    line = '10.20.2.17 - - [01/Dec/2026:22:22:43 +0100] "POST /pay HTTP/1.1" 499 0 "-" "curl/8.5.0"'
    x = parse_line("lb", "access.log", line, utc_offset_s=-5 * 3600)  # the line's own zone wins
    assert (x.kind, x.meaning, x.client) == ("nginx_access", "client_abort", ("10.20.2.17", None))
    assert x.time_ns == utc(2026, 12, 1, 21, 22, 43)
    assert parse_line("lb", "a", line.replace(" 499 ", " 504 "), 0).meaning == "proxy_timeout"
    assert parse_line("lb", "a", line.replace(" 499 ", " 200 "), 0).meaning is None


def test_envoy_response_flags() -> None:
    line = ('[2026-12-01T21:22:43.310Z] "GET /api HTTP/1.1" 503 UC 0 95 12 - "10.20.2.17" "curl/8" '
            '"2a5c-11" "api" "10.20.4.18:8080"')  # fmt: skip
    x = parse_line("edge", "envoy.log", line, 3600)
    assert (x.kind, x.meaning) == ("envoy", "upstream_close") and x.says == "status 503, response flags UC"
    assert x.time_ns == utc(2026, 12, 1, 21, 22, 43) + 310_000_000
