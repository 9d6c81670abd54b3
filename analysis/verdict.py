"""Who emitted each reset, why, and the one sentence for the ticket.

Origin, strongest evidence first (DOMAIN.md "How the first reset is attributed"):
1. Seen *leaving* host X with one of X's own addresses as source: X's stack built it.
2. Seen leaving X with someone else's address, and never arriving at X on another interface:
   X forged it (a middlebox that captured itself doing it).
3. Seen arriving at A in B's name while B's capture of that connection (no kernel drops) has
   no such RST leaving: injected between the earliest vantage that saw it and B. The TTL and DF of
   the RST are compared with B's genuine packets as seen at A, with the numbers.
4. Otherwise unknown, saying which vantage is missing. A confident wrong answer is worse.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from analysis.clock import Clocks, estimate
from analysis.clock import apply as apply_clocks
from analysis.correlate import Reset, flow_key, group_resets, link_chains
from analysis.counters import deltas, owner
from analysis.decode import ACK, FIN, RST, SYN
from analysis.model import Seen, VantageData
from analysis.scan import conn_hash
from analysis.witness import KernelEvent

IDLE_GAP_NS = 1_000_000_000  # a silence this long before reused data counts as "idle"
ANSWER_NS = 200_000_000  # an RST within this of the peer's segment answers it
# A witness event and a packet of the same host are on one clock (the trace clock is mapped onto
# the capture clock within microseconds); the kernel logs a reset microseconds from its packet.
KERNEL_MATCH_NS = 50_000_000
# For a reset not seen at the claimed sender, its time there is only as good as the clocks.
KERNEL_ABSENT_NS = 2_000_000_000


@dataclass
class Analysis:
    vantages: list[VantageData]
    resets: list[Reset]
    first: Reset | None
    verdict: str
    caveats: list[str] = field(default_factory=list)
    clocks: Clocks | None = None


def _fmt_s(ns: int) -> str:
    return f"{ns / 1e9:.3f} s" if ns < 10 * 10**9 else f"{ns / 1e9:.0f} s"


class _World:
    def __init__(self, vantages: list[VantageData]) -> None:
        self.v = {d.name: d for d in vantages}
        self.owner: dict[str, str] = {}
        for d in vantages:
            for ip in d.facts.own_ips:
                self.owner.setdefault(ip, d.name)
        self._flows: dict[tuple[str, tuple[str, int, str, int]], list[Seen]] = {}
        for d in vantages:
            for s in d.segments:
                k = flow_key(s.seg.src, s.seg.sport, s.seg.dst, s.seg.dport)
                self._flows.setdefault((d.name, k), []).append(s)

    def flow(self, vantage: str, key: tuple[str, int, str, int]) -> list[Seen]:
        return self._flows.get((vantage, key), [])

    def flows_at(self, vantage: str) -> dict[tuple[str, int, str, int], list[Seen]]:
        return {k: segs for (v, k), segs in self._flows.items() if v == vantage}


def analyze(vantages: list[VantageData]) -> Analysis:
    clocks = estimate(vantages)
    apply_clocks(vantages, clocks)
    w = _World(vantages)
    resets = group_resets(vantages)
    for r in resets:
        _origin(w, r)
        _witness(w, r, clocks)
        _owners(w, r)
    link_chains(resets)
    by_id = {r.id: r for r in resets}
    for r in resets:
        if r.chain_role == "first":
            _cause(w, r)
    for r in resets:
        if r.chain_role == "propagated" and r.propagated_from:
            src = by_id[r.propagated_from]
            root = src
            while root.chain_role == "propagated" and root.propagated_from:
                root = by_id[root.propagated_from]
            r.cause = root.cause
            if r.origin_host and src.key != r.key:
                got = src.at(r.origin_host, "in")
                delay = (r.time_ns - got[0].ts_ns) if got else 0
                r.evidence.insert(
                    0,
                    f"{r.origin_host} received reset {src.id} ({src.describe()}) {_fmt_s(delay)} "
                    f"earlier and then reset this connection: propagation of {root.id}.",
                )
            else:
                r.evidence.insert(0, f"Follows reset {src.id} on the same connection: part of the same teardown.")
    unordered = _clock_order(clocks, resets, by_id)
    firsts = [r for r in resets if r.chain_role == "first"]
    first = min(firsts, key=lambda r: r.time_ns) if firsts else None
    caveats = _caveats(w, vantages, resets)
    sentence = _sentence(w, first, resets)
    if first is not None:
        sentence += _order_note(clocks, first, resets, unordered)
    return Analysis(vantages, resets, first, sentence, caveats, clocks)


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
            r.evidence.append(
                f"On the aligned clocks {r.id} is {gap / 1e3:+.0f} us from {src.id}, within the clocks' "
                f"uncertainty ({width}): the clocks cannot order them. The packets do: {r.origin_host} "
                f"received {src.id} before it sent {r.id}, both on its own clock."
            )
            out.add(r.id)
    return out


def _order_note(clocks: Clocks, first: Reset, resets: list[Reset], unordered: set[str]) -> str:
    note = ""
    if any(r.chain == first.chain and r.id in unordered for r in resets):
        note += " The clocks alone could not order this chain (closer than their uncertainty); the packets did."
    rivals = [
        r
        for r in resets
        if r.chain_role == "first"
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


# ---- origin ---------------------------------------------------------------------------------
def _origin(w: _World, r: Reset) -> None:
    src, sport, dst, dport = r.tuple4
    for o in r.seen:
        if o.direction != "out":
            continue
        facts = w.v[o.vantage].facts
        if src in facts.own_ips:
            r.origin_kind, r.origin_host = "host", o.vantage
            r.evidence.append(
                f"Seen leaving {o.vantage} ({o.iface}) with {o.vantage}'s own address {src} as "
                f"source: {o.vantage}'s TCP stack built it."
            )
            return
        if not r.at(o.vantage, "in"):
            claimed = w.owner.get(src)
            r.origin_kind, r.origin_host = "middlebox", o.vantage
            r.between = [w.owner.get(dst, dst), claimed or src]
            r.evidence.append(
                f"Seen leaving {o.vantage} ({o.iface}) in the name of {claimed or src} ({src}), and "
                f"never arriving at {o.vantage} on another interface: {o.vantage} forged it."
            )
            _ttl_evidence(w, r, claimed)
            return
    claimed = w.owner.get(src)
    receiver = r.seen[-1].vantage
    earliest = r.seen[0].vantage
    if claimed is None:
        r.evidence.append(
            f"It claims to come from {src}, which no host of this run owns (not in the inventory, or left "
            f"out): cannot tell that host from the path to it."
        )
        _ttl_evidence(w, r, None)
        return
    b = w.v[claimed]
    if not b.captured:
        r.evidence.append(
            f"{claimed} was not captured ({b.error or b.status}): cannot tell {claimed} from the "
            f"path between {earliest} and {claimed}."
        )
        _ttl_evidence(w, r, claimed)
        return
    at_b = w.flow(claimed, r.key)
    if not at_b:
        r.evidence.append(
            f"{claimed}'s capture has no packet of this connection (interface or filter?): its silence proves nothing."
        )
        _ttl_evidence(w, r, claimed)
        return
    if b.kernel_drops:
        r.evidence.append(
            f"{claimed} captured this connection but its capture dropped {b.kernel_drops} packets: "
            f"the missing RST there may be a drop."
        )
        _ttl_evidence(w, r, claimed)
        return
    r.origin_kind = "middlebox"
    r.between = [earliest, claimed]
    r.evidence.append(
        f"{claimed} captured this connection ({len(at_b)} packets, no kernel drops) and never sent "
        f"this RST: something between {earliest} and {claimed} injected it."
    )
    if receiver != earliest:
        r.evidence.append(f"It was seen first at {earliest}, then at {receiver}.")
    _ttl_evidence(w, r, claimed)


# ---- the kernel witness ----------------------------------------------------------------------
REASON_TEXT = {
    "NO_SOCKET": "no socket for this 4-tuple (nothing listening, or the connection was already gone)",
    "TCP_TIMEWAIT_SOCKET": "a segment arrived for a connection it had already closed (TIME_WAIT)",
    "TCP_ABORT_ON_CLOSE": "the application closed the socket with unread data",
    "TCP_ABORT_ON_DATA": "data arrived after the application had closed the socket",
    "TCP_ABORT_ON_LINGER": "the FIN_WAIT2 linger time ran out",
    "TCP_STATE": "the application aborted the connection (close with SO_LINGER 0, or a disconnect)",
    "TCP_KEEPALIVE_TIMEOUT": "its keepalive probes went unanswered",
    "TCP_ABORT_ON_MEMORY": "out of socket memory",
    "TCP_DISCONNECT_WITH_DATA": "a disconnect with data still queued",
    "NOT_SPECIFIED": "no reason given",
}
# The cause a kernel reason stands for, when the packets matched no pattern (or contradict it).
_REASON_CAUSE = {
    "TCP_TIMEWAIT_SOCKET": "idle_reuse",
    "TCP_ABORT_ON_CLOSE": "unread_data_close",
    "TCP_ABORT_ON_DATA": "unread_data_close",
    "TCP_STATE": "app_abort",
    "TCP_ABORT_ON_LINGER": "app_abort",
    "TCP_DISCONNECT_WITH_DATA": "app_abort",
    "TCP_KEEPALIVE_TIMEOUT": "keepalive_timeout",
    "TCP_ABORT_ON_MEMORY": "capacity",
}
# Kernel reasons that agree with a cause found from the packets.
_AGREES = {
    "idle_reuse": {"TCP_TIMEWAIT_SOCKET", "NO_SOCKET"},
    "peer_restart": {"NO_SOCKET", "TCP_TIMEWAIT_SOCKET", "TCP_ABORT_ON_CLOSE", "TCP_STATE"},
    "unread_data_close": {"TCP_ABORT_ON_CLOSE", "TCP_ABORT_ON_DATA"},
    "refused": {"NO_SOCKET"},
    "capacity": {"NO_SOCKET", "TCP_ABORT_ON_MEMORY"},
    "proxy_policy": {"TCP_STATE", "TCP_ABORT_ON_CLOSE", "TCP_ABORT_ON_DATA", "TCP_ABORT_ON_LINGER",
                     "TCP_KEEPALIVE_TIMEOUT", "TCP_DISCONNECT_WITH_DATA"},
}  # fmt: skip


def _nearest(events: list[KernelEvent], t: int, within: float) -> KernelEvent | None:
    best = min(events, key=lambda e: abs(e.ts_ns - t), default=None)
    return best if best is not None and abs(best.ts_ns - t) <= within else None


def _witness(w: _World, r: Reset, clocks: Clocks) -> None:
    """Put the hosts' own kernel accounts next to the packets: the sender's tcp_send_reset (proof
    of origin, and why), its absence where the claimed sender's witness was running (forgery),
    and the receivers' tcp_receive_reset (their stack accepted it)."""
    src = r.tuple4[0]
    for o in r.seen:
        if o.direction == "in":
            got = _nearest(
                [e for e in w.v[o.vantage].witness.events if e.kind == "receive" and e.tuple4() == r.tuple4],
                o.ts_ns,
                KERNEL_MATCH_NS,
            )
            if got is not None and all(h != o.vantage for h, _ in r.kernel_received):
                r.kernel_received.append((o.vantage, got))
    sender = r.origin_host if r.origin_kind == "host" else w.owner.get(src)
    if sender is None or sender not in w.v:
        return
    wit = w.v[sender].witness
    if not wit.ran:
        return
    out = r.at(sender, "out") if r.origin_kind == "host" else []
    t = out[0].ts_ns if out else r.seen[0].ts_ns
    aligned = clocks.method.get(sender, "none") != "none" and clocks.method.get(r.seen[0].vantage, "none") != "none"
    within = KERNEL_MATCH_NS if out else (KERNEL_ABSENT_NS if aligned else float("inf"))
    sent = _nearest(wit.sends(r.tuple4), t, within)
    if sent is not None:
        r.kernel_sent = (sender, sent)
        why = f": {REASON_TEXT.get(sent.reason, sent.reason.lower())}" if sent.reason else ""
        reason = f" with reason {sent.reason}{why}" if sent.reason else " (this kernel logs no reason)"
        r.evidence.append(f"{sender}'s kernel logged sending it (tcp_send_reset){reason}; {sent.who()}.")
        if r.origin_kind != "host":
            r.evidence.append(
                f"But {sender}'s own kernel says it sent a reset on this connection: the packets' verdict "
                f"({r.origin_kind}) conflicts with the host's own account."
            )
        return
    if wit.lost:
        r.evidence.append(
            f"{sender}'s kernel witness logged no send for it, but lost {wit.lost} events (buffer full): "
            f"its silence proves nothing."
        )
        return
    # The witness must have been running when the reset went by. On unaligned clocks its time at
    # the sender is unknown: the witness ran over the whole capture (it starts before tcpdump and
    # stops after), and the reset was captured, so only a witness that stopped early is doubted.
    if (out or aligned) and not wit.covers(t):
        return
    if not (out or aligned) and wit.end_ns is None:
        return
    r.witness_absent = sender
    if r.origin_kind == "host":
        r.evidence.append(
            f"{sender}'s kernel witness was running and logged no tcp_send_reset for it: {sender}'s TCP stack "
            f"did not build it; a firewall rule on {sender} (nftables/iptables `reject with tcp-reset`) or a raw "
            f"socket did."
        )
        return
    r.evidence.append(
        f"{sender}'s kernel witness was running and logged no tcp_send_reset for {r.describe()}: "
        f"{sender}'s TCP stack never sent it."
    )
    if r.origin_kind == "unknown":
        earliest = r.seen[0].vantage
        r.origin_kind = "middlebox"
        r.between = [earliest, sender]
        r.evidence.append(
            f"So something between {earliest} and {sender}'s TCP stack injected it (a box on the path, or a "
            f"firewall rule on {sender} itself)."
        )


