"""Columnar scan of a capture, chunk by chunk, so memory stays flat whatever the file's size.

Per record: time (int ns), TCP flags (-1: not TCP, -2: needs the full decoder), a 64-bit hash of
the direction-free connection, payload length, and where the record's bytes sit in the chunk.
Selected records are then decoded in full by ``analysis.decode``.

For classic pcap the per-record walk is compiled by numba when it is installed (the ``fast``
extra): ~100x the pure-Python walk, which is the fallback and gives identical columns (a test
checks). pcapng always takes the Python path.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import numpy as np

from analysis.decode import decode
from analysis.pcap import _MAX_RECORD, PCAP_MAGIC, PCAPNG_SHB, NotACapture, ReadStats, Record, read_records

CHUNK = 16 << 20
_FNV_OFFSET, _FNV_PRIME, _MASK = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1

F = TypeVar("F", bound=Callable[..., Any])

try:  # pragma: no cover - which branch runs depends on the install
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


def _compiled(f: F) -> F:
    """Compile ``f`` with numba when it is installed (cached on disk); else leave it Python."""
    return numba.njit(cache=True, nogil=True)(f) if HAVE_NUMBA else f  # type: ignore[return-value]


def conn_hash(a_ip: str, a_port: int, b_ip: str, b_port: int) -> int:
    """FNV-1a 64 over the canonical (lower endpoint first) 16-byte addresses and ports."""
    a = (ipaddress.ip_address(a_ip).packed.rjust(16, b"\0"), a_port)
    b = (ipaddress.ip_address(b_ip).packed.rjust(16, b"\0"), b_port)
    lo, hi = (a, b) if a <= b else (b, a)
    h = _FNV_OFFSET
    for byte in lo[0] + lo[1].to_bytes(2, "big") + hi[0] + hi[1].to_bytes(2, "big"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


@dataclass
class Chunk:
    buf: bytes
    link: int
    ts: np.ndarray
    flags: np.ndarray
    key: np.ndarray
    plen: np.ndarray
    off: np.ndarray
    length: np.ndarray

    def record(self, i: int) -> Record:
        o = int(self.off[i])
        return Record(int(self.ts[i]), self.buf[o : o + int(self.length[i])], self.link)


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
def _endpoint_less(b: Any, a_off: int, a_len: int, a_port: int, c_off: int, c_len: int, c_port: int) -> bool:
    # Compare 16-byte left-zero-padded addresses, then ports.
    for i in range(16):
        x = int(b[a_off + i - (16 - a_len)]) if i >= 16 - a_len else 0
        y = int(b[c_off + i - (16 - c_len)]) if i >= 16 - c_len else 0
        if x != y:
            return x < y
    return a_port <= c_port


@_compiled
def _fnv_endpoint(h: np.uint64, b: Any, off: int, alen: int, port: int) -> np.uint64:
    prime = np.uint64(0x100000001B3)
    for i in range(16):
        x = int(b[off + i - (16 - alen)]) if i >= 16 - alen else 0
        h = (h ^ np.uint64(x)) * prime
    h = (h ^ np.uint64(port >> 8)) * prime
    h = (h ^ np.uint64(port & 0xFF)) * prime
    return h


@_compiled
def _tcp(b: Any, d: int, end: int, link: int) -> tuple[int, np.uint64, int]:
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
    h = np.uint64(0xCBF29CE484222325)
    if _endpoint_less(b, src, alen, sport, dst, alen, dport):
        h = _fnv_endpoint(_fnv_endpoint(h, b, src, alen, sport), b, dst, alen, dport)
    else:
        h = _fnv_endpoint(_fnv_endpoint(h, b, dst, alen, dport), b, src, alen, sport)
    payload = l4 - thl if l4 > 0 else (end - t - thl)
    return int(b[t + 13]), h, max(payload, 0)


@_compiled
def _walk(b: Any, pos: int, end: int, big: bool, mult: int, link: int, ts: Any, flags: Any, keys: Any,
          plen: Any, offs: Any, lens: Any) -> tuple[int, int, int]:  # fmt: skip
    n, cap = 0, ts.shape[0]
    while n < cap and pos + 16 <= end:
        sec, frac, incl = _u32(b, pos, big), _u32(b, pos + 4, big), _u32(b, pos + 8, big)
        if incl > (1 << 24) or frac >= (1_000_000 if mult == 1000 else 1_000_000_000):
            return n, pos, 1
        d = pos + 16
        if d + incl > end:
            break
        ts[n] = sec * 1_000_000_000 + frac * mult
        f, k, p = _tcp(b, d, d + incl, link)
        flags[n], keys[n], plen[n], offs[n], lens[n] = f, k, p, d, incl
        n += 1
        pos = d + incl
    return n, pos, 0


# ---- drivers ---------------------------------------------------------------------------------
def scan(fh: BinaryIO, stats: ReadStats, *, use_numba: bool | None = None) -> Iterator[Chunk]:
    """Yield column chunks for every record of a seekable capture file.
    Raises NotACapture on a file of another kind."""
    start = fh.tell()
    head = fh.read(4)
    fast = HAVE_NUMBA if use_numba is None else (use_numba and HAVE_NUMBA)
    if head in PCAP_MAGIC and fast:
        yield from _scan_pcap(fh, head, stats)
    elif head in PCAP_MAGIC or head == PCAPNG_SHB:
        fh.seek(start)
        yield from _scan_python(fh, stats)
    else:
        raise NotACapture(f"not a pcap or pcapng file (first bytes {head.hex() or 'none'})")


def _columns(cap: int) -> tuple[np.ndarray, ...]:
    return (np.empty(cap, np.int64), np.empty(cap, np.int16), np.empty(cap, np.uint64), np.empty(cap, np.int32),
            np.empty(cap, np.int64), np.empty(cap, np.int32))  # fmt: skip


def _scan_python(fh: BinaryIO, stats: ReadStats) -> Iterator[Chunk]:
    batch = 65536
    recs: list[Record] = []

    def flush() -> Chunk:
        ts, flags, keys, plen, offs, lens = _columns(len(recs))
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
        return Chunk(b"".join(parts), link, ts, flags, keys, plen, offs, lens)

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


def _scan_pcap(fh: BinaryIO, magic: bytes, stats: ReadStats) -> Iterator[Chunk]:
    endian, mult = PCAP_MAGIC[magic]
    stats.format = "pcap-ns" if mult == 1 else "pcap-us"
    rest = fh.read(20)
    if len(rest) < 20:
        stats.truncated += 1
        stats.problems.append("file header cut short")
        return
    link = struct.unpack(endian + "HHiIII", rest)[5] & 0x0FFFFFFF
    stats.link_types.add(link)
    cols = _columns(CHUNK // 40 + 1)
    buf = b""
    eof = False
    while True:
        if not eof:
            data = fh.read(CHUNK)
            eof = not data
            buf = buf + data if buf else data
        arr = np.frombuffer(buf, dtype=np.uint8)
        n, pos, err = _walk(arr, 0, len(arr), endian == ">", mult, link, *cols)
        if n:
            stats.records += n
            yield Chunk(buf, link, *(c[:n].copy() for c in cols))
        if err:
            stats.corrupt += 1
            stats.problems.append(f"corrupt record header after {stats.records} records")
            return
        buf = buf[pos:]
        if eof and n == 0:
            if buf:
                stats.truncated += 1
                stats.problems.append("last record cut short" if len(buf) >= 16 else "last record header cut short")
            return
        if not eof and len(buf) > _MAX_RECORD + 16 + CHUNK:
            stats.corrupt += 1
            return
