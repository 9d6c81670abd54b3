"""The verdict: every reset's origin, chain and cause, the first reset, and the sentence for the ticket.

The rules live where they are stated: ``analysis.origin`` (who emitted it, and the evidence against
a middlebox conviction), ``analysis.causes`` (why), ``analysis.correlate`` (one reset seen at many
vantages; chains), ``analysis.names`` (one connection under several names through a NAT, and
incarnations of a reused 4-tuple). This module runs them in order and words the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analysis import causes, logcite, origin
from analysis.causes import fmt_s
from analysis.clock import Clocks, estimate
from analysis.clock import apply as apply_clocks
from analysis.correlate import Reset, group_resets, link_chains
from analysis.counters import deltas
from analysis.evidence import Cause, ChainRole, Fact, Origin, ev
from analysis.model import VantageData
from analysis.names import incarnation, name_of, show
from analysis.world import World


@dataclass
class Analysis:
    vantages: list[VantageData]
    resets: list[Reset]
    first: Reset | None
    verdict: str
    caveats: list[str] = field(default_factory=list)
    clocks: Clocks | None = None
    world: World | None = None
    # Where each vantage's captures were read from (vantage, interface, path): set by whoever
    # opened them, for the merged capture; the analysis itself does no IO.
    sources: list[tuple[str, str, str]] = field(default_factory=list)
    log_reset: dict[int, str] = field(default_factory=dict)  # id(LogLine) -> the reset it speaks of
    idle_chain: dict[str, Any] | None = None  # analysis.idlechain.link: set where the hosts' timeouts were read


def analyze(vantages: list[VantageData]) -> Analysis:
    clocks = estimate(vantages)
    apply_clocks(vantages, clocks)
    w = World(vantages)
    resets = group_resets(vantages)
    for r in resets:
        o = r.seen[0]
        segs = [s.seg for s in w.exact(o.vantage, name_of(o.seg))]
        r.isn = incarnation(segs, o.seg, w.names)
        origin.decide(w, r, clocks)
    link_chains(resets, w.names)
    by_id = {r.id: r for r in resets}
    reset_of = {id(o): r for r in resets for o in r.seen}
    for r in resets:
        if r.chain_role == ChainRole.FIRST:
            causes.decide(w, r, reset_of)
    for r in resets:
        if r.chain_role == ChainRole.PROPAGATED and r.propagated_from:
            _propagated(w, r, by_id)
    log_reset = logcite.cite(w, resets, vantages)
    unordered = _clock_order(clocks, resets, by_id)
    firsts = [r for r in resets if r.chain_role == ChainRole.FIRST]
    first = min(firsts, key=lambda r: r.time_ns) if firsts else None
    caveats = _caveats(w, vantages, resets)
    sentence = _sentence(w, first, resets, vantages)
    if first is not None:
        sentence += _order_note(clocks, first, resets, unordered)
    return Analysis(vantages, resets, first, sentence, caveats, clocks, w, log_reset=log_reset)


def _propagated(w: World, r: Reset, by_id: dict[str, Reset]) -> None:
    src = by_id[r.propagated_from or ""]
    root = src
    while root.chain_role == ChainRole.PROPAGATED and root.propagated_from:
        root = by_id[root.propagated_from]
    r.cause = root.cause
    if r.origin_host and not w.names.same_connection(src.tuple4, r.tuple4):
        got = src.at(r.origin_host, "in")
        delay = (r.time_ns - got[0].ts_ns) if got else 0
        r.evidence.insert(0, ev(
            Fact.PROPAGATION,
            f"{r.origin_host} received reset {src.id} ({src.describe()}) {fmt_s(delay)} earlier and then reset this "
            f"connection: propagation of {root.id}.", host=r.origin_host, received=src.id, root=root.id, delay_ns=delay,
        ))  # fmt: skip
    else:
        r.evidence.insert(0, ev(Fact.SAME_TEARDOWN, f"Follows reset {src.id} on the same connection: part of the "
                                                    f"same teardown.", follows=src.id))  # fmt: skip


def _uncertainty(clocks: Clocks, r: Reset) -> float:
    """How far off the aligned time of a reset may be: its vantage's clock uncertainty."""
    out = r.at(r.origin_host, "out") if r.origin_host else []
    v = (out[0] if out else r.seen[0]).vantage
    if clocks.method.get(v, "none") == "none":
        return float("inf")
    return float(clocks.uncertainty_ns.get(v, 0))


