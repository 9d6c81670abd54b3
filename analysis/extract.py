"""Per vantage: every TCP segment of its captures, with direction and aligned time."""

from __future__ import annotations

from collections import Counter

from analysis.decode import PKT_OUTGOING, Segment, decode
from analysis.model import HostFacts, Seen, VantageData, VantageInput
from analysis.pcap import NotACapture, ReadStats, read_records


def direction(seg: Segment, facts: HostFacts) -> str:
    """Cooked-capture packet type first, then the frame's source MAC, then the source IP.
    The MAC rule matters on routers: a reset a router forges carries the peer's IP but the
    router's own MAC."""
    if seg.pkt_type is not None:
        return "out" if seg.pkt_type == PKT_OUTGOING else "in"
    if seg.src_mac is not None and facts.own_macs:
        return "out" if seg.src_mac in facts.own_macs else "in"
    return "out" if seg.src in facts.own_ips else "in"


def _infer_macs(segs: list[Segment]) -> set[bytes]:
    """Without a snapshot: on a host's own interface every unicast frame has the host's MAC as
    source or destination, so the MAC present in the most frames is the host's."""
    count: Counter[bytes] = Counter()
    for s in segs:
        if s.src_mac is not None and s.dst_mac is not None:
            count[s.src_mac] += 1
            if s.dst_mac != s.src_mac:
                count[s.dst_mac] += 1
    if not count:
        return set()
    best, n = count.most_common(1)[0]
    return {best} if n >= 0.9 * len(segs) else set()


def extract(v: VantageInput) -> VantageData:
    data = VantageData(v.name, v.role, v.status, v.error, v.kernel_drops, v.facts)
    per_file: list[tuple[str, list[Segment]]] = []
    for iface, fh in v.captures:
        stats = ReadStats()
        segs: list[Segment] = []
        try:
            for rec in read_records(fh, stats):
                seg = decode(rec)
                if seg is not None:
                    segs.append(seg)
        except NotACapture as exc:
            data.problems.append(f"{v.name}/{iface}: {exc}")
            continue
        data.packets += stats.records
        data.problems += [f"{v.name}/{iface}: {p}" for p in stats.problems]
        per_file.append((iface, segs))
    facts = v.facts
    if not facts.own_macs:
        macs = _infer_macs([s for _, segs in per_file for s in segs])
        if macs:
            facts = HostFacts(**{**facts.__dict__, "own_macs": macs})
            data.facts = facts
            data.inferred_macs = True
    for iface, segs in per_file:
        for seg in segs:
            name = facts.if_names.get(seg.if_index, f"if{seg.if_index}") if seg.if_index is not None else iface
            data.segments.append(Seen(v.name, name, seg.ts_ns + v.clock_offset_ns, direction(seg, facts), seg))
    data.segments.sort(key=lambda s: s.ts_ns)
    return data
