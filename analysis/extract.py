"""Per vantage: the TCP segments that matter, with direction and aligned time, in bounded memory.

Two passes over every file (``analysis.scan`` gives per-record columns, chunk by chunk):
1. every RST, every SYN's initial sequence number and connection hash (read in place), and
   (without a snapshot) the MAC seen in most frames;
2. every segment of a connection that had an RST at *any* vantage (B's capture of a connection
   matters precisely when B shows no RST), under every name it has there: a connection whose SYN
   carried the same ISN as a reset connection's is the same one renamed by a NAT; plus, around
   each RST a vantage saw, which other connections were active there and when they last carried
   data.
Everything else is counted and dropped, so memory follows the resets, not the file size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

import numpy as np

from analysis.correlate import flow_key
from analysis.decode import ACK, LINK_ETHERNET, PKT_OUTGOING, RST, SYN, Segment, decode
from analysis.model import HostFacts, Seen, VantageData, VantageInput
from analysis.names import name_of
from analysis.pcap import NotACapture, ReadStats
from analysis.scan import Chunk, conn_hash, scan, seq_keys

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
    b = chunk.buf
    ok = chunk.length >= 14
    idx = chunk.off[ok][:, None] + np.arange(12)
    six = b[idx].astype(np.uint64)
    dst, src = six[:, :6] @ _MAC_POW, six[:, 6:] @ _MAC_POW
    for value, n in zip(*np.unique(np.concatenate([src, dst[dst != src]]), return_counts=True), strict=True):
        count[int(value)] += int(n)


def _own_mac(count: Counter[int], frames: int) -> set[bytes]:
    """Without a snapshot or addresses: on a host's own interface every unicast frame has the
    host's MAC as source or destination, so a MAC present in (nearly) every frame is the host's,
    but only when no other MAC is too: on a point-to-point link both are, and guessing would
    flip every direction."""
    top = count.most_common(2)
    if not top or not frames or top[0][1] < 0.9 * frames or (len(top) > 1 and top[1][1] >= 0.9 * frames):
        return set()
    return {top[0][0].to_bytes(6, "big")}


def _infer_directions(v: VantageInput, d: VantageData, majority: set[bytes]) -> None:
    """A capture without the host's MACs (taken by hand): from its addresses when the inventory
    gives them (the MAC on frames from or to them), else an unambiguous majority MAC; otherwise
    directions cannot be told and are left 'in' (nothing is then attributed to this host)."""
    own = v.facts.own_ips
    macs = {s.seg.src_mac for s in d.segments if s.seg.src in own and s.seg.src_mac} | {
        s.seg.dst_mac for s in d.segments if s.seg.dst in own and s.seg.dst_mac
    }
    macs = macs or majority
    if macs:
        d.facts = replace(v.facts, own_macs={m for m in macs if m is not None})
        d.inferred_macs = True
    elif not own and any(s.seg.src_mac is not None and s.seg.pkt_type is None for s in d.segments):
        d.directions_unknown = True
    for s in d.segments:
        s.direction = "in" if d.directions_unknown else direction(s.seg, d.facts)


def _rst_syn_rows(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """The rows to decode (resets, and records only the full decoder can read), and the SYN rows
    (no ACK). One pass over the flags picks the few candidates (-1 and -2 have every bit set)."""
    rows = np.flatnonzero(chunk.flags & (RST | SYN))
    f = chunk.flags[rows]
    tcp = f >= 0
    return rows[(tcp & ((f & RST) != 0)) | (f == -2)], rows[tcp & ((f & (SYN | ACK)) == SYN)]


def _syns(chunk: Chunk, rows: np.ndarray, out: _FirstPass) -> None:
    """Every SYN's (initial sequence number, connection hash), read in place: the ISN names its
    connection through any address translation, so pass 2 can collect a reset connection under
    every name it has (the rows needing the full decoder are decoded with the resets)."""
    if len(rows):
        seq, key, ok = seq_keys(chunk, rows)
        out.syn_seq.append(seq[ok])
        out.syn_key.append(key[ok])


@dataclass
class _FirstPass:
    start: int
    stats: ReadStats
    resets: list[Segment] = field(default_factory=list)
    syn_seq: list[np.ndarray] = field(default_factory=list)  # per chunk: the SYNs' initial sequence numbers
    syn_key: list[np.ndarray] = field(default_factory=list)  # and their connections' hashes
    macs: Counter[int] = field(default_factory=Counter)
    frames: int = 0
    error: str | None = None
    first_ns: int | None = None  # the file's earliest and latest record (own clock)
    last_ns: int | None = None


def _first_pass(v: VantageInput, fh: BinaryIO, use_numba: bool | None) -> _FirstPass:
    out = _FirstPass(fh.tell(), ReadStats())
    try:
        for chunk in scan(fh, out.stats, use_numba=use_numba, keys=False):
            if len(chunk.ts):
                lo, hi = int(chunk.ts.min()), int(chunk.ts.max())
                out.first_ns = lo if out.first_ns is None else min(out.first_ns, lo)
                out.last_ns = hi if out.last_ns is None else max(out.last_ns, hi)
            decode_rows, syn_rows = _rst_syn_rows(chunk)
            for i in decode_rows:
                seg = decode(chunk.record(int(i)))
                if seg is not None and seg.flags & RST:
                    out.resets.append(seg)
                elif seg is not None and seg.flags & (SYN | ACK) == SYN:
                    out.syn_seq.append(np.array([seg.seq], dtype=np.int64))
                    out.syn_key.append(np.array([conn_hash(*name_of(seg))], dtype=np.uint64))
            _syns(chunk, syn_rows, out)
            if not v.facts.own_macs:
                _count_macs(chunk, out.macs)
                out.frames += len(chunk.off) if chunk.link == LINK_ETHERNET else 0
    except NotACapture as exc:
        out.error = str(exc)
    return out


def extract_all(
    inputs: list[VantageInput], *, use_numba: bool | None = None, pool_map: Callable[..., Iterable[Any]] = map
) -> list[VantageData]:
    """Every vantage's reset-related segments. ``pool_map`` runs the per-file work (pass a
    thread pool's map to use several cores: the compiled walk releases the GIL)."""
    datas = [VantageData(v.name, v.role, v.status, v.error, v.kernel_drops, v.facts, probes=list(v.probes),
                         witness=v.witness, problems=list(v.problems), clock_offset_ns=v.clock_offset_ns,
                         logs=list(v.logs))
             for v in inputs]  # fmt: skip
    files = [(n, iface, fh) for n, v in enumerate(inputs) for iface, fh in v.captures]
    # Pass 1: the resets (and the host's own MAC, when no snapshot says it).
    firsts = list(pool_map(lambda f: _first_pass(inputs[f[0]], f[2], use_numba), files))
    keys: set[tuple[str, int, str, int]] = set()
    times: dict[int, list[int]] = {}
    macs: dict[int, tuple[Counter[int], int]] = {}
    for (n, iface, _fh), first in zip(files, firsts, strict=True):
        d, v = datas[n], inputs[n]
        if first.error:
            d.problems.append(f"{v.name}/{iface}: {first.error}")
            continue
        d.packets += first.stats.records
        for t in (first.first_ns, first.last_ns):
            if t is not None:
                t += v.clock_offset_ns
                d.first_ns = t if d.first_ns is None else min(d.first_ns, t)
                d.last_ns = t if d.last_ns is None else max(d.last_ns, t)
        d.problems += [f"{v.name}/{iface}: {p}" for p in first.stats.problems]
        for seg in first.resets:
            keys.add(flow_key(seg.src, seg.sport, seg.dst, seg.dport))
            times.setdefault(n, []).append(seg.ts_ns)
        count, frames = macs.setdefault(n, (Counter(), 0))
        count.update(first.macs)
        macs[n] = (count, frames + first.frames)
    majority = {n: _own_mac(count, frames) for n, (count, frames) in macs.items()}
    aliases = _aliases(keys, [f for f in firsts if f.error is None])
    hashes = np.array(sorted({conn_hash(*k) for k in keys} | aliases), dtype=np.uint64)
    # Pass 2: the segments of every connection that was reset anywhere; activity near resets.
    todo = [(f, first) for f, first in zip(files, firsts, strict=True) if first.error is None]
    seconds = list(pool_map(
        lambda job: _second_pass(inputs[job[0][0]], datas[job[0][0]], job[0][1], job[0][2], job[1].start, keys,
                                 aliases, hashes, sorted(times.get(job[0][0], [])), use_numba),
        todo,
    ))  # fmt: skip
    for ((n, _iface, _fh), _first), (segments, activity) in zip(todo, seconds, strict=True):
        d, v = datas[n], inputs[n]
        d.segments.extend(segments)
        for t, conns in activity.items():
            merged = d.activity.setdefault(t + v.clock_offset_ns, {})
            for k, last in conns.items():
                merged[k] = max(last, merged.get(k, -1))
    for n, (v, d) in enumerate(zip(inputs, datas, strict=True)):
        if not v.facts.own_macs:
            _infer_directions(v, d, majority.get(n, set()))
        d.segments.sort(key=lambda s: s.ts_ns)
    return datas


