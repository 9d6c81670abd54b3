"""merged.pcapng: every capture of a run in one file for Wireshark and tshark, on the aligned clock.

One interface block per vantage and interface, named ``host/interface``, its link type and
snaplen kept, its description saying how its times were moved onto the reference clock (so the
original time is recoverable); every packet of every capture, its timestamp the aligned one (ns),
interleaved in aligned time order; a packet comment on every reset observation ("R1 first: ...",
"R2 propagated from R1"), which Wireshark finds with ``frame.comment``.

The merge reads the captures chunk by chunk (``analysis.scan``: memory stays flat whatever their
size) and takes, in each round, every chunk's records up to the earliest chunk end, sorted by
aligned time; the packet blocks are written by a compiled loop straight from the memory-mapped
captures. No IO but the handles it is given.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from analysis.clock import ClockFn
from analysis.decode import RST
from analysis.evidence import ChainRole, Origin
from analysis.pcap import PCAP_MAGIC, ReadStats
from analysis.scan import HAVE_NUMBA, Chunk, _compiled, scan
from analysis.verdict import Analysis

_SHB, _IDB, _EPB = 0x0A0D0D0A, 1, 6
_EPB_FIXED = 32  # type, length, interface, ts high, ts low, captured, original, trailing length
WRITE_SLICE = 1 << 20  # bytes per write()
SLICE_BYTES = 4 << 20  # output bytes per buffer
ROUND_RECORDS = 1 << 17  # records per merge round, all streams together


@dataclass
class Source:
    """One capture file of one vantage, opened by the caller."""

    vantage: str
    iface: str
    fh: BinaryIO


@dataclass
class Interface:
    name: str  # host/interface
    link: int
    description: str
    offset_ns: int  # aligned minus original, at the clocks' reference instant


@dataclass
class Merged:
    packets: int = 0
    comments: int = 0
    interfaces: list[Interface] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(kind: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", kind, n) + body + struct.pack("<I", n)


def _shb(app: str, comment: str) -> bytes:
    opts = _opt(4, app.encode()) + _opt(1, comment.encode()) + _opt(0, b"")
    return _block(_SHB, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opts)


def _idb(link: int, snaplen: int, name: str, description: str) -> bytes:
    opts = _opt(2, name.encode()) + _opt(3, description.encode()) + _opt(9, b"\x09") + _opt(0, b"")
    return _block(_IDB, struct.pack("<HHI", link, 0, snaplen) + opts)


def _to_reference(fn: ClockFn | None, t: np.ndarray) -> np.ndarray:
    """ClockFn.to_reference over an array, with the same integer arithmetic (np.rint and round()
    both round half to even)."""
    if fn is None:
        return t
    starts = np.array([np.iinfo(np.int64).min if p.start_ns is None else p.start_ns for p in fn.pieces], np.int64)
    anchors = np.array([p.anchor_ns for p in fn.pieces], np.int64)
    thetas = np.array([p.theta_ns for p in fn.pieces], np.float64)
    slopes = np.array([p.slope for p in fn.pieces], np.float64)
    # ClockFn.piece: the last piece whose start is at or before t (the first one when none is).
    order = np.argsort(starts[1:], kind="stable") + 1 if len(starts) > 1 else np.zeros(0, np.int64)

    def at(u: np.ndarray) -> np.ndarray:
        idx = np.zeros(len(u), np.int64)
        for i in order:  # pieces are few: one pass each, later starts win as in ClockFn.piece
            idx = np.where(starts[i] <= u, i, idx)
        off: np.ndarray = np.rint(thetas[idx] + slopes[idx] * (u - anchors[idx]).astype(np.float64)).astype(np.int64)
        return off

    u = t - at(t)
    u = t - at(u)
    aligned: np.ndarray = t - at(u)
    return aligned


# A record's bytes are copied with LLVM's memcpy: numba's slice assignment costs ~8x as much per
# packet (222 ns against 27 ns for ~330 bytes, measured), and the copy is most of the merge.
if HAVE_NUMBA:
    from llvmlite import ir  # type: ignore[import-untyped]
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def _memcpy(typingctx: Any, dst: Any, src: Any, n: Any) -> Any:
        sig = types.void(types.uintp, types.uintp, types.intp)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            d, s, k = args
            i8p = ir.IntType(8).as_pointer()
            cgutils.raw_memcpy(builder, builder.inttoptr(d, i8p), builder.inttoptr(s, i8p), k, 1)  # type: ignore[no-untyped-call]
            return context.get_dummy_value()

        return sig, codegen

    @_compiled
    def _copy(out: Any, q: int, b: Any, s: int, n: int) -> None:
        """out[q:q + n] = b[s:s + n] (the caller keeps both in bounds)."""
        _memcpy(out.ctypes.data + q, b.ctypes.data + s, n)  # type: ignore[call-arg]

else:  # pragma: no cover - without numba

    def _copy(out: Any, q: int, b: Any, s: int, n: int) -> None:
        out[q : q + n] = b[s : s + n]


@_compiled
def _put32(out: Any, q: int, w: Any) -> None:
    """w as 4 little-endian bytes at out[q]."""
    out[q] = w & 255
    out[q + 1] = (w >> 8) & 255
    out[q + 2] = (w >> 16) & 255
    out[q + 3] = (w >> 24) & 255


@_compiled
def _epbs(b: Any, big: bool, native: bool, out: Any, pos: Any, off: Any, incl: Any, ts: Any, ifid: int,
          cidx: Any, coff: Any, clen: Any, cbuf: Any) -> None:  # fmt: skip
    """Write one enhanced packet block per record at out[pos[i]]: the record's bytes at b[off[i]]
    (``native``: its pcap header's original length, 12 bytes before, is read; else the captured
    length is used), then its comment (``cidx[i]`` >= 0: cbuf[coff[c]:coff[c] + clen[c]])."""
    for i in range(pos.shape[0]):
        p, n, t = pos[i], incl[i], ts[i]
        orig = np.int64(n)
        if native:
            o = off[i] - 4
            if big:
                orig = np.int64((np.int64(b[o]) << 24) | (np.int64(b[o + 1]) << 16) | (np.int64(b[o + 2]) << 8)
                                | np.int64(b[o + 3]))  # fmt: skip
            else:
                orig = np.int64((np.int64(b[o + 3]) << 24) | (np.int64(b[o + 2]) << 16) | (np.int64(b[o + 1]) << 8)
                                | np.int64(b[o]))  # fmt: skip
        pad = (4 - n % 4) % 4
        c = cidx[i]
        copt = 0
        if c >= 0:
            copt = 4 + clen[c] + (4 - clen[c] % 4) % 4 + 4
        total = 32 + n + pad + copt
        _put32(out, p, 6)
        _put32(out, p + 4, total)
        _put32(out, p + 8, ifid)
        _put32(out, p + 12, t >> 32)
        _put32(out, p + 16, t & 0xFFFFFFFF)
        _put32(out, p + 20, n)
        _put32(out, p + 24, orig)
        q = p + 28
        _copy(out, q, b, off[i], n)
        q += n
        for k in range(pad):
            out[q + k] = 0
        q += pad
        if c >= 0:
            m = clen[c]
            _put32(out, q, 1 | (m << 16))  # opt_comment, its length
            q += 4
            _copy(out, q, cbuf, coff[c], m)
            q += m
            for k in range((4 - m % 4) % 4):
                out[q + k] = 0
            q += (4 - m % 4) % 4
            _put32(out, q, 0)  # opt_endofopt
            q += 4
        _put32(out, q, total)


def comments(a: Analysis) -> dict[tuple[str, str, int], str]:
    """(vantage, interface, original time ns) of every reset observation -> its comment."""
    out: dict[tuple[str, str, int], str] = {}
    for r in a.resets:
        if r.chain_role == ChainRole.PROPAGATED and r.propagated_from:
            role = f"{r.id} propagated from {r.propagated_from}"
        elif r is a.first:
            role = f"{r.id} first"
        else:
            role = f"{r.id} first of chain {r.chain}"
        claimed = a.world.claimed(r) if a.world else None
        if r.origin_kind == Origin.MIDDLEBOX and r.origin_host:
            name = f" in {claimed}'s name" if claimed and claimed != r.origin_host else ""
            who = f"forged by {r.origin_host}{name}"
        elif r.origin_kind == Origin.MIDDLEBOX:
            who = f"injected between {' and '.join(r.between or [])}"
        elif r.origin_kind == Origin.HOST:
            who = f"sent by {r.origin_host}'s own stack"
        else:
            who = "origin unknown"
        cause = f", cause {r.cause}" if str(r.cause) != "unknown" else ""
        for o in r.seen:
            where = "leaving" if o.direction == "out" else "arriving at"
            text = f"{role}: {who}{cause} (seen {where} {o.vantage}/{o.iface})"
            out.setdefault((o.vantage, o.iface, o.seg.ts_ns), text)
    return out


def _describe(a: Analysis, vantage: str) -> tuple[str, int]:
    clocks = a.clocks
    if clocks is None or clocks.reference is None:
        return "capture-all: times are this host's own clock (no alignment)", 0
    method = clocks.method.get(vantage, "none")
    if method == "reference":
        return f"capture-all: the reference clock ({vantage}'s own): times unchanged", 0
    if method == "none":
        return f"capture-all: not aligned to {clocks.reference}'s clock (nothing to align it by): times as captured", 0
    off = clocks.offset_ns.get(vantage, 0)
    drift = clocks.drift_ppm.get(vantage, 0.0)
    unc = clocks.uncertainty_ns.get(vantage, 0)
    text = (f"capture-all: aligned to {clocks.reference}'s clock by {method} (+-{unc / 1000:.1f} us): "
            f"time here = time captured {off:+d} ns")  # fmt: skip
    if drift:
        text += f" at {clocks.at_ns} ns since the epoch, drifting {drift:+.2f} ppm (report.json has the function)"
    return text, off


@dataclass
class _Stream:
    vantage: str
    name: str  # host/interface
    snaplen: int
    chunks: Iterator[Chunk]
    fn: ClockFn | None
    shift: int  # the vantage's manual offset (VantageInput.clock_offset_ns)
    native: bool  # a mapped classic pcap: the original length sits before each record
    big: bool
    targets: np.ndarray  # sorted original times of its reset observations
    texts: list[bytes]
    chunk: Chunk | None = None
    aligned: np.ndarray | None = None
    start: int = 0
    ifids: dict[int, int] = field(default_factory=dict)  # link type -> interface id

    def advance(self) -> bool:
        for c in self.chunks:
            if len(c.ts):
                self.chunk, self.start = c, 0
                self.aligned = _to_reference(self.fn, c.ts + self.shift)
                return True
        self.chunk = self.aligned = None
        return False


class _Writer:
    """Writes in a thread of its own while the next round is built (the compiled loop and the
    file write both release the GIL), from two buffers reused round after round (a fresh buffer
    each round would fault in every page again)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.bufs = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
        self.pending: list[Future[Any] | None] = [None, None]
        self.turn = 0

    def buffer(self, n: int) -> np.ndarray:
        k = self.turn
        if self.pending[k] is not None:
            self.pending[k].result()  # type: ignore[union-attr]
            self.pending[k] = None
        if len(self.bufs[k]) < n:
            self.bufs[k] = np.empty(max(n, 2 * len(self.bufs[k])), np.uint8)
        return self.bufs[k][:n]

    def send(self, data: np.ndarray | bytes) -> None:
        """Write ``data`` (the buffer just filled, or bytes) after everything sent before."""
        view = data.data if isinstance(data, np.ndarray) else data
        k = self.turn
        self.pending[k] = self.pool.submit(self._write, view)  # one thread: in the order sent
        self.turn = 1 - k

    def _write(self, view: Any) -> None:
        # In slices: one 25 MB write() took this machine's ext4 about 6x as long per byte as 1 MiB
        # writes did (measured: 1.9 GB in 5.7 s against 0.96 s).
        mv = memoryview(view)
        for i in range(0, len(mv), WRITE_SLICE):
            self.out.write(mv[i : i + WRITE_SLICE])

    def close(self) -> None:
        for f in self.pending:
            if f is not None:
                f.result()
        self.pool.shutdown()