def _owners(w: _World, r: Reset) -> None:
    """Which process owned each end of the reset connection, where a snapshot shows it."""
    src, sport, dst, dport = r.tuple4
    for ip, port, peer_ip, peer_port in ((src, sport, dst, dport), (dst, dport, src, sport)):
        host = w.owner.get(ip)
        if host is None:
            continue
        who = owner(w.v[host].facts, (ip, port), (peer_ip, peer_port))
        if who:
            r.owners[host] = f"{ip}:{port} {who}"
    claimed = w.owner.get(src)
    if r.origin_kind == "middlebox" and claimed is not None:
        procs = w.v[claimed].facts.sockets_after.get((src, sport, dst, dport))
        if procs is not None:
            r.evidence.append(
                f"{claimed} still had this connection open after the capture (ss -tnpi): it never reset it."
            )


def _ttl_evidence(w: _World, r: Reset, claimed: str | None) -> None:
    """Compare the RST's TTL/DF with the claimed sender's genuine packets, at the receiver."""
    src, sport = r.tuple4[0], r.tuple4[1]
    for o in reversed(r.seen):
        if o.direction != "in":
            continue
        genuine = [
            s
            for s in w.flow(o.vantage, r.key)
            if s.seg.src == src and s.seg.sport == sport and not s.seg.flags & RST and s.direction == "in"
        ]
        if not genuine:
            continue
        ttls = Counter(s.seg.ttl for s in genuine)
        usual = ", ".join(str(t) for t, _ in ttls.most_common())
        who = claimed or src
        if o.seg.ttl in ttls:
            r.evidence.append(
                f"At {o.vantage} the RST's TTL ({o.seg.ttl}) matches {who}'s genuine packets there "
                f"(TTL {usual}): same path length as {who}."
            )
        else:
            r.evidence.append(
                f"At {o.vantage} the RST arrived with TTL {o.seg.ttl}, while {who}'s genuine packets on "
                f"this connection arrive there with TTL {usual}: it took a different path."
            )
        dfs = {s.seg.df for s in genuine}
        if len(dfs) == 1 and o.seg.df not in dfs:
            r.evidence.append(
                f"DF is {'set' if o.seg.df else 'clear'} on the RST but "
                f"{'set' if dfs.pop() else 'clear'} on {who}'s genuine packets."
            )
        return


