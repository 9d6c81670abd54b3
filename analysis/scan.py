"""Columnar scan of a capture, chunk by chunk, so memory stays flat whatever the file's size.

Per record: time (int ns), TCP flags (-1: not TCP, -2: needs the full decoder), a 64-bit hash of
the direction-free connection, payload length, and where the record's bytes sit in the chunk.
Selected records are then decoded in full by ``analysis.decode``.

For classic pcap the per-record walk is compiled by numba when it is installed (the ``fast``
extra): ~100x the pure-Python walk, which is the fallback and gives identical columns (a test
checks). pcapng always takes the Python path.
"""

from __future__ import annotations

import io
import ipaddress
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import numpy as np

from analysis.decode import decode
from analysis.pcap import _MAX_RECORD, PCAP_MAGIC, PCAPNG_SHB, NotACapture, ReadStats, Record, pcap_header, read_records

CHUNK = 16 << 20
_AHEAD = 2048  # bytes the walk reads ahead of itself (see _walk)
_MASK = (1 << 64) - 1
_MUL = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: a multiplicative mix

F = TypeVar("F", bound=Callable[..., Any])

try:  # pragma: no cover - which branch runs depends on the install
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


def _compiled(f: F) -> F:
    """Compile ``f`` with numba when it is installed (cached on disk); else leave it Python."""
    return numba.njit(cache=True, nogil=True)(f) if HAVE_NUMBA else f  # type: ignore[return-value]


def _mix(h: int, x: int) -> int:
    h = ((h ^ x) * _MUL) & _MASK
    return h ^ (h >> 29)


