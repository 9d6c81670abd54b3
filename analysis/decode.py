"""Link layer + IP + TCP decoding by hand: a record's bytes -> one ``Segment`` (or None).

Link types: Ethernet (with 802.1Q/ad tags), Linux cooked SLL and SLL2 (``tcpdump -i any``),
raw IP (101, 228, 229), BSD loopback (0, 108). SLL2 carries an interface *index* that means
something only on the capturing host: it is kept as a number, never resolved here.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass

from analysis.pcap import Record

LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_LOOP = 0, 1, 101, 108
LINK_SLL, LINK_IPV4, LINK_IPV6, LINK_SLL2 = 113, 228, 229, 276

# TCP flags
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# SLL packet types
PKT_HOST, PKT_BROADCAST, PKT_MULTICAST, PKT_OTHERHOST, PKT_OUTGOING = 0, 1, 2, 3, 4

_U16 = struct.Struct("!H")
_TCP = struct.Struct("!HHIIBBHHH")


@dataclass(slots=True)
class Segment:
    ts_ns: int
    src: str
    dst: str
    sport: int
    dport: int
    flags: int
    seq: int
    ack: int
    window: int
    ttl: int
    ip_id: int | None  # None for IPv6
    df: bool
    payload_len: int
    payload_crc: int  # CRC32 of the captured payload bytes (0 when none)
    src_mac: bytes | None = None
    dst_mac: bytes | None = None
    pkt_type: int | None = None  # SLL/SLL2 packet type
    if_index: int | None = None  # SLL2 interface index, on the capturing host

    @property
    def is_rst(self) -> bool:
        return bool(self.flags & RST)


def flag_text(flags: int) -> str:
    """tcpdump's spelling: S, F, R, P, '.' for ACK, U."""
    out = "".join(ch for bit, ch in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (URG, "U")) if flags & bit)
    return out + ("." if flags & ACK else "")


def decode(rec: Record) -> Segment | None:
    data, link = rec.data, rec.link_type
    src_mac = dst_mac = None
    pkt_type = if_index = None
    try:
        if link == LINK_ETHERNET:
            dst_mac, src_mac = data[0:6], data[6:12]
            ethertype, off = _U16.unpack_from(data, 12)[0], 14
            while ethertype in (0x8100, 0x88A8):
                ethertype, off = _U16.unpack_from(data, off + 2)[0], off + 4
        elif link == LINK_SLL:
            pkt_type = _U16.unpack_from(data, 0)[0]
            ethertype, off = _U16.unpack_from(data, 14)[0], 16
        elif link == LINK_SLL2:
            ethertype = _U16.unpack_from(data, 0)[0]
            if_index = struct.unpack_from("!I", data, 4)[0]
            pkt_type, off = data[10], 20
        elif link in (LINK_RAW, LINK_IPV4, LINK_IPV6):
            ethertype, off = (0x86DD if data and data[0] >> 4 == 6 else 0x0800), 0
        elif link in (LINK_NULL, LINK_LOOP):
            fam = struct.unpack_from("<I" if link == LINK_NULL else "!I", data, 0)[0]
            if fam > 0xFFFF:
                fam = struct.unpack_from("!I", data, 0)[0]
            ethertype, off = (0x0800 if fam == 2 else 0x86DD), 4
        else:
            return None
        if ethertype == 0x0800:
            return _ipv4(rec.ts_ns, data, off, src_mac, dst_mac, pkt_type, if_index)
        if ethertype == 0x86DD:
            return _ipv6(rec.ts_ns, data, off, src_mac, dst_mac, pkt_type, if_index)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _ipv4(
    ts: int, d: bytes, off: int, smac: bytes | None, dmac: bytes | None, ptype: int | None, ifx: int | None
) -> Segment | None:
    vihl = d[off]
    if vihl >> 4 != 4:
        return None
    ihl = (vihl & 0x0F) * 4
    total = _U16.unpack_from(d, off + 2)[0]
    ip_id = _U16.unpack_from(d, off + 4)[0]
    frag = _U16.unpack_from(d, off + 6)[0]
    if d[off + 9] != 6 or frag & 0x1FFF:  # not TCP, or a non-first fragment
        return None
    src = str(ipaddress.IPv4Address(d[off + 12 : off + 16]))
    dst = str(ipaddress.IPv4Address(d[off + 16 : off + 20]))
    end = min(len(d), off + total) if total else len(d)
    return _tcp(
        ts,
        d,
        off + ihl,
        end,
        src,
        dst,
        d[off + 8],
        ip_id,
        bool(frag & 0x4000),
        total - ihl if total else None,
        smac,
        dmac,
        ptype,
        ifx,
    )


def _ipv6(
    ts: int, d: bytes, off: int, smac: bytes | None, dmac: bytes | None, ptype: int | None, ifx: int | None
) -> Segment | None:
    if d[off] >> 4 != 6:
        return None
    plen = _U16.unpack_from(d, off + 4)[0]
    nxt, hlim = d[off + 6], d[off + 7]
    src = str(ipaddress.IPv6Address(d[off + 8 : off + 24]))
    dst = str(ipaddress.IPv6Address(d[off + 24 : off + 40]))
    p = off + 40
    end = min(len(d), p + plen)
    remaining = plen
    # Hop-by-hop, routing, destination options: skip to TCP. Fragments are not reassembled.
    while nxt in (0, 43, 60):
        hlen = (d[p + 1] + 1) * 8
        nxt, p, remaining = d[p], p + hlen, remaining - hlen
    if nxt != 6:
        return None
    return _tcp(ts, d, p, end, src, dst, hlim, None, True, remaining, smac, dmac, ptype, ifx)


def _tcp(
    ts: int,
    d: bytes,
    p: int,
    end: int,
    src: str,
    dst: str,
    ttl: int,
    ip_id: int | None,
    df: bool,
    l4_len: int | None,
    smac: bytes | None,
    dmac: bytes | None,
    ptype: int | None,
    ifx: int | None,
) -> Segment | None:
    sport, dport, seq, ack, offx, flags, win, _csum, _urg = _TCP.unpack_from(d, p)
    hlen = (offx >> 4) * 4
    if hlen < 20:
        return None
    payload = d[p + hlen : end]
    plen = (l4_len - hlen) if l4_len is not None else len(payload)
    return Segment(
        ts,
        src,
        dst,
        sport,
        dport,
        flags,
        seq,
        ack,
        win,
        ttl,
        ip_id,
        df,
        max(plen, 0),
        zlib.crc32(payload) if payload else 0,
        smac,
        dmac,
        ptype,
        ifx,
    )