def _aliases(keys: set[tuple[str, int, str, int]], firsts: list[_FirstPass]) -> set[int]:
    """Hashes of the reset connections' other names: connections whose SYN carried the same initial
    sequence number as a reset connection's SYN (a NAT between two vantages renames it but keeps
    its ISN). Pass 2 collects them; the analysis then joins the names packet by packet."""
    if not firsts:
        return set()
    seqs = np.concatenate([a for f in firsts for a in f.syn_seq] or [np.zeros(0, dtype=np.int64)])
    hashes = np.concatenate([a for f in firsts for a in f.syn_key] or [np.zeros(0, dtype=np.uint64)])
    reset = np.array(sorted({conn_hash(*k) for k in keys}), dtype=np.uint64)
    isns = np.unique(seqs[np.isin(hashes, reset)])
    others = np.unique(hashes[np.isin(seqs, isns)])
    return {int(h) for h in others[~np.isin(others, reset)]}


def _second_pass(v: VantageInput, d: VantageData, iface: str, fh: BinaryIO, start: int,
                 keys: set[tuple[str, int, str, int]], aliases: set[int], hashes: np.ndarray, times: list[int],
                 use_numba: bool | None) -> tuple[list[Seen], dict[int, dict[int, int]]]:  # fmt: skip
    segments: list[Seen] = []
    activity: dict[int, dict[int, int]] = {t: {} for t in times}
    fh.seek(start)
    for chunk in scan(fh, ReadStats(), use_numba=use_numba):
        segments += _select(chunk, v, d, iface, keys, aliases, hashes)
        _activity(chunk, times, activity)
    return segments, activity


def _select(chunk: Chunk, v: VantageInput, d: VantageData, iface: str, keys: set[tuple[str, int, str, int]],
            aliases: set[int], hashes: np.ndarray) -> list[Seen]:  # fmt: skip
    out: list[Seen] = []
    if not len(hashes) and not (chunk.flags == -2).any():
        return out
    rows = np.flatnonzero(np.isin(chunk.key, hashes) | (chunk.flags == -2))
    for i in rows:
        seg = decode(chunk.record(int(i)))
        if seg is None or (flow_key(seg.src, seg.sport, seg.dst, seg.dport) not in keys
                           and int(chunk.key[i]) not in aliases):  # fmt: skip
            continue
        name = d.facts.if_names.get(seg.if_index, f"if{seg.if_index}") if seg.if_index is not None else iface
        out.append(Seen(v.name, name, seg.ts_ns + v.clock_offset_ns, direction(seg, d.facts), seg))
    return out


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
