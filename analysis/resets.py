"""Every RST one vantage saw, with its direction and the TTL evidence next to it.

Direction, strongest clue first: the cooked-capture packet type (outgoing = 4), then whether the
frame's source MAC is one of the capturing host's own, then whether the source IP is. The MAC
rule matters on routers: a reset a router *forges* carries the peer's IP but the router's MAC.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from analysis.decode import PKT_OUTGOING, RST, Segment, decode, flag_text
from analysis.pcap import ReadStats, read_records


@dataclass
class ResetSeen:
    ts_ns: int
    src: str
    sport: int
    dst: str
    dport: int
    flags: str
    seq: int
    ack: int
    ttl: int
    direction: str  # "out" | "in"
    # TTLs of the claimed sender's other (non-RST) packets in the same direction at this vantage.
    sender_ttls: list[int] = field(default_factory=list)

    @property
    def ttl_matches_sender(self) -> bool | None:
        return None if not self.sender_ttls else self.ttl in self.sender_ttls


@dataclass
class VantageSummary:
    packets: int
    tcp_segments: int
    resets: list[ResetSeen]
    stats: ReadStats


def direction(seg: Segment, own_ips: set[str], own_macs: set[bytes]) -> str:
    if seg.pkt_type is not None:
        return "out" if seg.pkt_type == PKT_OUTGOING else "in"
    if seg.src_mac is not None and own_macs:
        return "out" if seg.src_mac in own_macs else "in"
    return "out" if seg.src in own_ips else "in"


def summarize(fh: BinaryIO, own_ips: Iterable[str] = (), own_macs: Iterable[bytes] = ()) -> VantageSummary:
    ips, macs = set(own_ips), set(own_macs)
    stats = ReadStats()
    tcp = 0
    resets: list[ResetSeen] = []
    ttls: dict[tuple[str, int, str], Counter[int]] = {}
    for rec in read_records(fh, stats):
        seg = decode(rec)
        if seg is None:
            continue
        tcp += 1
        way = direction(seg, ips, macs)
        if seg.flags & RST:
            resets.append(
                ResetSeen(
                    seg.ts_ns,
                    seg.src,
                    seg.sport,
                    seg.dst,
                    seg.dport,
                    flag_text(seg.flags),
                    seg.seq,
                    seg.ack,
                    seg.ttl,
                    way,
                )
            )
        else:
            ttls.setdefault((seg.src, seg.sport, way), Counter())[seg.ttl] += 1
    for r in resets:
        seen = ttls.get((r.src, r.sport, r.direction))
        r.sender_ttls = sorted(seen) if seen else []
    return VantageSummary(stats.records, tcp, resets, stats)
