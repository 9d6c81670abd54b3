"""Per vantage: the TCP segments that matter, with direction and aligned time, in bounded memory.

Two passes over every file (``analysis.scan`` gives per-record columns, chunk by chunk):
1. every RST, and (without a snapshot) the MAC seen in most frames;
2. every segment of a connection that had an RST at *any* vantage (B's capture of a connection
   matters precisely when B shows no RST), plus, around each RST a vantage saw, which other
   connections were active there and when they last carried data.
Everything else is counted and dropped, so memory follows the resets, not the file size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from analysis.correlate import flow_key
from analysis.decode import LINK_ETHERNET, PKT_OUTGOING, RST, Segment, decode
from analysis.model import HostFacts, Seen, VantageData, VantageInput
from analysis.pcap import NotACapture, ReadStats
from analysis.scan import Chunk, conn_hash, scan

ACTIVITY_WINDOW_NS = 5 * 10**9
_MAC_POW = np.array([1 << (8 * (5 - i)) for i in range(6)], dtype=np.uint64)


def direction(seg: Segment, facts: HostFacts) -> str:
    """Cooked-capture packet type first, then the frame's source MAC, then the source IP.
    The MAC rule matters on routers: a reset a router forges carries the peer's IP but the
    router's own MAC."""
    if seg.pkt_type is not None:
        return "out" if seg.pkt_type == PKT_OUTGOING else "in"
    if seg.src_mac is not None and facts.own_macs:
        return "out" if seg.src_mac in facts.own_macs else "in"
    return "out" if seg.src in facts.own_ips else "in"


def _count_macs(chunk: Chunk, count: Counter[int]) -> None:
    if chunk.link != LINK_ETHERNET or not len(chunk.off):
        return
    b = np.frombuffer(chunk.buf, dtype=np.uint8)
    ok = chunk.length >= 14
    idx = chunk.off[ok][:, None] + np.arange(12)
    six = b[idx].astype(np.uint64)
    dst, src = six[:, :6] @ _MAC_POW, six[:, 6:] @ _MAC_POW
    for value, n in zip(*np.unique(np.concatenate([src, dst[dst != src]]), return_counts=True), strict=True):
        count[int(value)] += int(n)


def _own_mac(count: Counter[int], frames: int) -> set[bytes]:
    """Without a snapshot: on a host's own interface every unicast frame has the host's MAC as
    source or destination, so the MAC present in (nearly) every frame is the host's."""
    if not count or not frames:
        return set()
    best, n = count.most_common(1)[0]
    return {best.to_bytes(6, "big")} if n >= 0.9 * frames else set()


def _rst_rows(chunk: Chunk) -> np.ndarray:
    return np.flatnonzero(((chunk.flags >= 0) & ((chunk.flags & RST) != 0)) | (chunk.flags == -2))


def extract_all(inputs: list[VantageInput], *, use_numba: bool | None = None) -> list[VantageData]:
    datas = [VantageData(v.name, v.role, v.status, v.error, v.kernel_drops, v.facts) for v in inputs]
    rsts: dict[str, list[int]] = {}  # vantage -> raw times of the RSTs it saw
    keys: set[tuple[str, int, str, int]] = set()
    starts: dict[int, int] = {}
    # Pass 1: the resets (and the host's own MAC, when no snapshot says it).
    for v, d in zip(inputs, datas, strict=True):
        macs: Counter[int] = Counter()
        frames = 0
        for iface, fh in v.captures:
            starts[id(fh)] = fh.tell()
            stats = ReadStats()
            try:
                for chunk in scan(fh, stats, use_numba=use_numba):
                    for i in _rst_rows(chunk):
                        seg = decode(chunk.record(int(i)))
                        if seg is not None and seg.flags & RST:
                            rsts.setdefault(v.name, []).append(seg.ts_ns)
                            keys.add(flow_key(seg.src, seg.sport, seg.dst, seg.dport))
                    if not v.facts.own_macs:
                        _count_macs(chunk, macs)
                        frames += int((chunk.link == LINK_ETHERNET) * len(chunk.off))
            except NotACapture as exc:
                d.problems.append(f"{v.name}/{iface}: {exc}")
                continue
            d.packets += stats.records
            d.problems += [f"{v.name}/{iface}: {p}" for p in stats.problems]
        if not v.facts.own_macs:
            own = _own_mac(macs, frames)
            if own:
                d.facts = replace(v.facts, own_macs=own)
                d.inferred_macs = True
    hashes = np.array(sorted({conn_hash(*k) for k in keys}), dtype=np.uint64)
    # Pass 2: the segments of every connection that was reset anywhere; activity near resets.
    for v, d in zip(inputs, datas, strict=True):
        times = sorted(rsts.get(v.name, []))
        activity: dict[int, dict[int, int]] = {t: {} for t in times}
        for iface, fh in v.captures:
            if id(fh) not in starts:
                continue
            fh.seek(starts[id(fh)])
            try:
                for chunk in scan(fh, ReadStats(), use_numba=use_numba):
                    _select(chunk, v, d, iface, keys, hashes)
                    _activity(chunk, times, activity)
            except NotACapture:
                continue
        d.activity = {t + v.clock_offset_ns: a for t, a in activity.items()}
        d.segments.sort(key=lambda s: s.ts_ns)
    return datas


def _select(chunk: Chunk, v: VantageInput, d: VantageData, iface: str, keys: set[tuple[str, int, str, int]],
            hashes: np.ndarray) -> None:  # fmt: skip
    if not len(hashes) and not (chunk.flags == -2).any():
        return
    rows = np.flatnonzero(np.isin(chunk.key, hashes) | (chunk.flags == -2))
    for i in rows:
        seg = decode(chunk.record(int(i)))
        if seg is None or flow_key(seg.src, seg.sport, seg.dst, seg.dport) not in keys:
            continue
        name = d.facts.if_names.get(seg.if_index, f"if{seg.if_index}") if seg.if_index is not None else iface
        d.segments.append(Seen(v.name, name, seg.ts_ns + v.clock_offset_ns, direction(seg, d.facts), seg))


def _activity(chunk: Chunk, times: list[int], activity: dict[int, dict[int, int]]) -> None:
    """For each RST time t: connection hash -> last data time before t (-1: none), within 5 s."""
    if not times or not len(chunk.ts):
        return
    tcp = chunk.flags >= 0
    for t in times:
        near = tcp & (np.abs(chunk.ts - t) <= ACTIVITY_WINDOW_NS)
        if not near.any():
            continue
        seen = activity[t]
        data = (chunk.plen > 0) & (chunk.ts <= t)
        conns, inverse = np.unique(chunk.key[near], return_inverse=True)
        last = np.full(len(conns), -1, dtype=np.int64)
        np.maximum.at(last, inverse, np.where(data[near], chunk.ts[near], -1))
        for k, ts in zip(conns.tolist(), last.tolist(), strict=True):
            if ts > seen.get(k, -1) or k not in seen:
                seen[k] = ts


def extract(v: VantageInput) -> VantageData:
    """One vantage on its own (its own resets only)."""
    return extract_all([v])[0]