# ---- cause ----------------------------------------------------------------------------------
def _cause(w: _World, r: Reset) -> None:
    _packet_cause(w, r)
    _kernel_cause(r)


def _kernel_cause(r: Reset) -> None:
    """The sender's kernel reason confirms the packets' cause, or names it where they could not."""
    if r.origin_kind != "host":
        return
    if r.kernel_sent is None:
        if r.witness_absent == r.origin_host:
            r.cause = "host_firewall"
        return
    reason = r.kernel_sent[1].reason
    if not reason:
        return
    if reason in _AGREES.get(r.cause, set()):
        r.evidence.append(f"The kernel's reason ({reason}) agrees with the packets.")
        return
    mapped = _REASON_CAUSE.get(reason)
    if mapped is None:
        if r.cause == "unknown" and reason == "NO_SOCKET":
            r.cause = "no_socket"
        return
    if r.cause != "unknown":
        r.evidence.append(
            f"The packets pointed to {r.cause}, but the kernel's reason {reason} means {mapped}: the sender's "
            f"own kernel is the better witness of why."
        )
    r.cause = mapped


def _packet_cause(w: _World, r: Reset) -> None:
    if r.origin_kind == "middlebox":
        r.cause = "middlebox"
        return
    if r.origin_kind != "host" or r.origin_host is None:
        return
    h = r.origin_host
    d = w.v[h]
    src, sport, _dst, _dport = r.tuple4
    segs = w.flow(h, r.key)
    sent = r.at(h, "out")[0]
    before = [s for s in segs if s.ts_ns <= sent.ts_ns and s is not sent and not (s.seg.flags & RST)]
    peer = [s for s in before if s.seg.src != src]
    mine = [s for s in before if s.seg.src == src]
    restart = _listener_change(d, sport)
    counted = deltas(d.facts)
    overflow = [f"{k} +{v}" for k, v in counted.listen_overflow.items()]
    if counted.conntrack_near_full:
        overflow.append(counted.conntrack_near_full)

    last_peer = peer[-1] if peer else None
    answers_syn = (
        last_peer is not None
        and last_peer.seg.flags & SYN
        and not last_peer.seg.flags & ACK
        and not any(s.seg.flags & SYN for s in mine)
    )
    if answers_syn:
        if overflow:
            r.cause = "capacity"
            r.evidence.append(
                f"It answers a SYN while {h} was out of capacity during the capture ({', '.join(overflow)})."
            )
        elif restart:
            r.cause = "peer_restart"
            r.evidence.append(f"It answers a SYN to port {sport} while the listener there restarted ({restart}).")
        else:
            r.cause = "refused"
            r.evidence.append(
                f"It answers a SYN to port {sport}: connection refused, nothing listening there "
                f"(not a reset of an established connection)."
            )
        return
    if restart:
        r.cause = "peer_restart"
        r.evidence.append(
            f"The listener on port {sport} restarted during the capture ({restart}); this connection "
            f"was open across the restart."
        )
        return
    if d.role == "proxy":
        upstream = _upstream_health(w, h, r, sent.ts_ns)
        if upstream is not None:
            r.cause = "proxy_policy"
            r.evidence.append(
                f"{h} is a proxy and reset this connection itself, without having received a reset: "
                f"{upstream}. Its own policy or timeout decided it (its log says which)."
            )
            return
    if last_peer is not None and last_peer.seg.payload_len and sent.ts_ns - last_peer.ts_ns <= ANSWER_NS:
        # Silence = time since the last payload either way (ACKs of a FIN are not activity).
        earlier = [s for s in before if s.ts_ns < last_peer.ts_ns and s.seg.payload_len]
        my_fin = [s for s in mine if s.seg.flags & FIN and s.ts_ns < last_peer.ts_ns]
        if earlier and last_peer.ts_ns - earlier[-1].ts_ns >= IDLE_GAP_NS:
            gap = last_peer.ts_ns - earlier[-1].ts_ns
            r.cause = "idle_reuse"
            fin = (
                (
                    f"; {h} had closed it with a FIN {_fmt_s(last_peer.ts_ns - my_fin[-1].ts_ns)} before (its idle "
                    f"timeout)"
                )
                if my_fin
                else ""
            )
            r.evidence.append(
                f"It answers the peer's first data ({last_peer.seg.payload_len} bytes) after "
                f"{_fmt_s(gap)} of silence on this connection{fin}: a kept-alive connection reused "
                f"after {h} dropped it."
            )
            return
    answered = [s for s in mine if s.seg.payload_len]
    if answered and not any(s.seg.flags & FIN for s in mine):
        first_answer = answered[0].ts_ns
        still_sending = [s for s in peer if s.seg.payload_len and s.ts_ns > first_answer]
        if still_sending:
            sent_after = sum(s.seg.payload_len for s in still_sending)
            r.cause = "unread_data_close"
            r.evidence.append(
                f"{h} answered ({sum(s.seg.payload_len for s in answered)} bytes) while the peer was "
                f"still sending ({sent_after} more bytes after the answer began), then reset without "
                f"a FIN: a close with unread data."
            )
            return
    if peer and peer[-1].seg.payload_len and not any(s.seg.flags & FIN for s in mine):
        r.evidence.append(
            f"{h} reset the connection {_fmt_s(sent.ts_ns - peer[-1].ts_ns)} after receiving "
            f"{peer[-1].seg.payload_len} bytes, without a FIN: an application abort (SO_LINGER 0 or a "
            f"crash); the host's own logs say why."
        )
    else:
        r.evidence.append(f"No pattern of DOMAIN.md's causes matches the packets of this connection at {h}.")