def write(out: BinaryIO, sources: list[Source], a: Analysis, app: str, comment: str) -> Merged:
    """Write merged.pcapng to ``out``; what could not be read is in ``problems``."""
    w = _Writer(out)
    try:
        return _write(w, sources, a, app, comment)
    finally:
        w.close()


def _write(out: _Writer, sources: list[Source], a: Analysis, app: str, comment: str) -> Merged:
    result = Merged()
    notes = comments(a)
    offsets = {v.name: v.clock_offset_ns for v in a.vantages}
    out.send(_shb(app, comment))
    streams: list[_Stream] = []
    for s in sources:
        magic, link, snaplen = _header(s.fh)
        big = magic in PCAP_MAGIC and PCAP_MAGIC[magic][0] == ">"
        # The compiled walk reads classic pcap in place (each record's header before its bytes);
        # the Python path (pcapng, or no numba) hands over the records' bytes alone.
        native = magic in PCAP_MAGIC and HAVE_NUMBA
        mine = sorted((t, text) for (v, i, t), text in notes.items() if v == s.vantage and i == s.iface)
        fn = a.clocks.fn.get(s.vantage) if a.clocks and a.clocks.method.get(s.vantage) != "reference" else None
        st = _Stream(s.vantage, f"{s.vantage}/{s.iface}", snaplen, scan(s.fh, ReadStats(), keys=False), fn,
                     offsets.get(s.vantage, 0), native, big, np.array([t for t, _ in mine], np.int64),
                     [text.encode() for _, text in mine])  # fmt: skip
        if link is not None:  # every capture has its interface, one without packets too
            _interface(out, st, link, a, result)
        try:
            if st.advance():
                streams.append(st)
        except ValueError as exc:
            result.problems.append(f"{s.vantage}/{s.iface}: {exc}")
    while streams:
        # Every record up to the earliest chunk end can go now: nothing later in any file is
        # earlier. A round takes at most ROUND_RECORDS in all (its arrays stay small).
        cap = max(1024, ROUND_RECORDS // len(streams))
        ends = [min(st.start + cap, len(st.aligned)) for st in streams if st.aligned is not None]
        bound = min(int(st.aligned[j - 1]) for st, j in zip(streams, ends, strict=True) if st.aligned is not None)
        parts = []
        for st, j in zip(streams, ends, strict=True):
            assert st.chunk is not None and st.aligned is not None
            if int(st.aligned[j - 1]) == bound:
                stop = j  # the stream that sets the bound goes up to it: every round makes progress
            else:
                stop = int(np.searchsorted(st.aligned[st.start : j], bound, side="right")) + st.start
            if stop > st.start:
                parts.append((st, st.start, stop))
        _write_round(out, parts, a, result)
        for st, _start, stop in parts:
            st.start = stop
        kept = []
        for st in streams:
            assert st.chunk is not None
            if st.start < len(st.chunk.ts) or st.advance():
                kept.append(st)
        streams = kept
    return result


def _header(fh: BinaryIO) -> tuple[bytes, int | None, int]:
    """A capture's first four bytes, and for classic pcap its link type and snaplen (else None, 0);
    the handle is left at the start."""
    try:
        fh.seek(0)
        head = fh.read(24)
        fh.seek(0)
    except OSError:
        return b"", None, 0
    if len(head) == 24 and head[:4] in PCAP_MAGIC:
        snaplen, link = struct.unpack(PCAP_MAGIC[head[:4]][0] + "II", head[16:24])
        return head[:4], int(link) & 0xFFFF, int(snaplen)
    return head[:4], None, 0


def _interface(out: _Writer, st: _Stream, link: int, a: Analysis, result: Merged) -> None:
    """The stream's interface block for this link type, written before its first packet."""
    if link in st.ifids:
        return
    st.ifids[link] = len(result.interfaces)
    text, off = _describe(a, st.vantage)
    result.interfaces.append(Interface(st.name, link, text, off))
    out.send(_idb(link, st.snaplen, st.name, text))


def _write_round(out: _Writer, parts: list[tuple[_Stream, int, int]], a: Analysis, result: Merged) -> None:
    """One round's records from every stream, in aligned time order (ties: source order)."""
    if not parts:
        return
    for st, _s, _e in parts:
        assert st.chunk is not None
        _interface(out, st, st.chunk.link, a, result)
    ts = np.concatenate([st.aligned[s:e] for st, s, e in parts if st.aligned is not None])
    order = np.argsort(ts, kind="stable")
    # Each record's comment (if any): its original time among the stream's reset targets, and a RST.
    cidx_all = np.full(len(ts), -1, np.int64)
    texts: list[bytes] = []
    base = 0
    for st, s, e in parts:
        assert st.chunk is not None
        if len(st.targets):
            raw = st.chunk.ts[s:e]
            hit = np.searchsorted(st.targets, raw)
            hit_ok = (hit < len(st.targets)) & (st.targets[np.minimum(hit, len(st.targets) - 1)] == raw)
            hit_ok &= (st.chunk.flags[s:e] >= 0) & ((st.chunk.flags[s:e] & RST) != 0)
            for i in np.nonzero(hit_ok)[0]:
                cidx_all[base + i] = len(texts)
                texts.append(st.texts[int(hit[i])])
        base += e - s
    clen = np.array([len(t) for t in texts], np.int64)
    coff = np.concatenate([[0], np.cumsum(clen)[:-1]]).astype(np.int64) if texts else np.zeros(0, np.int64)
    cbuf = np.frombuffer(b"".join(texts), np.uint8) if texts else np.zeros(0, np.uint8)
    incl_all = np.concatenate([st.chunk.length[s:e] for st, s, e in parts if st.chunk is not None]).astype(np.int64)
    copt = np.zeros(len(ts), np.int64)
    if texts:
        m = clen[np.maximum(cidx_all, 0)]
        copt = np.where(cidx_all >= 0, 4 + m + (-m % 4) + 4, 0)
    size = _EPB_FIXED + incl_all + (-incl_all % 4) + copt
    offs_all = np.concatenate([st.chunk.off[s:e] for st, s, e in parts if st.chunk is not None]).astype(np.int64)
    which = np.concatenate([np.full(e - s, k, np.int64) for k, (_st, s, e) in enumerate(parts)])
    sorted_size = size[order]
    ends = np.cumsum(sorted_size)
    # The sorted records in slices of at most SLICE_BYTES of output (a hundred hosts' chunks in one
    # round would otherwise be one buffer of gigabytes); each slice is one buffer, one write.
    start = 0
    while start < len(order):
        before = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, before + SLICE_BYTES, side="right")))
        idx = order[start:stop]
        pos = ends[start:stop] - sorted_size[start:stop] - before  # where each goes in this slice
        buf = out.buffer(int(ends[stop - 1]) - before)
        w = which[idx]
        group = np.argsort(w, kind="stable")
        bounds = np.searchsorted(w[group], np.arange(len(parts) + 1))
        for k, (st, _s, _e) in enumerate(parts):
            if bounds[k] == bounds[k + 1]:
                continue
            assert st.chunk is not None
            mine = group[bounds[k] : bounds[k + 1]]
            rows = idx[mine]
            _epbs(st.chunk.buf, st.big, st.native, buf, pos[mine], offs_all[rows], incl_all[rows], ts[rows],
                  st.ifids[st.chunk.link], cidx_all[rows], coff, clen, cbuf)  # fmt: skip
        out.send(buf)
        start = stop
    result.packets += len(ts)
    result.comments += len(texts)
