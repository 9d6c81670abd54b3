"""One RST seen at several vantages is one reset; resets linked by a proxy form a chain.

Rules (DOMAIN.md):
- The same segment is recognised by (seq, ack, flags, IPv4 ID) within a window of time:
  addresses and ports are left out, so a NAT rewrite does not hide the match.
- An L7 proxy never forwards a reset: it receives one on one leg and originates a new one on
  another leg shortly after. That link is the chain; its earliest member is the first reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from analysis.decode import RST
from analysis.evidence import Cause, ChainRole, Evidence, Origin
from analysis.model import Seen, VantageData
from analysis.names import Names, key_of
from analysis.witness import KernelEvent

# The same packet at two vantages: (seq, ack, flags, IP ID) identifies it; time only keeps a
# 32-bit sequence coincidence out. Wide, because host clocks are not aligned: a narrow window would
# miss a host's own RST under clock skew and call it injected.
MATCH_WINDOW_NS = 60 * 10**9
CHAIN_WINDOW_NS = 2_000_000_000  # a proxy propagates within this


def flow_key(src: str, sport: int, dst: str, dport: int) -> tuple[str, int, str, int]:
    """Direction-free connection key (``names.key_of`` of the 4-tuple)."""
    return key_of((src, sport, dst, dport))


@dataclass
class Reset:
    id: str
    seen: list[Seen]  # every observation, in aligned time order
    origin_kind: Origin = Origin.UNKNOWN
    origin_host: str | None = None
    between: list[str] | None = None
    chain: int = 0
    chain_role: ChainRole = ChainRole.FIRST
    propagated_from: str | None = None
    cause: Cause = Cause.UNKNOWN
    evidence: list[Evidence] = field(default_factory=list)
    # The connection it belongs to on its 4-tuple: the initiator's initial sequence number (None:
    # opened before any handshake the captures hold). Resets of different incarnations never chain.
    isn: int | None = None
    names: list[tuple[str, int, str, int]] = field(default_factory=list)  # every name (NAT), tuple4 first
    blocked: list[Evidence] = field(default_factory=list)  # contrary evidence that stopped a conviction
    # The witness: the sender's own tcp_send_reset event, and the receivers' tcp_receive_reset.
    kernel_sent: tuple[str, KernelEvent] | None = None
    kernel_received: list[tuple[str, KernelEvent]] = field(default_factory=list)
    witness_absent: str | None = None  # host whose running witness logged no send event for it
    owners: dict[str, str] = field(default_factory=dict)  # host -> process owning its end (snapshots)
    # The silence before the data this reset answers, where the packets show a reuse after one
    # (the idle-reuse pattern, whichever rule named the cause): the idle-timeout chain's link.
    idle_ns: int | None = None

    @property
    def first_seen(self) -> Seen:
        return self.seen[0]

    @property
    def tuple4(self) -> tuple[str, int, str, int]:
        s = self.seen[0].seg
        return (s.src, s.sport, s.dst, s.dport)

    @property
    def key(self) -> tuple[str, int, str, int]:
        return flow_key(*self.tuple4)

    @property
    def time_ns(self) -> int:
        """The emitter's own timestamp when it was seen leaving its emitter, else the earliest."""
        if self.origin_host is not None:
            for o in self.seen:
                if o.vantage == self.origin_host and o.direction == "out":
                    return o.ts_ns
        return self.seen[0].ts_ns

    def at(self, vantage: str, direction: str | None = None) -> list[Seen]:
        return [o for o in self.seen if o.vantage == vantage and (direction is None or o.direction == direction)]

    def describe(self) -> str:
        src, sport, dst, dport = self.tuple4
        return f"{src}:{sport} -> {dst}:{dport}"


def _same_packet(a: Seen, b: Seen) -> bool:
    x, y = a.seg, b.seg
    return (
        x.seq == y.seq
        and x.ack == y.ack
        and (x.flags & 0x3F) == (y.flags & 0x3F)
        and (x.ip_id is None or y.ip_id is None or x.ip_id == y.ip_id)
        and abs(a.ts_ns - b.ts_ns) <= MATCH_WINDOW_NS
    )


def group_resets(vantages: list[VantageData]) -> list[Reset]:
    observations = sorted((s for v in vantages for s in v.segments if s.seg.flags & RST), key=lambda s: s.ts_ns)
    groups: list[list[Seen]] = []
    for obs in observations:
        for g in reversed(groups[-64:]):
            if _same_packet(g[0], obs) and not any(
                o.vantage == obs.vantage and o.iface == obs.iface and o.direction == obs.direction for o in g
            ):
                g.append(obs)
                break
        else:
            groups.append([obs])
    return [Reset(f"R{i + 1}", sorted(g, key=lambda s: s.ts_ns)) for i, g in enumerate(groups)]


def link_chains(resets: list[Reset], names: Names) -> None:
    """Mark propagation: a reset a host originated shortly after it *received* another reset on a
    different connection was caused by that one. Same-connection resets close together (a box
    resetting both ends) share a chain too, unless a new handshake on the 4-tuple separates them
    (different incarnations). Connections are compared under every name they have (NAT).
    Chain ids and roles are written into the resets."""
    parent: dict[str, str] = {r.id: r.id for r in resets}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def same(a: Reset, b: Reset) -> bool:
        return names.same_connection(a.tuple4, b.tuple4)

    for r2 in resets:
        if r2.origin_kind != Origin.HOST or r2.origin_host is None:
            continue
        sent = r2.at(r2.origin_host, "out")
        if not sent:
            continue
        t2 = sent[0].ts_ns
        cause = None
        for r1 in resets:
            if r1 is r2 or same(r1, r2):
                continue
            got = r1.at(r2.origin_host, "in")
            if got and 0 <= t2 - got[0].ts_ns <= CHAIN_WINDOW_NS:
                if cause is None or got[0].ts_ns > cause[1]:
                    cause = (r1, got[0].ts_ns)
        if cause is not None:
            r2.chain_role = ChainRole.PROPAGATED
            r2.propagated_from = cause[0].id
            parent[root(r2.id)] = root(cause[0].id)
    for i, a in enumerate(resets):
        for b in resets[i + 1 :]:
            if (
                same(a, b)
                and a.isn == b.isn  # a new SYN on the 4-tuple started another connection
                and abs(a.time_ns - b.time_ns) <= CHAIN_WINDOW_NS
                and root(a.id) != root(b.id)
            ):
                parent[root(b.id)] = root(a.id)
                if b.chain_role == ChainRole.FIRST and b.time_ns >= a.time_ns:
                    b.chain_role = ChainRole.PROPAGATED
                    b.propagated_from = a.id
    ids: dict[str, int] = {}
    for r in resets:
        r.chain = ids.setdefault(root(r.id), len(ids) + 1)