def _listener_change(d: VantageData, port: int) -> str:
    before, after = d.facts.listeners_before.get(port), d.facts.listeners_after.get(port)
    if before and after and before != after:
        return f"PID {', '.join(map(str, sorted(before)))} before, {', '.join(map(str, sorted(after)))} after"
    if before and not after and d.facts.listeners_after:
        return f"PID {', '.join(map(str, sorted(before)))} before, nothing listening after"
    return ""


def _upstream_health(w: _World, proxy: str, r: Reset, t: int) -> str | None:
    """None if the proxy received a reset near t; else what its other connections did then."""
    for k, other in w.flows_at(proxy).items():
        if k != r.key and any(s.seg.flags & RST and s.direction == "in" and abs(s.ts_ns - t) <= 2 * 10**9
                              for s in other):  # fmt: skip
            return None
    own = conn_hash(*r.tuple4)
    near = {k: last for k, last in w.v[proxy].activity.get(t, {}).items() if k != own}
    if not near:
        return "no other connection of its was active around then, and none was reset"
    data = [last for last in near.values() if last >= 0]
    last = f", the last data {_fmt_s(t - max(data))} before" if data else ""
    return f"its {len(near)} other connection(s) active around then received no reset{last}"


# ---- caveats and the sentence -----------------------------------------------------------------
def _caveats(w: _World, vantages: list[VantageData], resets: list[Reset]) -> list[str]:
    out = []
    for d in vantages:
        if not d.captured:
            out.append(f"{d.name} ({d.role}) was not captured: {d.error or d.status}.")
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
    unknown = sorted({ip for r in resets for ip in (r.tuple4[0], r.tuple4[2]) if ip not in w.owner})
    if unknown:
        out.append(f"Not in the inventory (so not captured): {', '.join(unknown)}.")
    return out