def conn_hash(a_ip: str, a_port: int, b_ip: str, b_port: int) -> int:
    """64-bit hash of the direction-free connection: each endpoint is its 16-byte address
    (IPv4 left-padded with zeros) as two big-endian words and its port; lower endpoint first."""
    ends = []
    for ip, port in ((a_ip, a_port), (b_ip, b_port)):
        raw = ipaddress.ip_address(ip).packed.rjust(16, b"\0")
        ends.append((int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big"), port))
    lo, hi = sorted(ends)
    h = 0
    for x in (*lo, *hi):
        h = _mix(h, x)
    return h


@dataclass
class Chunk:
    buf: np.ndarray  # uint8
    link: int
    ts: np.ndarray
    flags: np.ndarray
    key: np.ndarray
    plen: np.ndarray
    off: np.ndarray
    length: np.ndarray

    def record(self, i: int) -> Record:
        o = int(self.off[i])
        return Record(int(self.ts[i]), self.buf[o : o + int(self.length[i])].tobytes(), self.link)


# ---- the compiled walk ------------------------------------------------------------------------
@_compiled
def _u16(b: Any, o: int) -> int:
    return (int(b[o]) << 8) | int(b[o + 1])


@_compiled
def _u32(b: Any, o: int, big: bool) -> int:
    if big:
        return (int(b[o]) << 24) | (int(b[o + 1]) << 16) | (int(b[o + 2]) << 8) | int(b[o + 3])
    return (int(b[o + 3]) << 24) | (int(b[o + 2]) << 16) | (int(b[o + 1]) << 8) | int(b[o])


@_compiled
def _word(b: Any, o: int, n: int) -> np.uint64:
    """Big-endian unsigned value of n (<= 8) bytes."""
    v = np.uint64(0)
    for i in range(n):
        v = (v << np.uint64(8)) | np.uint64(b[o + i])
    return v


@_compiled
def _cmix(h: np.uint64, x: np.uint64) -> np.uint64:
    h = (h ^ x) * np.uint64(0x9E3779B97F4A7C15)
    return h ^ (h >> np.uint64(29))


@_compiled
def _key(b: Any, src: int, dst: int, alen: int, sport: int, dport: int) -> np.uint64:
    """The same value as conn_hash(): 16-byte addresses as (high, low) words, then the port."""
    z = np.uint64(0)
    if alen == 4:
        s_hi, s_lo, d_hi, d_lo = z, _word(b, src, 4), z, _word(b, dst, 4)
    else:
        s_hi, s_lo, d_hi, d_lo = _word(b, src, 8), _word(b, src + 8, 8), _word(b, dst, 8), _word(b, dst + 8, 8)
    sp, dp = np.uint64(sport), np.uint64(dport)
    swap = s_hi > d_hi or (s_hi == d_hi and (s_lo > d_lo or (s_lo == d_lo and sp > dp)))
    if swap:
        s_hi, s_lo, sp, d_hi, d_lo, dp = d_hi, d_lo, dp, s_hi, s_lo, sp
    h = _cmix(_cmix(_cmix(z, s_hi), s_lo), sp)
    return _cmix(_cmix(_cmix(h, d_hi), d_lo), dp)


@_compiled
def _l4(b: Any, d: int, end: int, link: int) -> tuple[int, int, int, int, int]:
    """Where a record's TCP header starts (-1: not TCP, -2: the full decoder is needed), then the
    source and destination address offsets, the address length and the IP payload length.

    The same header walk as ``_tcp``, which keeps its own copy: calling this from the walk's hot
    path made the walk 20% slower (0.136 s -> 0.168 s over a 2M-packet bench file)."""
    if link == 1:  # Ethernet, with VLAN tags
        if d + 14 > end:
            return -1, 0, 0, 0, 0
        et, p = _u16(b, d + 12), d + 14
        while et == 0x8100 or et == 0x88A8:
            if p + 4 > end:
                return -1, 0, 0, 0, 0
            et, p = _u16(b, p + 2), p + 4
    elif link == 113:  # SLL
        if d + 16 > end:
            return -1, 0, 0, 0, 0
        et, p = _u16(b, d + 14), d + 16
    elif link == 276:  # SLL2
        if d + 20 > end:
            return -1, 0, 0, 0, 0
        et, p = _u16(b, d), d + 20
    elif link == 101 or link == 228 or link == 229:
        if d >= end:
            return -1, 0, 0, 0, 0
        et, p = (0x86DD if (int(b[d]) >> 4) == 6 else 0x0800), d
    else:
        return -2, 0, 0, 0, 0
    if et == 0x0800:
        if p + 20 > end or (int(b[p]) >> 4) != 4:
            return -1, 0, 0, 0, 0
        ihl = (int(b[p]) & 0x0F) * 4
        total = _u16(b, p + 2)
        if int(b[p + 9]) != 6 or (_u16(b, p + 6) & 0x1FFF) != 0:
            return -1, 0, 0, 0, 0
        t = p + ihl
        if ihl < 20 or t + 14 > end:
            return -2, 0, 0, 0, 0
        return t, p + 12, p + 16, 4, total - ihl
    if et == 0x86DD:
        if p + 40 > end or (int(b[p]) >> 4) != 6:
            return -1, 0, 0, 0, 0
        nxt = int(b[p + 6])
        if nxt != 6:
            return (-2 if nxt == 0 or nxt == 43 or nxt == 60 else -1), 0, 0, 0, 0
        t = p + 40
        if t + 14 > end:
            return -2, 0, 0, 0, 0
        return t, p + 8, p + 24, 16, _u16(b, p + 4)
    return -1, 0, 0, 0, 0


@_compiled
def _tcp(b: Any, d: int, end: int, link: int, want_key: bool) -> tuple[int, np.uint64, int]:
    """(flags | -1 not TCP | -2 full decoder needed, connection hash, payload length)."""
    zero = np.uint64(0)
    if link == 1:  # Ethernet, with VLAN tags
        if d + 14 > end:
            return -1, zero, 0
        et, p = _u16(b, d + 12), d + 14
        while et == 0x8100 or et == 0x88A8:
            if p + 4 > end:
                return -1, zero, 0
            et, p = _u16(b, p + 2), p + 4
    elif link == 113:  # SLL
        if d + 16 > end:
            return -1, zero, 0
        et, p = _u16(b, d + 14), d + 16
    elif link == 276:  # SLL2
        if d + 20 > end:
            return -1, zero, 0
        et, p = _u16(b, d), d + 20
    elif link == 101 or link == 228 or link == 229:
        if d >= end:
            return -1, zero, 0
        et, p = (0x86DD if (int(b[d]) >> 4) == 6 else 0x0800), d
    else:
        return -2, zero, 0
    if et == 0x0800:
        if p + 20 > end or (int(b[p]) >> 4) != 4:
            return -1, zero, 0
        ihl = (int(b[p]) & 0x0F) * 4
        total = _u16(b, p + 2)
        if int(b[p + 9]) != 6 or (_u16(b, p + 6) & 0x1FFF) != 0:
            return -1, zero, 0
        t = p + ihl
        if ihl < 20 or t + 14 > end:
            return -2, zero, 0
        src, dst, alen, l4 = p + 12, p + 16, 4, total - ihl
    elif et == 0x86DD:
        if p + 40 > end or (int(b[p]) >> 4) != 6:
            return -1, zero, 0
        nxt = int(b[p + 6])
        if nxt != 6:
            return (-2 if nxt == 0 or nxt == 43 or nxt == 60 else -1), zero, 0
        t = p + 40
        if t + 14 > end:
            return -2, zero, 0
        src, dst, alen, l4 = p + 8, p + 24, 16, _u16(b, p + 4)
    else:
        return -1, zero, 0
    sport, dport = _u16(b, t), _u16(b, t + 2)
    thl = (int(b[t + 12]) >> 4) * 4
    if thl < 20:
        return -1, zero, 0
    h = _key(b, src, dst, alen, sport, dport) if want_key else zero
    payload = l4 - thl if l4 > 0 else (end - t - thl)
    return int(b[t + 13]), h, max(payload, 0)


@_compiled
def _walk(b: Any, pos: int, end: int, big: bool, mult: int, link: int, want_tcp: bool, want_key: bool, ts: Any,
          flags: Any, keys: Any, plen: Any, offs: Any, lens: Any, sink: Any) -> tuple[int, int, int]:  # fmt: skip
    """Records from ``pos`` while they fit before ``end``: (records, next position, 1 if a
    header was impossible). Without ``want_tcp`` the packets are not looked into (flags -2,
    payload length and key 0).

    Each record's position comes from the header before it, a chain of dependent loads the CPU
    cannot run ahead of: walked alone, every record waits for a full memory latency. So the
    loop also reads one byte of every cache line up to _AHEAD bytes in front of it; those loads
    do not depend on each other, they overlap, and the headers are in cache when the chain
    reaches them (the walk of a benchmark file: 0.14 s -> 0.024 s). ``sink`` keeps the
    compiler from dropping them."""
    n, cap = 0, ts.shape[0]
    ahead, touched = pos, 0
    while n < cap and pos + 16 <= end:
        limit = min(pos + _AHEAD, end)
        while ahead < limit:
            touched += b[ahead]
            ahead += 64
        sec, frac, incl = _u32(b, pos, big), _u32(b, pos + 4, big), _u32(b, pos + 8, big)
        if incl > (1 << 24) or frac >= (1_000_000 if mult == 1000 else 1_000_000_000):
            sink[0] = touched
            return n, pos, 1
        d = pos + 16
        if d + incl > end:
            break
        ts[n] = sec * 1_000_000_000 + frac * mult
        if want_tcp:
            f, k, p = _tcp(b, d, d + incl, link, want_key)
            flags[n], keys[n], plen[n] = f, k, p
        else:
            flags[n], keys[n], plen[n] = -2, 0, 0
        offs[n], lens[n] = d, incl
        n += 1
        pos = d + incl
    sink[0] = touched
    return n, pos, 0


@_compiled
def _seq_keys(b: Any, link: int, offs: Any, lens: Any, rows: Any, seq: Any, key: Any, ok: Any) -> None:
    """For the given rows: the TCP sequence number and the connection hash (``ok`` False where
    the full decoder is needed)."""
    for i in range(rows.shape[0]):
        d = offs[rows[i]]
        t, src, dst, alen, _ = _l4(b, d, d + lens[rows[i]], link)
        ok[i] = t >= 0
        if t >= 0:
            seq[i] = _u32(b, t + 4, True)
            key[i] = _key(b, src, dst, alen, _u16(b, t), _u16(b, t + 2))


def seq_keys(chunk: Chunk, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequence numbers, connection hashes, ok) of some rows of a chunk, without decoding them."""
    seq = np.zeros(len(rows), dtype=np.int64)
    key = np.zeros(len(rows), dtype=np.uint64)
    ok = np.zeros(len(rows), dtype=np.bool_)
    if len(rows):
        # The hash's multiply wraps modulo 2^64 on purpose; compiled, numba wraps silently, while
        # numpy's scalars (no numba: an install without the fast extra) warn of an overflow.
        with np.errstate(over="ignore"):
            _seq_keys(chunk.buf, chunk.link, chunk.off, chunk.length, rows.astype(np.int64), seq, key, ok)
    return seq, key, ok


# ---- drivers ---------------------------------------------------------------------------------
def scan(fh: BinaryIO, stats: ReadStats, *, use_numba: bool | None = None, keys: bool = True,
         tcp: bool = True) -> Iterator[Chunk]:  # fmt: skip
    """Yield column chunks for every record of a seekable capture file (``keys=False``: the
    connection hashes are left at 0, which is cheaper; ``tcp=False``: the records' times and
    places only, flags -2 for classic pcap, as if each needed the full decoder). Raises
    NotACapture on another kind."""
    start = fh.tell()
    head = fh.read(4)
    fast = HAVE_NUMBA if use_numba is None else (use_numba and HAVE_NUMBA)
    if head in PCAP_MAGIC and fast:
        yield from _scan_pcap(fh, head, stats, tcp, keys and tcp)
    elif head in PCAP_MAGIC or head == PCAPNG_SHB:
        fh.seek(start)
        yield from _scan_python(fh, stats)
    else:
        raise NotACapture(f"not a pcap or pcapng file (first bytes {head.hex() or 'none'})")


def _columns(cap: int) -> tuple[np.ndarray, ...]:
    return (np.empty(cap, np.int64), np.empty(cap, np.int16), np.empty(cap, np.uint64), np.empty(cap, np.int32),
            np.empty(cap, np.int64), np.empty(cap, np.int32), np.zeros(1, np.int64))  # fmt: skip


def _scan_python(fh: BinaryIO, stats: ReadStats) -> Iterator[Chunk]:
    batch = 65536
    recs: list[Record] = []

    def flush() -> Chunk:
        ts, flags, keys, plen, offs, lens, _sink = _columns(len(recs))
        parts, pos = [], 0
        for i, rec in enumerate(recs):
            seg = decode(rec)
            ts[i], offs[i], lens[i] = rec.ts_ns, pos, len(rec.data)
            if seg is None:
                flags[i], keys[i], plen[i] = -1, 0, 0
            else:
                flags[i], plen[i] = seg.flags, seg.payload_len
                keys[i] = conn_hash(seg.src, seg.sport, seg.dst, seg.dport)
            parts.append(rec.data)
            pos += len(rec.data)
        link = recs[0].link_type if recs else 1
        return Chunk(np.frombuffer(b"".join(parts), dtype=np.uint8), link, ts, flags, keys, plen, offs, lens)

    for rec in read_records(fh, stats):
        if recs and rec.link_type != recs[0].link_type:
            yield flush()
            recs = []
        recs.append(rec)
        if len(recs) >= batch:
            yield flush()
            recs = []
    if recs:
        yield flush()


def _scan_pcap(fh: BinaryIO, magic: bytes, stats: ReadStats, want_tcp: bool, want_key: bool) -> Iterator[Chunk]:
    head = pcap_header(fh, magic, stats)
    if head is None:
        return
    endian, mult, link = head
    try:
        fd = fh.fileno()
        here = fh.tell()
        size = fh.seek(0, io.SEEK_END)
        fh.seek(here)
    except (AttributeError, OSError, io.UnsupportedOperation):
        yield from _stream(fh, stats, want_tcp, want_key, endian == ">", mult, link)
        return
    yield from _mapped(fd, fh.tell(), size, stats, want_tcp, want_key, endian == ">", mult, link)


def _mapped(fd: int, pos: int, size: int, stats: ReadStats, want_tcp: bool, want_key: bool, big: bool, mult: int,
            link: int) -> Iterator[Chunk]:  # fmt: skip
    """Walk a file through a read-only memory map, window by window, releasing the pages behind
    the cursor (MADV_DONTNEED) so memory stays flat. Chunk arrays are views valid until the next
    chunk; the map goes away with its last view."""
    cols = _columns(CHUNK // 40 + 1)
    mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    buf = np.frombuffer(mm, dtype=np.uint8)
    released = 0
    while pos < size:
        end = min(size, pos + CHUNK)
        n, new_pos, err = _walk(buf, pos, end, big, mult, link, want_tcp, want_key, *cols)
        if n == 0 and not err and end < size:  # one record larger than a window
            end = min(size, pos + _MAX_RECORD + 16)
            n, new_pos, err = _walk(buf, pos, end, big, mult, link, want_tcp, want_key, *cols)
        if n:
            stats.records += n
            yield Chunk(buf, link, *(c[:n] for c in cols[:6]))
        if err:
            stats.corrupt += 1
            stats.problems.append(f"corrupt record header after {stats.records} records")
            return
        if n == 0:
            stats.truncated += 1
            stats.problems.append("last record cut short" if size - pos >= 16 else "last record header cut short")
            return
        pos = new_pos
        page = (pos // mmap.PAGESIZE) * mmap.PAGESIZE
        if page > released:
            mm.madvise(mmap.MADV_DONTNEED, released, page - released)
            released = page


def _stream(fh: BinaryIO, stats: ReadStats, want_tcp: bool, want_key: bool, big: bool, mult: int,
            link: int) -> Iterator[Chunk]:  # fmt: skip
    """The same walk over a handle without a file behind it: one reused buffer, readinto."""
    cols = _columns(CHUNK // 40 + 1)
    buf = np.empty(CHUNK + _MAX_RECORD + 16, dtype=np.uint8)
    view = memoryview(buf)  # type: ignore[arg-type]
    filled, eof = 0, False
    while True:
        if not eof:
            got = fh.readinto(view[filled : filled + CHUNK])  # type: ignore[attr-defined]
            eof = not got
            filled += got or 0
        n, pos, err = _walk(buf, 0, filled, big, mult, link, want_tcp, want_key, *cols)
        if n:
            stats.records += n
            yield Chunk(buf, link, *(c[:n] for c in cols[:6]))
        if err:
            stats.corrupt += 1
            stats.problems.append(f"corrupt record header after {stats.records} records")
            return
        leftover = filled - pos
        buf[:leftover] = buf[pos:filled]
        filled = leftover
        if eof and n == 0:
            if filled:
                stats.truncated += 1
                stats.problems.append("last record cut short" if filled >= 16 else "last record header cut short")
            return
