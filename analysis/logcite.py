"""Log lines matched to the resets they speak of, and cited: one that agrees with the packets as
evidence for the verdict, one that disagrees as such (the packets decide; the line is still news).

A line names its connection by the client's address and port (HAProxy) or the client's address
alone (nginx, Envoy: then its time must fall within its resolution and a second of the reset's).
Who the line says ended it (the proxy itself, its upstream, its client) is set against who the
packets say sent the chain's first reset; for a reset that is another's aftermath (a host answering
on a connection a reset it took had ended: ``causes.after_reset``), that other reset's chain.
"""

from __future__ import annotations

from analysis.correlate import Reset
from analysis.evidence import ChainRole, Fact, ev
from analysis.logs import LogLine
from analysis.model import VantageData
from analysis.world import World

PROXY_SIDE = {"client_timeout", "proxy_timeout", "proxy_abort", "proxy_resource", "proxy_error", "proxy_answer",
              "client_body_timeout", "client_header_timeout", "proxy_reset", "stream_idle_timeout",
              "killed"}  # fmt: skip
UPSTREAM_SIDE = {"upstream_reset", "upstream_close", "upstream_down", "upstream_refused", "upstream_error",
                 "upstream_connect_failure", "upstream_retry_limit", "upstream_overflow"}  # fmt: skip
CLIENT_SIDE = {"client_abort", "client_reset", "peer_reset"}
LABEL = {"haproxy": "HAProxy", "nginx_error": "nginx", "nginx_access": "nginx", "envoy": "Envoy"}
BEFORE_NS = 120 * 10**9  # a session's line may be written this long after it started (its accept time)


def _matches(line: LogLine, r: Reset) -> bool:
    if line.client is None or line.time_ns is None:
        return False
    ip, port = line.client
    names = r.names or [r.tuple4]
    ends = {(n[0], n[1]) for n in names} | {(n[2], n[3]) for n in names}
    if port is not None:
        return (ip, port) in ends and r.time_ns - BEFORE_NS <= line.time_ns <= r.time_ns + 5 * 10**9
    near = line.resolution_ns + 10**9
    return ip in {e[0] for e in ends} and line.time_ns - near <= r.time_ns <= line.time_ns + near


def _idle_context(line: LogLine, r: Reset) -> None:
    """An idle reuse, and the proxy's line for the last request on that connection: it ended
    normally, then the connection idled until the reuse the proxy reset. Cited as agreeing."""
    if str(r.cause) != "idle_reuse" or r.origin_host != line.host or line.kind != "haproxy":
        return
    if not line.says.startswith("termination state --") or line.time_ns is None or line.time_ns > r.time_ns:
        return
    ep = f"{line.client[0]}:{line.client[1]}" if line.client else "?"
    before = (r.time_ns - line.time_ns) / 1e9
    r.evidence.append(ev(
        Fact.LOG_AGREES,
        f"HAProxy on {line.host} logged \"{line.says}\" for {ep}, {before:.1f} s before {r.id}: the last request on "
        f"this connection ended normally and it then sat idle: it agrees with the packets (an idle reuse, "
        f"{line.host} sent {r.id}).",
        host=line.host, source=line.source, meaning="normal_end", line=line.text[:300], time_ns=line.time_ns,
    ))  # fmt: skip


def cite(w: World, resets: list[Reset], vantages: list[VantageData]) -> dict[int, str]:
    """Evidence on each reset a line speaks of; returns id(line) -> the reset's id."""
    matched: dict[int, str] = {}
    firsts = {r.chain: r for r in resets if r.chain_role == ChainRole.FIRST}
    by_id = {r.id: r for r in resets}
    for v in vantages:
        for line in v.logs:
            found = [r for r in resets if _matches(line, r)]
            if not found:
                continue
            r = min(found, key=lambda x: abs(x.time_ns - (line.time_ns or 0)))
            matched[id(line)] = r.id
            first = firsts.get(r.chain, r)
            # A reset that is another's aftermath (causes.after_reset) did not end the connection:
            # the line is set against the one that did.
            taken = next((str(e.data["after"]) for e in r.evidence if e.kind == Fact.AFTER_RESET), None)
            if taken is not None and taken in by_id:
                first = firsts.get(by_id[taken].chain, by_id[taken])
            if line.meaning is None:
                _idle_context(line, first)
                continue
            who = first.origin_host
            client = w.owner.get(line.client[0]) if line.client else None
            if line.meaning in PROXY_SIDE:
                agrees: bool | None = who == line.host
            elif line.meaning in UPSTREAM_SIDE:
                agrees = who is not None and who != line.host and who != client
            elif line.meaning in CLIENT_SIDE:
                agrees = who is not None and who == client
            else:
                agrees = None
            if who is None or agrees is None:
                continue
            ep = f"{line.client[0]}:{line.client[1]}" if line.client and line.client[1] else (line.client or ("?",))[0]
            said = f"{LABEL.get(line.kind, line.kind)} on {line.host} logged \"{line.says}\" for {ep}"
            if agrees:
                kind, text = Fact.LOG_AGREES, f"{said}: it agrees with the packets ({who} sent {first.id})."
            else:
                kind, text = Fact.LOG_DISAGREES, f"{said}: the packets say otherwise ({who} sent {first.id})."
            r.evidence.append(ev(kind, text, host=line.host, source=line.source, meaning=line.meaning,
                                 line=line.text[:300], time_ns=line.time_ns))  # fmt: skip
    return matched
