"""merged.pcapng: every capture of a run in one file for Wireshark and tshark, on the aligned clock.

One interface block per vantage and interface, named ``host/interface``, its link type and
snaplen kept, its description saying how its times were moved onto the reference clock (so the
original time is recoverable); every packet of every capture, its timestamp the aligned one (ns),
interleaved in aligned time order; a packet comment on every reset observation ("R1 first: ...",
"R2 propagated from R1"), which Wireshark finds with ``frame.comment``.

The merge reads the captures chunk by chunk (``analysis.scan`` without looking into the packets:
memory stays flat whatever their size) and takes, in each round, every chunk's records up to the
earliest chunk end, sorted by aligned time; one compiled loop writes the round's packet blocks
straight from the memory-mapped captures into buffers that a thread of its own writes out (in
whole blocks past the page cache where the handle can). No IO but the handles it is given.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from analysis.clock import ClockFn
from analysis.decode import RST, decode
from analysis.evidence import ChainRole, Origin
from analysis.pcap import PCAP_MAGIC, ReadStats
from analysis.scan import HAVE_NUMBA, Chunk, _compiled, scan
from analysis.verdict import Analysis

_SHB, _IDB, _EPB = 0x0A0D0D0A, 1, 6
_EPB_FIXED = 32  # type, length, interface, ts high, ts low, captured, original, trailing length
WRITE_SLICE = 1 << 20  # bytes per write()
SLICE_BYTES = 4 << 20  # output bytes per buffer
BUFFERS = 4  # buffers filled while others are written (two stalled the merge on the disk's hiccups)
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


def _memmove(dst: int, src: int, n: int) -> None:
    """n bytes from address src to address dst, in Python (_memcpy without numba; a test runs
    _emit as Python with it)."""
    ctypes.memmove(int(dst), int(src), int(n))


# A record's bytes are copied with LLVM's memcpy between raw addresses: numba's slice assignment
# costs ~8x as much per packet (222 ns against 27 ns for ~330 bytes, measured), and addresses let
# one compiled call take records from every capture of a round (each its own buffer).
_memcpy: Any = _memmove
if HAVE_NUMBA:
    from llvmlite import ir  # type: ignore[import-untyped]
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def _memcpy_llvm(typingctx: Any, dst: Any, src: Any, n: Any) -> Any:
        sig = types.void(types.intp, types.intp, types.intp)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            d, s, k = args
            i8p = ir.IntType(8).as_pointer()
            cgutils.raw_memcpy(builder, builder.inttoptr(d, i8p), builder.inttoptr(s, i8p), k, 1)  # type: ignore[no-untyped-call]
            return context.get_dummy_value()

        return sig, codegen

    _memcpy = _memcpy_llvm


@_compiled
def _put32(out: Any, q: int, w: Any) -> None:
    """w as 4 little-endian bytes at out[q]."""
    out[q] = w & 255
    out[q + 1] = (w >> 8) & 255
    out[q + 2] = (w >> 16) & 255
    out[q + 3] = (w >> 24) & 255


@_compiled
def _emit(order: Any, j: int, ts: Any, off: Any, incl: Any, which: Any, bases: Any, big: Any, native: Any,
          ifid: Any, cidx: Any, coff: Any, clen: Any, cbuf: Any, out: Any, limit: int) -> tuple[int, int]:  # fmt: skip
    """Enhanced packet blocks from out[0] on for records order[j], order[j + 1], ... until the
    output reaches ``limit`` bytes or the order ends; returns (the next j, bytes written). Record
    i is ``incl[i]`` bytes at address ``bases[which[i]] + off[i]`` (a capture ``native[k]``: a
    mapped classic pcap, whose original length sits in the 4 bytes before, big-endian where
    ``big[k]``; else the captured length stands for it), then its comment where ``cidx[i]`` >= 0
    (cbuf[coff[c]:coff[c] + clen[c]]). ``out`` has room for one record past ``limit``."""
    q = 0
    dst = out.ctypes.data
    src_c = cbuf.ctypes.data
    while j < order.shape[0] and q < limit:
        i = order[j]
        j += 1
        k = which[i]
        n = incl[i]
        t = ts[i]
        c = cidx[i]
        pad = (4 - n % 4) % 4
        m = 0
        copt = 0
        if c >= 0:
            m = clen[c]
            copt = 4 + m + (4 - m % 4) % 4 + 4
        total = _EPB_FIXED + n + pad + copt
        _put32(out, q, _EPB)
        _put32(out, q + 4, total)
        _put32(out, q + 8, ifid[k])
        _put32(out, q + 12, t >> 32)
        _put32(out, q + 16, t & 0xFFFFFFFF)
        _put32(out, q + 20, n)
        src = bases[k] + off[i]
        if native[k]:
            _memcpy(dst + q + 24, src - 4, 4)
            if big[k]:
                b0, b1 = out[q + 24], out[q + 25]
                out[q + 24], out[q + 25] = out[q + 27], out[q + 26]
                out[q + 26], out[q + 27] = b1, b0
        else:
            _put32(out, q + 24, n)
        q += 28
        _memcpy(dst + q, src, n)
        q += n
        for x in range(pad):
            out[q + x] = 0
        q += pad
        if c >= 0:
            _put32(out, q, 1 | (m << 16))  # opt_comment, its length
            q += 4
            _memcpy(dst + q, src_c + coff[c], m)
            q += m
            for x in range((4 - m % 4) % 4):
                out[q + x] = 0
            q += (4 - m % 4) % 4
            _put32(out, q, 0)  # opt_endofopt
            q += 4
        _put32(out, q, total)
        q += 4
    return j, q


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


def _aligned(n: int) -> np.ndarray:
    """n bytes of page-aligned memory (as O_DIRECT wants it)."""
    mm = mmap.mmap(-1, max(n, mmap.PAGESIZE))
    if hasattr(mmap, "MADV_HUGEPAGE"):
        mm.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(mm, np.uint8)


class _Writer:
    """Buffers the output and writes it in a thread of its own while the next part is built (the
    compiled loop and the file write both release the GIL), from BUFFERS buffers reused turn by turn
    (a fresh buffer each time would fault in every page again). The output is built in place
    (``reserve``, ``commit``) and written once a buffer holds SLICE_BYTES. A handle with ``block``
    > 0 (orchestrator.evidence.DirectFile past the page cache) is given whole blocks from aligned
    memory through ``write_blocks``: the part of a buffer past its last whole block moves to the
    front of the next one, and only the end of the file goes through ``write``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.block = int(getattr(out, "block", 0))
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.bufs = [_aligned(0) for _ in range(BUFFERS)]
        self.pending: list[Future[Any] | None] = [None] * BUFFERS
        self.turn = 0
        self.fill = 0

    def _free(self, k: int) -> None:
        f = self.pending[k]
        if f is not None:
            self.pending[k] = None
            f.result()  # its write's error, if any, is raised here

    def reserve(self, n: int) -> np.ndarray:
        """Room for n bytes at the end of what is buffered; ``commit`` says how many were used."""
        k, need = self.turn, self.fill + n
        if len(self.bufs[k]) < need:
            grown = _aligned(max(need, 2 * len(self.bufs[k])))
            grown[: self.fill] = self.bufs[k][: self.fill]
            self.bufs[k] = grown
        return self.bufs[k][self.fill : need]

    def commit(self, used: int) -> None:
        self.fill += used
        if self.fill >= SLICE_BYTES:
            self.flush()

    def put(self, data: bytes) -> None:
        self.reserve(len(data))[:] = np.frombuffer(data, np.uint8)
        self.commit(len(data))

    def flush(self, last: bool = False) -> None:
        """Send the buffer to be written (``last``: all of it, the end of the file) and go on in
        the next one."""
        k, o = self.turn, (self.turn + 1) % len(self.bufs)
        buf = self.bufs[k]
        n = self.fill if last or not self.block else self.fill - self.fill % self.block
        tail = self.fill - n
        self._free(o)
        if len(self.bufs[o]) < tail:
            self.bufs[o] = _aligned(max(tail, len(self.bufs[k])))
        self.bufs[o][:tail] = buf[n : self.fill]
        self.pending[k] = self.pool.submit(self._write, buf[:n], last)  # one thread: in the order sent
        self.turn, self.fill = o, tail

    def _write(self, view: np.ndarray, last: bool) -> None:
        if self.block and not last:
            self.out.write_blocks(view)  # type: ignore[attr-defined]
            return
        # In slices: one 25 MB write() took this machine's ext4 about 6x as long per byte as 1 MiB
        # writes did (measured: 1.9 GB in 5.7 s against 0.96 s).
        mv = memoryview(view)  # type: ignore[arg-type]
        for i in range(0, len(mv), WRITE_SLICE):
            self.out.write(mv[i : i + WRITE_SLICE])

    def close(self, ok: bool) -> None:
        try:
            if ok:
                self.flush(last=True)
            for k in range(len(self.bufs)):
                self._free(k)
        finally:
            self.pool.shutdown()