def _clock_order(clocks: Clocks, resets: list[Reset], by_id: dict[str, Reset]) -> set[str]:
    """Propagated resets whose order the aligned clocks alone could not prove: the packets did
    (the propagating host received the cause before it sent its own, on its one clock)."""
    out = set()
    for r in resets:
        src = by_id.get(r.propagated_from or "")
        if src is None or src.key == r.key or not r.origin_host:
            continue
        unc = _uncertainty(clocks, r) + _uncertainty(clocks, src)
        gap = r.time_ns - src.time_ns
        if gap <= unc:
            width = "unknown" if unc == float("inf") else f"+-{unc / 1e3:.0f} us"
            r.evidence.append(ev(
                Fact.CLOCKS_CANNOT_ORDER,
                f"On the aligned clocks {r.id} is {gap / 1e3:+.0f} us from {src.id}, within the clocks' uncertainty "
                f"({width}): the clocks cannot order them. The packets do: {r.origin_host} received {src.id} before "
                f"it sent {r.id}, both on its own clock.", gap_ns=gap,
                uncertainty_ns=None if unc == float("inf") else unc,
            ))  # fmt: skip
            out.add(r.id)
    return out


def _order_note(clocks: Clocks, first: Reset, resets: list[Reset], unordered: set[str]) -> str:
    note = ""
    if any(r.chain == first.chain and r.id in unordered for r in resets):
        note += " The clocks alone could not order this chain (closer than their uncertainty); the packets did."
    rivals = [
        r
        for r in resets
        if r.chain_role == ChainRole.FIRST
        and r is not first
        and r.time_ns - first.time_ns <= _uncertainty(clocks, r) + _uncertainty(clocks, first)
    ]
    if rivals:
        ids = ", ".join(r.id for r in rivals)
        note += (
            f" The clocks cannot tell whether {first.id} or {ids} came first (closer in time than their "
            f"uncertainty) and no packet links them: treat them as simultaneous."
        )
    return note


# ---- caveats and the sentence -----------------------------------------------------------------
def _saw_its_traffic(d: VantageData, vantages: list[VantageData]) -> list[str]:
    """Other vantages whose captures hold packets to or from d's own addresses."""
    own = d.facts.own_ips
    return [v.name for v in vantages
            if v is not d and any(s.seg.src in own or s.seg.dst in own for s in v.segments)]  # fmt: skip


def _caveats(w: World, vantages: list[VantageData], resets: list[Reset]) -> list[str]:
    out = []
    for d in vantages:
        if not d.captured:
            out.append(f"{d.name} ({d.role}) was not captured: {d.error or d.status}.")
        elif not d.packets and (saw := _saw_its_traffic(d, vantages)):
            out.append(
                f"{d.name} captured no packet of this flow while {', '.join(saw)} saw packets to or from its "
                f"addresses: its filter may not match translated addresses, or the flow does not cross its "
                f"interfaces."
            )
        elif d.kernel_drops:
            out.append(
                f"{d.name}'s capture dropped {d.kernel_drops} packets in the kernel: its silence is weaker evidence."
            )
        if d.inferred_macs:
            how = "its inventory addresses" if d.facts.own_ips else "the one MAC present in every frame"
            out.append(f"{d.name}: no snapshot; its own MAC (so each packet's direction) was inferred from {how}.")
        if d.directions_unknown:
            out.append(
                f"{d.name}: no snapshot and no inventory addresses, and two MACs in every frame: which side "
                f"is {d.name} cannot be told, so nothing is attributed to it from this capture (give -i "
                f"with its addresses)."
            )
        out.extend(d.problems)
        counted = deltas(d.facts)
        full = [f"{k} +{v}" for k, v in counted.listen_overflow.items()]
        if full:
            out.append(
                f"{d.name}'s listen queue overflowed during the capture ({', '.join(full)}): connections "
                f"were dropped there before any application saw them."
            )
        if counted.conntrack_near_full:
            out.append(f"{d.name}: {counted.conntrack_near_full}: new connections may be dropped there.")
        drops = [f"{i} {k} {v:+d}" for i, x in counted.links.items() for k, v in x.items() if v > 0]
        if drops:
            out.append(f"{d.name}'s interfaces dropped packets during the capture ({', '.join(drops)}).")
        wit = d.witness
        if wit.problems:
            out.extend(f"{d.name} witness: {p}" for p in wit.problems)
    clocked = [d for d in vantages if d.captured and d.segments]
    unaligned = [d.name for d in clocked if d.clock_method == "none"]
    if len(clocked) > 1 and unaligned:
        out.append(
            f"Clock of {', '.join(unaligned)} not aligned with the others (no packet seen leaving one capture "
            f"and arriving at another, both ways): its times are its own, and time differences with other hosts "
            f"smaller than their clocks' disagreement prove nothing."
        )
    unknown = sorted({ip for r in resets for n in (r.names or [r.tuple4]) for ip in (n[0], n[2]) if ip not in w.owner})
    if unknown:
        out.append(f"Not in the inventory (so not captured): {', '.join(unknown)}.")
    for r in resets:
        if len(r.names) > 1:
            out.append(f"{r.id} crossed an address translation: {'; '.join(show(n) for n in r.names)}.")
    return out


