"""Put every vantage on one clock, from the packets themselves.

A segment seen leaving vantage A at a_t (A's clock) and arriving at vantage B at b_t (B's clock)
took a one-way delay d >= 0. With theta = (B's clock - A's clock):

    b_t - a_t = d + theta  >=  theta      so  theta <= min over A->B samples of (b_t - a_t) = U
    a_t - b_t = d' - theta >= -theta      so  theta >= -min over B->A samples of (a_t - b_t) = L

With samples both ways, theta = (L + U) / 2 within +-(U - L) / 2: the minimum-delay envelope of
Paxson, "On Calibrating Measurements of Packet Transit Times" (SIGMETRICS 1998), taken as one
constant offset per pair (no drift yet). Pairwise estimates are chained along the vantage graph
by least total uncertainty, from a reference vantage. A vantage sharing no packet both ways with
another is left unaligned, and the report says so.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from analysis.model import Seen, VantageData


@dataclass
class Link:
    a: str
    b: str
    theta_ns: int  # b's clock minus a's
    half_width_ns: int
    samples_ab: int
    samples_ba: int


@dataclass
class Clocks:
    reference: str | None
    offset_ns: dict[str, int] = field(default_factory=dict)  # add to a vantage's times: reference clock
    uncertainty_ns: dict[str, int] = field(default_factory=dict)
    method: dict[str, str] = field(default_factory=dict)  # reference | packets | none
    links: list[Link] = field(default_factory=list)


def _identity(s: Seen) -> tuple[int, int, int, int, int, int | None]:
    g = s.seg
    return (g.seq, g.ack, g.flags & 0x3F, g.payload_len, g.payload_crc, g.ip_id)


def links(vantages: list[VantageData]) -> list[Link]:
    """Pairwise offset estimates from segments seen leaving one vantage and arriving at another."""
    by_id: dict[tuple[int, int, int, int, int, int | None], list[Seen]] = {}
    for v in vantages:
        for s in v.segments:
            by_id.setdefault(_identity(s), []).append(s)
    lo: dict[tuple[str, str], int] = {}  # min(b_t - a_t) over samples travelling a -> b
    count: dict[tuple[str, str], int] = {}
    for seen in by_id.values():
        outs = [s for s in seen if s.direction == "out"]
        ins = [s for s in seen if s.direction == "in"]
        if not outs or not ins or len(seen) > 16:  # a retransmitted or repeated segment: ambiguous
            continue
        for o in outs:
            for i in ins:
                if o.vantage == i.vantage:
                    continue
                key = (o.vantage, i.vantage)
                delta = i.ts_ns - o.ts_ns
                lo[key] = min(delta, lo.get(key, delta))
                count[key] = count.get(key, 0) + 1
    out = []
    for (a, b), upper in lo.items():
        if a > b or (b, a) not in lo:
            continue
        lower = -lo[(b, a)]
        out.append(Link(a, b, (lower + upper) // 2, max(0, (upper - lower) // 2), count[(a, b)], count[(b, a)]))
    return out


def estimate(vantages: list[VantageData], reference: str | None = None) -> Clocks:
    names = [v.name for v in vantages if v.segments]
    found = links(vantages)
    if not names:
        return Clocks(None)
    edges: dict[str, list[tuple[str, int, int]]] = {}
    for link in found:
        edges.setdefault(link.a, []).append((link.b, link.theta_ns, link.half_width_ns))
        edges.setdefault(link.b, []).append((link.a, -link.theta_ns, link.half_width_ns))
    if reference is None or reference not in names:
        # The best-connected vantage keeps its own clock: fewest hops to everyone else.
        reference = max(names, key=lambda n: (len(edges.get(n, [])), -names.index(n)))
    clocks = Clocks(reference, links=found)
    # Dijkstra on uncertainty: theta(ref -> v) accumulates along the path.
    best: dict[str, tuple[int, int]] = {reference: (0, 0)}
    heap = [(0, reference)]
    while heap:
        width, node = heapq.heappop(heap)
        if width > best[node][1]:
            continue
        theta = best[node][0]
        for nxt, t, hw in edges.get(node, []):
            cand = (theta + t, width + hw)
            if nxt not in best or cand[1] < best[nxt][1]:
                best[nxt] = cand
                heapq.heappush(heap, (cand[1], nxt))
    for n in names:
        if n == reference:
            clocks.offset_ns[n], clocks.uncertainty_ns[n], clocks.method[n] = 0, 0, "reference"
        elif n in best:
            clocks.offset_ns[n], clocks.uncertainty_ns[n], clocks.method[n] = -best[n][0], best[n][1], "packets"
        else:
            clocks.offset_ns[n], clocks.uncertainty_ns[n], clocks.method[n] = 0, 0, "none"
    return clocks


def apply(vantages: list[VantageData], clocks: Clocks) -> None:
    """Shift every vantage's segment times (and its activity keys) onto the reference clock."""
    for v in vantages:
        off = clocks.offset_ns.get(v.name, 0)
        v.clock_method = clocks.method.get(v.name, "none")
        if not off:
            continue
        for s in v.segments:
            s.ts_ns += off
        v.activity = {t + off: a for t, a in v.activity.items()}
