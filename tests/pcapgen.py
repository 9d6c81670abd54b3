"""Build small captures for tests with dpkt (an implementation independent of ours)."""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Callable
from decimal import Decimal

import dpkt


def tcp_packet(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int,
    *,
    seq: int = 1,
    ack: int = 0,
    ttl: int = 64,
    ip_id: int = 7,
    payload: bytes = b"",
    df: bool = True,
    win: int = 65535,
) -> bytes:
    """An IP packet (v4 or v6 by the address) carrying one TCP segment."""
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=win, data=payload)
    if ":" in src:
        ip6 = dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, src),
            dst=socket.inet_pton(socket.AF_INET6, dst),
            nxt=dpkt.ip.IP_PROTO_TCP,
            hlim=ttl,
            data=seg,
            plen=len(bytes(seg)),
        )
        return bytes(ip6)
    ip = dpkt.ip.IP(
        src=socket.inet_aton(src),
        dst=socket.inet_aton(dst),
        p=dpkt.ip.IP_PROTO_TCP,
        ttl=ttl,
        id=ip_id,
        df=int(df),
        data=seg,
    )
    ip.len = len(bytes(ip))
    return bytes(ip)


def ethernet(
    ip: bytes,
    src_mac: bytes = b"\x02\x00\x00\x00\x00\x01",
    dst_mac: bytes = b"\x02\x00\x00\x00\x00\x02",
    vlan: int | None = None,
) -> bytes:
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    if vlan is not None:
        return dst_mac + src_mac + struct.pack("!HHH", 0x8100, vlan, etype) + ip
    return dst_mac + src_mac + struct.pack("!H", etype) + ip


def sll(ip: bytes, pkt_type: int) -> bytes:
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", pkt_type, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", etype) + ip


def sll2(ip: bytes, pkt_type: int, if_index: int) -> bytes:
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", etype, 0, if_index, 1, pkt_type, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + ip


def pcap(frames: list[tuple[int, bytes]], linktype: int = dpkt.pcap.DLT_EN10MB, nano: bool = True) -> bytes:
    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf, linktype=linktype, nano=nano, snaplen=262144)
    for ts_ns, frame in frames:
        w.writepkt(frame, ts=Decimal(ts_ns) / Decimal(10**9))
    return buf.getvalue()


def pcapng(frames: list[tuple[int, bytes]], linktype: int = dpkt.pcap.DLT_EN10MB) -> bytes:
    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf, linktype=linktype)  # microsecond resolution (if_tsresol default)
    for ts_ns, frame in frames:
        w.writepkt(frame, ts=ts_ns / 1e9)
    return buf.getvalue()


def shift_pcap(data: bytes, shift_ns: int, ppm: float = 0.0, since_ns: int = 0,
               keep: Callable[[int, bytes], bool] | None = None) -> bytes:  # fmt: skip
    """The same classic pcap (nanosecond or microsecond) with every timestamp t moved by
    shift_ns + ppm * (t - since_ns) / 1e6 (a clock off by shift_ns at since_ns, drifting), and
    only the records ``keep(t, frame)`` accepts, when given."""
    import struct as _s

    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    unit = 1 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1000
    out, off = bytearray(data[:24]), 24
    while off + 16 <= len(data):
        sec, frac, incl, orig = _s.unpack_from(endian + "IIII", data, off)
        t0 = sec * 10**9 + frac * unit
        t = t0 + shift_ns + round(ppm * (t0 - since_ns) / 1e6)
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if keep is not None and not keep(t0, frame):
            continue
        out += _s.pack(endian + "IIII", t // 10**9, (t % 10**9) // unit, incl, orig)
        out += frame
    return bytes(out)