def write(out: BinaryIO, sources: list[Source], a: Analysis, app: str, comment: str) -> Merged:
    """Write merged.pcapng to ``out``; what could not be read is in ``problems``."""
    w = _Writer(out)
    ok = False
    try:
        result = _write(w, sources, a, app, comment)
        ok = True
    finally:
        w.close(ok)
    return result


def _write(out: _Writer, sources: list[Source], a: Analysis, app: str, comment: str) -> Merged:
    result = Merged()
    notes = comments(a)
    offsets = {v.name: v.clock_offset_ns for v in a.vantages}
    out.put(_shb(app, comment))
    streams: list[_Stream] = []
    for s in sources:
        magic, link, snaplen = _header(s.fh)
        big = magic in PCAP_MAGIC and PCAP_MAGIC[magic][0] == ">"
        # The compiled walk reads classic pcap in place (each record's header before its bytes);
        # the Python path (pcapng, or no numba) hands over the records' bytes alone.
        native = magic in PCAP_MAGIC and HAVE_NUMBA
        mine = sorted((t, text) for (v, i, t), text in notes.items() if v == s.vantage and i == s.iface)
        fn = a.clocks.fn.get(s.vantage) if a.clocks and a.clocks.method.get(s.vantage) != "reference" else None
        st = _Stream(s.vantage, f"{s.vantage}/{s.iface}", snaplen, scan(s.fh, ReadStats(), keys=False, tcp=False), fn,
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
    out.put(_idb(link, st.snaplen, st.name, text))


def _is_rst(chunk: Chunk, i: int) -> bool:
    """Whether record i of the chunk is a TCP reset (the merge's scan does not look into packets:
    the few records at a reset's time are decoded here)."""
    f = int(chunk.flags[i])
    if f == -2:
        seg = decode(chunk.record(i))
        f = -1 if seg is None else seg.flags
    return f >= 0 and bool(f & RST)


def _write_round(out: _Writer, parts: list[tuple[_Stream, int, int]], a: Analysis, result: Merged) -> None:
    """One round's records from every stream, in aligned time order (ties: source order)."""
    if not parts:
        return
    chunks = [st.chunk for st, _s, _e in parts if st.chunk is not None]
    assert len(chunks) == len(parts)  # a stream in a round holds a chunk
    for (st, _s, _e), c in zip(parts, chunks, strict=True):
        _interface(out, st, c.link, a, result)
    ts = np.concatenate([st.aligned[s:e] for st, s, e in parts if st.aligned is not None])
    order = np.argsort(ts, kind="stable")
    # Each record's comment (if any): its original time among the stream's reset targets, and a RST.
    cidx_all = np.full(len(ts), -1, np.int64)
    texts: list[bytes] = []
    base = 0
    for (st, s, e), c in zip(parts, chunks, strict=True):
        if len(st.targets):
            raw = c.ts[s:e]
            hit = np.searchsorted(st.targets, raw)
            hit_ok = (hit < len(st.targets)) & (st.targets[np.minimum(hit, len(st.targets) - 1)] == raw)
            for i in np.nonzero(hit_ok)[0]:
                if _is_rst(c, s + int(i)):
                    cidx_all[base + i] = len(texts)
                    texts.append(st.texts[int(hit[i])])
        base += e - s
    clen = np.array([len(t) for t in texts], np.int64)
    coff = np.concatenate([[0], np.cumsum(clen)[:-1]]).astype(np.int64) if texts else np.zeros(0, np.int64)
    cbuf = np.frombuffer(b"".join(texts), np.uint8) if texts else np.zeros(1, np.uint8)
    incl = np.concatenate([c.length[s:e] for (_st, s, e), c in zip(parts, chunks, strict=True)]).astype(np.int64)
    off = np.concatenate([c.off[s:e] for (_st, s, e), c in zip(parts, chunks, strict=True)]).astype(np.int64)
    which = np.repeat(np.arange(len(parts), dtype=np.int64), [e - s for _st, s, e in parts])
    bases = np.array([c.buf.ctypes.data for c in chunks], np.int64)  # the chunks stay referenced meanwhile
    big = np.array([st.big for st, _s, _e in parts], np.bool_)
    native = np.array([st.native for st, _s, _e in parts], np.bool_)
    ifid = np.array([st.ifids[c.link] for (st, _s, _e), c in zip(parts, chunks, strict=True)], np.int64)
    room = _EPB_FIXED + 3 + int(incl.max()) + (int(clen.max()) + 11 if texts else 0)  # one record, padded, commented
    # In slices of about SLICE_BYTES of output (a hundred hosts' chunks in one round would
    # otherwise be one buffer of gigabytes); each slice is one buffer, one write.
    j = 0
    while j < len(order):
        buf = out.reserve(SLICE_BYTES + room)
        j, used = _emit(order, j, ts, off, incl, which, bases, big, native, ifid, cidx_all, coff, clen, cbuf, buf,
                        max(1, SLICE_BYTES - out.fill))  # fmt: skip
        out.commit(used)
    result.packets += len(ts)
    result.comments += len(texts)