CAUSE_TEXT: dict[Cause, str] = {
    Cause.IDLE_REUSE: "a kept-alive connection was reused after it had dropped it (idle timeout)",
    Cause.PEER_RESTART: "its listener restarted with connections open",
    Cause.UNREAD_DATA_CLOSE: "it closed with unread data (answered early while the peer was still sending)",
    Cause.REFUSED: "connection refused: nothing was listening",
    Cause.PROXY_POLICY: "the proxy's own policy or timeout, its upstream leg being healthy",
    Cause.CAPACITY: "it was out of capacity (listen queue overflow, conntrack table full, or socket memory)",
    Cause.MIDDLEBOX: "a middlebox",
    Cause.IDLE_EXPIRY: "a middlebox had forgotten the idle connection (its idle timeout) and reset its reuse",
    Cause.APP_ABORT: "the application aborted the connection (close with SO_LINGER 0)",
    Cause.KEEPALIVE_TIMEOUT: "its keepalive probes went unanswered",
    Cause.NO_SOCKET: "a segment arrived for a connection it no longer had",
    Cause.HOST_FIREWALL: "a firewall rule or raw socket on that host, not its TCP stack (its kernel logged no reset)",
    Cause.CHALLENGE_ACK: "it answered a challenge ACK (RFC 5961): the peer still held an older connection there",
    Cause.UNKNOWN: "cause not recognised from the packets",
}


def _sentence(w: World, first: Reset | None, resets: list[Reset], vantages: list[VantageData]) -> str:
    if first is None:
        if not any(d.captured and d.packets for d in vantages):
            return (
                "Nothing was captured: no host's capture holds a single packet of this flow, so whether a reset "
                "happened is unknown (check the flow's addresses and each host's interfaces)."
            )
        return "No TCP reset was captured in the window."
    t = first.describe()
    chain = [r for r in resets if r.chain == first.chain and r is not first]
    tail = ""
    if chain:
        hops = ", ".join(f"{r.origin_host or 'an unknown box'} ({r.id})" for r in chain)
        tail = f" It was then propagated by {hops}."
    if first.origin_kind == Origin.HOST and first.cause == Cause.HOST_FIREWALL:
        return (
            f"The first reset ({first.id}, {t}) left {first.origin_host} with its address, but "
            f"{CAUSE_TEXT[first.cause]}.{tail}"
        )
    if first.origin_kind == Origin.HOST:
        kernel = ""
        if first.kernel_sent is not None:
            reason = first.kernel_sent[1].reason
            kernel = f"; its kernel logged it{', reason ' + reason if reason else ''}"
        return (
            f"{first.origin_host}'s own TCP stack sent the first reset ({first.id}, {t}{kernel}): "
            f"{CAUSE_TEXT[first.cause]}.{tail}"
        )
    absent = f" {first.witness_absent}'s own kernel logged no reset on this connection." if first.witness_absent else ""
    claimed = w.claimed(first) or first.tuple4[0]
    ttl = next((e.text for e in first.evidence if e.kind == Fact.TTL_DIFFERS), "")
    if first.origin_kind == Origin.MIDDLEBOX and first.origin_host:
        return (
            f"The first reset ({first.id}, {t}) was forged by {first.origin_host} in {claimed}'s name; "
            f"{claimed} never sent it.{absent}{tail}"
        )
    if first.origin_kind == Origin.MIDDLEBOX and first.between:
        a, b = first.between
        extra = " " + ttl if ttl else ""
        return (
            f"The first reset ({first.id}, {t}) was injected by a box between {a} and {b}: {b} never sent "
            f"it.{extra}{absent}{tail}"
        )
    contrary = next((e.text for e in first.evidence if e.kind == Fact.CONTRARY), None)
    why = contrary or next((e.text for e in first.evidence if e.kind not in _CONTEXT), "")
    why = why or "no vantage shows it leaving its emitter"
    return f"The first reset ({first.id}, {t}) cannot be attributed: {why}{tail}"


# Evidence that describes the reset but does not say why it cannot be attributed.
_CONTEXT = {Fact.TRANSLATED, Fact.FORWARDED, Fact.SEEN_FIRST_AT}