_CAUSE_TEXT = {
    "idle_reuse": "a kept-alive connection was reused after it had dropped it (idle timeout)",
    "peer_restart": "its listener restarted with connections open",
    "unread_data_close": "it closed with unread data (answered early while the peer was still sending)",
    "refused": "connection refused: nothing was listening",
    "proxy_policy": "the proxy's own policy or timeout, its upstream leg being healthy",
    "capacity": "it was out of capacity (listen queue overflow, conntrack table full, or socket memory)",
    "middlebox": "a middlebox",
    "app_abort": "the application aborted the connection (close with SO_LINGER 0)",
    "keepalive_timeout": "its keepalive probes went unanswered",
    "no_socket": "a segment arrived for a connection it no longer had",
    "host_firewall": "a firewall rule or raw socket on that host, not its TCP stack (its kernel logged no reset)",
    "unknown": "cause not recognised from the packets",
}


def _sentence(w: _World, first: Reset | None, resets: list[Reset]) -> str:
    if first is None:
        return "No TCP reset was captured in the window."
    t = first.describe()
    chain = [r for r in resets if r.chain == first.chain and r is not first]
    tail = ""
    if chain:
        hops = ", ".join(f"{r.origin_host or 'an unknown box'} ({r.id})" for r in chain)
        tail = f" It was then propagated by {hops}."
    if first.origin_kind == "host" and first.cause == "host_firewall":
        return (
            f"The first reset ({first.id}, {t}) left {first.origin_host} with its address, but "
            f"{_CAUSE_TEXT[first.cause]}.{tail}"
        )
    if first.origin_kind == "host":
        kernel = ""
        if first.kernel_sent is not None:
            reason = first.kernel_sent[1].reason
            kernel = f"; its kernel logged it{', reason ' + reason if reason else ''}"
        return (
            f"{first.origin_host}'s own TCP stack sent the first reset ({first.id}, {t}{kernel}): "
            f"{_CAUSE_TEXT[first.cause]}.{tail}"
        )
    absent = f" {first.witness_absent}'s own kernel logged no reset on this connection." if first.witness_absent else ""
    claimed = w.owner.get(first.tuple4[0], first.tuple4[0])
    ttl = next((e for e in first.evidence if "TTL" in e and "different path" in e), "")
    if first.origin_kind == "middlebox" and first.origin_host:
        return (
            f"The first reset ({first.id}, {t}) was forged by {first.origin_host} in {claimed}'s name; "
            f"{claimed} never sent it.{absent}{tail}"
        )
    if first.origin_kind == "middlebox" and first.between:
        a, b = first.between
        extra = " " + ttl if ttl else ""
        return (
            f"The first reset ({first.id}, {t}) was injected by a box between {a} and {b}: {b} never sent "
            f"it.{extra}{absent}{tail}"
        )
    why = first.evidence[0] if first.evidence else "no vantage shows it leaving its emitter"
    return f"The first reset ({first.id}, {t}) cannot be attributed: {why}{tail}"
