"""The proxies' own words: log lines of the capture window, parsed.

Recognised: HAProxy's HTTP and TCP log lines (with or without a syslog header; the termination
state's first two characters: who ended the session and in which phase), nginx's error.log
(client/upstream prematurely closed, recv() failed (104: Connection reset by peer), timeouts) and
access log (status 499/502/504, the default "combined" format), Envoy's default access log
(response flags UC, UF, URX, UT, DC, ...). Anything else of the window is kept raw.

Times: each format's own resolution (HAProxy and Envoy milliseconds, nginx seconds) and time zone
(HAProxy's and nginx error.log's local time: the host's UTC offset from its snapshot; nginx access
and Envoy carry theirs), as integer nanoseconds UTC on the host's clock; the analysis then moves
them onto the aligned clock like its packets.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                      "Dec"), start=1)}  # fmt: skip

# HAProxy: termination state, first character (who or what ended it) and second (the phase).
HAPROXY_CAUSE = {
    "C": "the client aborted", "S": "the server aborted or refused", "P": "the proxy (HAProxy) aborted it",
    "L": "HAProxy answered locally", "R": "a resource ran out on the proxy", "I": "an internal error",
    "D": "the server was down", "U": "the proxy stopped the session", "K": "an administrator killed it",
    "c": "the client-side timeout expired", "s": "the server-side timeout expired",
}  # fmt: skip
HAPROXY_PHASE = {
    "R": "waiting for the request", "Q": "queued", "C": "connecting to the server", "H": "waiting for the headers",
    "D": "in the data phase", "L": "sending the last data", "T": "tarpitted", "-": "at normal end",
}  # fmt: skip
HAPROXY_MEANING = {"C": "client_abort", "S": "upstream_reset", "c": "client_timeout", "s": "proxy_timeout",
                   "P": "proxy_abort", "R": "proxy_resource", "I": "proxy_error", "D": "upstream_down",
                   "L": "proxy_answer", "K": "killed", "U": "proxy_abort"}  # fmt: skip

NGINX_ERRORS = [
    ("upstream prematurely closed connection", "upstream_close"),
    ("client prematurely closed connection", "client_abort"),
    ("(104: Connection reset by peer) while reading response header from upstream", "upstream_reset"),
    ("(104: Connection reset by peer) while reading upstream", "upstream_reset"),
    ("(104: Connection reset by peer) while sending to client", "client_reset"),
    ("(104: Connection reset by peer)", "peer_reset"),
    ("upstream timed out (110", "proxy_timeout"),
    ("client timed out (110: Connection timed out) while reading client request body", "client_body_timeout"),
    ("client timed out (110: Connection timed out) while reading client request headers", "client_header_timeout"),
    ("client timed out", "client_timeout"),
    ("connect() failed (111: Connection refused) while connecting to upstream", "upstream_refused"),
]
NGINX_STATUS = {"499": "client_abort", "502": "upstream_error", "504": "proxy_timeout"}
ENVOY_FLAGS = {"UC": "upstream_close", "UF": "upstream_connect_failure", "URX": "upstream_retry_limit",
               "UT": "proxy_timeout", "DC": "client_abort", "UR": "upstream_reset", "LR": "proxy_reset",
               "UH": "upstream_down", "UO": "upstream_overflow", "SI": "stream_idle_timeout",
               "DPE": "downstream_protocol_error", "UPE": "upstream_protocol_error"}  # fmt: skip

_SYSLOG = r"(?:(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:?\d\d)?) \S+ \S+?: )?"
_HAPROXY = re.compile(
    _SYSLOG + r"(?P<cip>[\d.]+|[\da-fA-F:]+):(?P<cport>\d+) \[(?P<d>\d\d)/(?P<mon>[A-Z][a-z]{2})/(?P<y>\d{4}):"
    r"(?P<hms>\d\d:\d\d:\d\d)\.(?P<ms>\d{3})\] (?P<fe>\S+) (?P<be>[^/\s]+)/(?P<srv>\S+) (?P<timers>[-\d/+]+) "
    r"(?:(?P<status>-1|\d{3}) )?(?P<bytes>\+?\d+) (?:\S+ \S+ )?(?P<term>[-A-Za-z]{2,4}) "
)
_NGINX_ERROR = re.compile(r"(?P<date>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(?P<level>\w+)\] \d+#\d+: (?P<msg>.*)")
_NGINX_ACCESS = re.compile(
    r"(?P<cip>[\d.]+|[\da-fA-F:]+) \S+ \S+ \[(?P<d>\d\d)/(?P<mon>[A-Z][a-z]{2})/(?P<y>\d{4}):(?P<hms>\d\d:\d\d:\d\d) "
    r"(?P<tz>[+-]\d{4})\] \"(?P<req>[^\"]*)\" (?P<status>\d{3}) "
)
_ENVOY = re.compile(
    r"\[(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(?P<ms>\d{3})Z\] \"(?P<req>[^\"]*)\" (?P<status>\d{3}|-) "
    r"(?P<flags>[-A-Z,]+) "
)
_CLIENT = re.compile(r"client: (?P<cip>[\d.]+|[\da-fA-F:]+)")
_UPSTREAM = re.compile(r'upstream: "(?:\w+://)?(?P<up>[^"/]+)')


@dataclass
class LogLine:
    host: str
    source: str  # the file or journal=UNIT it came from
    kind: str  # haproxy | nginx_error | nginx_access | envoy | raw
    text: str
    time_ns: int | None = None  # UTC on the host's clock; after the analysis, the aligned clock
    resolution_ns: int = 0  # the log's own resolution: the event lies in [time_ns, time_ns + resolution_ns)
    meaning: str | None = None  # client_abort, upstream_reset, proxy_timeout, ...
    says: str = ""  # what the line says, in words
    client: tuple[str, int | None] | None = None  # the client address (and port where the line has it)
    upstream: str | None = None  # the upstream (server) where the line names it


def _utc(y: int, mon: int, d: int, hms: str, offset_s: int) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return (calendar.timegm((y, mon, d, h, m, s)) - offset_s) * 10**9


def _tz(text: str) -> int:
    sign = -1 if text[0] == "-" else 1
    return sign * (int(text[1:3]) * 3600 + int(text[3:5]) * 60)


def parse_line(host: str, source: str, text: str, utc_offset_s: int) -> LogLine:
    """One line; ``utc_offset_s``: the host's local time minus UTC (for the formats without a zone)."""
    m = _HAPROXY.match(text)
    if m:
        ts = _utc(int(m["y"]), MONTHS.get(m["mon"], 1), int(m["d"]), m["hms"], utc_offset_s) + int(m["ms"]) * 10**6
        timers = [int(t) for t in m["timers"].replace("+", "").split("/") if t.lstrip("-").isdigit()]
        total = timers[-1] if timers and timers[-1] >= 0 else 0
        term = m["term"]
        cause, phase = term[0], term[1]
        says = f"termination state {term[:2]}: {HAPROXY_CAUSE.get(cause, 'normal end')}"
        if cause != "-":
            says += f", {HAPROXY_PHASE.get(phase, phase)}"
        if m["status"]:
            says += f"; status {m['status']}"
        return LogLine(host, source, "haproxy", text, ts + total * 10**6, 10**6, HAPROXY_MEANING.get(cause), says,
                       (m["cip"], int(m["cport"])), f"{m['be']}/{m['srv']}")  # fmt: skip
    m = _NGINX_ERROR.search(text)
    if m:
        y, mo, d = (int(x) for x in m["date"][:10].split("/"))
        ts = _utc(y, mo, d, m["date"][11:], utc_offset_s)
        msg = m["msg"]
        meaning = next((v for k, v in NGINX_ERRORS if k in msg), None)
        c = _CLIENT.search(msg)
        u = _UPSTREAM.search(msg)
        says = msg.split(", client:")[0]
        return LogLine(host, source, "nginx_error", text, ts, 10**9, meaning, says, (c["cip"], None) if c else None,
                       u["up"] if u else None)  # fmt: skip
    m = _NGINX_ACCESS.match(text)
    if m:
        ts = _utc(int(m["y"]), MONTHS.get(m["mon"], 1), int(m["d"]), m["hms"], _tz(m["tz"]))
        st = m["status"]
        return LogLine(host, source, "nginx_access", text, ts, 10**9, NGINX_STATUS.get(st), f"status {st}",
                       (m["cip"], None))  # fmt: skip
    m = _ENVOY.search(text)
    if m:
        y, mo, d = (int(x) for x in m["iso"][:10].split("-"))
        ts = _utc(y, mo, d, m["iso"][11:], 0) + int(m["ms"]) * 10**6
        flags = [f for f in m["flags"].split(",") if f and f != "-"]
        meaning = next((ENVOY_FLAGS[f] for f in flags if f in ENVOY_FLAGS), None)
        says = f"status {m['status']}, response flags {','.join(flags) or '-'}"
        return LogLine(host, source, "envoy", text, ts, 10**6, meaning, says)
    return LogLine(host, source, "raw", text)


def parse(host: str, source: str, text: str, utc_offset_s: int) -> list[LogLine]:
    return [parse_line(host, source, line, utc_offset_s) for line in text.splitlines() if line.strip()]
