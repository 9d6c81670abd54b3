"""Read pcap and pcapng from a binary file handle into records with integer-nanosecond times.

Streaming (memory does not grow with the file), tolerant: a truncated or corrupt tail ends the
read and is counted in ``ReadStats``, never raised. No IO beyond the handle it is given.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_MAX_RECORD = 1 << 24  # anything larger is corruption, not a packet


class _Corrupt(Exception):
    """A pcapng block that cannot be right: reading stops there."""


class NotACapture(ValueError):
    """The bytes are neither pcap nor pcapng (raised before any record)."""


@dataclass(slots=True)
class Record:
    ts_ns: int
    data: bytes
    link_type: int
    if_id: int = 0  # pcapng interface id; 0 for pcap


@dataclass
class ReadStats:
    records: int = 0
    truncated: int = 0  # a record cut short at the end of the file
    corrupt: int = 0  # an impossible header; reading stopped there
    format: str = ""
    link_types: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def is_capture(head: bytes) -> bool:
    """Whether a file's first four bytes open a pcap or pcapng file."""
    return head in PCAP_MAGIC or head == PCAPNG_SHB


def read_records(fh: BinaryIO, stats: ReadStats | None = None) -> Iterator[Record]:
    """Yield every record. Raises NotACapture if the first bytes are not a capture header."""
    stats = stats if stats is not None else ReadStats()
    head = fh.read(4)
    if head in PCAP_MAGIC:
        yield from _pcap(fh, head, stats)
    elif head == PCAPNG_SHB:
        yield from _pcapng(fh, head, stats)
    else:
        raise NotACapture(f"not a pcap or pcapng file (first bytes {head.hex() or 'none'})")


def pcap_header(fh: BinaryIO, magic: bytes, stats: ReadStats) -> tuple[str, int, int] | None:
    """After the magic: (struct endianness, ns per timestamp unit, link type), or None (cut short)."""
    endian, mult = PCAP_MAGIC[magic]
    stats.format = "pcap-ns" if mult == 1 else "pcap-us"
    rest = fh.read(20)
    if len(rest) < 20:
        stats.truncated += 1
        stats.problems.append("file header cut short")
        return None
    link = struct.unpack(endian + "HHiIII", rest)[5] & 0x0FFFFFFF
    stats.link_types.add(link)
    return endian, mult, link


def _pcap(fh: BinaryIO, magic: bytes, stats: ReadStats) -> Iterator[Record]:
    head = pcap_header(fh, magic, stats)
    if head is None:
        return
    endian, mult, link = head
    hdr = struct.Struct(endian + "IIII")
    read = fh.read
    while True:
        raw = read(16)
        if not raw:
            return
        if len(raw) < 16:
            stats.truncated += 1
            stats.problems.append("last record header cut short")
            return
        sec, frac, incl, _orig = hdr.unpack(raw)
        if incl > _MAX_RECORD or (mult == 1_000 and frac >= 1_000_000) or (mult == 1 and frac >= 1_000_000_000):
            stats.corrupt += 1
            stats.problems.append(f"corrupt record header after {stats.records} records")
            return
        data = read(incl)
        if len(data) < incl:
            stats.truncated += 1
            stats.problems.append("last record cut short")
            return
        stats.records += 1
        yield Record(sec * 1_000_000_000 + frac * mult, data, link)


def _pcapng(fh: BinaryIO, first: bytes, stats: ReadStats) -> Iterator[Record]:
    stats.format = "pcapng"
    endian = "<"
    interfaces: list[tuple[int, int, int]] = []  # (link type, timestamp units per second, offset s)
    tag: bytes | None = first
    while True:
        if tag is None:
            tag = fh.read(4)
            if not tag:
                return
        lenraw = fh.read(4)
        if len(tag) < 4 or len(lenraw) < 4:
            stats.truncated += 1
            stats.problems.append("last block header cut short")
            return
        if tag == PCAPNG_SHB:
            bom = fh.read(4)
            endian = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(bom, "")
            if not endian:
                stats.truncated += len(bom) < 4
                stats.corrupt += len(bom) == 4
                stats.problems.append("section header cut short or with a bad byte-order mark")
                return
            interfaces = []
            skip = struct.unpack(endian + "I", lenraw)[0] - 12
        else:
            btype = struct.unpack(endian + "I", tag)[0]
            total = struct.unpack(endian + "I", lenraw)[0]
            skip = -1 if total < 12 or total % 4 else 0
            if skip == 0:
                body = fh.read(total - 8) if total <= _MAX_RECORD else b""
                if total > _MAX_RECORD:
                    skip = -1
                elif len(body) < total - 8:
                    stats.truncated += 1
                    stats.problems.append("last block cut short")
                    return
            if skip == 0:
                try:
                    rec = _block(btype, body[:-4], endian, interfaces, stats)
                except _Corrupt:
                    return
                if rec is not None:
                    stats.records += 1
                    yield rec
        if skip < 0 or skip > _MAX_RECORD:
            stats.corrupt += 1
            stats.problems.append(f"corrupt block length after {stats.records} records")
            return
        if skip and len(fh.read(skip)) < skip:
            stats.truncated += 1
            stats.problems.append("section header cut short")
            return
        tag = None


def _block(
    btype: int, body: bytes, endian: str, interfaces: list[tuple[int, int, int]], stats: ReadStats
) -> Record | None:
    """One pcapng block: a Record, or None (not a packet). Raises _Corrupt (stop reading)."""
    if btype == 1:  # Interface Description Block
        if len(body) < 8:
            stats.corrupt += 1
            raise _Corrupt
        link = struct.unpack(endian + "H", body[:2])[0]
        units, offset = _idb_options(body[8:], endian)
        interfaces.append((link, units, offset))
        stats.link_types.add(link)
        return None
    if btype == 6:  # Enhanced Packet Block
        if len(body) < 20:
            stats.corrupt += 1
            raise _Corrupt
        if_id, hi, lo, caplen, _orig = struct.unpack(endian + "IIIII", body[:20])
        if if_id >= len(interfaces) or 20 + caplen > len(body):
            stats.corrupt += 1
            stats.problems.append("packet block names an unknown interface or overruns itself")
            raise _Corrupt
        link, units, offset = interfaces[if_id]
        return Record(_to_ns((hi << 32) | lo, units) + offset * 1_000_000_000, body[20 : 20 + caplen], link, if_id)
    if btype == 3 and interfaces:  # Simple Packet Block: no timestamp at all
        return Record(0, body[4:], interfaces[0][0], 0)
    return None


def _to_ns(ts: int, units: int) -> int:
    if units == 1_000_000_000:
        return ts
    return ts * 1_000_000_000 // units


def _idb_options(opts: bytes, endian: str) -> tuple[int, int]:
    units, offset, i = 1_000_000, 0, 0
    while i + 4 <= len(opts):
        code, length = struct.unpack(endian + "HH", opts[i : i + 4])
        value = opts[i + 4 : i + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:  # if_tsresol
            r = value[0]
            units = 2 ** (r & 0x7F) if r & 0x80 else 10 ** (r & 0x7F)
        elif code == 14 and length == 8:  # if_tsoffset, seconds
            offset = struct.unpack(endian + "q", value)[0]
        i += 4 + length + ((4 - length % 4) % 4)
    return units, offset
