"""merged.pcapng, read back by a pcapng reader of the test's own (not the writer's code): one
interface per host/interface, every packet on the aligned clock and in aligned order, a comment
on every reset observation, the bytes unchanged."""

from __future__ import annotations

import io
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis import merged, scan
from analysis.clock import ClockFn, Piece
from analysis.decode import ACK, PSH, RST, SYN
from analysis.extract import extract_all
from analysis.model import HostFacts, VantageInput
from analysis.verdict import analyze
from tests.pcapgen import ethernet, pcap, pcapng, shift_pcap, tcp_packet

C, P = "198.18.1.10", "198.18.2.10"
MAC_C, MAC_R, MAC_P = b"\x02\x00\x00\x00\x00\x0c", b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"
T = 1_795_000_000 * 10**9
PROXY_AHEAD_NS = 3_000_000  # the proxy's clock runs 3 ms ahead of the client's


@pytest.fixture(autouse=True)
def _closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every file a test opens through Path.open is closed after it."""
    opened: list[Any] = []
    real = Path.open

    def tracking(self: Path, *a: Any, **kw: Any) -> Any:
        fh = real(self, *a, **kw)
        opened.append(fh)
        return fh

    monkeypatch.setattr(Path, "open", tracking)
    yield
    for fh in opened:
        fh.close()


def read_pcapng(data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, bytes]]:
    """(interfaces, packets, section options) of a little-endian pcapng file."""

    def options(b: bytes) -> list[tuple[int, bytes]]:
        out, o = [], 0
        while o + 4 <= len(b):
            code, n = struct.unpack_from("<HH", b, o)
            if code == 0:
                break
            out.append((code, b[o + 4 : o + 4 + n]))
            o += 4 + n + (-n % 4)
        return out

    ifaces: list[dict[str, Any]] = []
    packets: list[dict[str, Any]] = []
    shb: dict[int, bytes] = {}
    o = 0
    while o < len(data):
        kind, length = struct.unpack_from("<II", data, o)
        assert struct.unpack_from("<I", data, o + length - 4)[0] == length  # trailing length
        body = data[o + 8 : o + length - 4]
        if kind == 0x0A0D0D0A:
            assert struct.unpack_from("<I", body)[0] == 0x1A2B3C4D
            shb = dict(options(body[16:]))
        elif kind == 1:
            link, _, snap = struct.unpack_from("<HHI", body)
            opts = dict(options(body[8:]))
            ifaces.append({"link": link, "snaplen": snap, "name": opts[2].decode(), "description": opts[3].decode(),
                           "tsresol": opts[9]})  # fmt: skip
        elif kind == 6:
            ifid, hi, lo, cap, orig = struct.unpack_from("<IIIII", body)
            opts = dict(options(body[20 + cap + (-cap % 4) :]))
            packets.append({"iface": ifaces[ifid]["name"], "ts": (hi << 32) | lo, "data": body[20 : 20 + cap],
                            "orig": orig, "comment": opts.get(1, b"").decode() or None})  # fmt: skip
        o += length
    return ifaces, packets, shb


def scenario() -> tuple[list[tuple[int, bytes, bool]], tuple[int, bytes, bool]]:
    """A connection client -> proxy:443 and a reset forged in the proxy's name (TTL 64 where the
    proxy's own arrive with 63), which the proxy never sent."""
    conn = [
        (T, tcp_packet(C, P, 40000, 443, SYN, seq=100), True),
        (T + 200_000, tcp_packet(P, C, 443, 40000, SYN | ACK, seq=500, ack=101), False),
        (T + 400_000, tcp_packet(C, P, 40000, 443, ACK, seq=101, ack=501), True),
        (T + 600_000, tcp_packet(C, P, 40000, 443, PSH | ACK, seq=101, ack=501, payload=b"GET /"), True),
        (T + 900_000, tcp_packet(P, C, 443, 40000, ACK, seq=501, ack=106), False),
    ]
    return conn, (T + 2_000_000, tcp_packet(P, C, 443, 40000, RST, seq=501, ttl=64, ip_id=0), False)


def inputs(tmp: Path) -> tuple[list[VantageInput], list[merged.Source], dict[str, list[bytes]]]:
    conn, rst = scenario()
    at_client = [(t + 100_000 * (not mine), ip if mine else _ttl(ip, 63), mine) for t, ip, mine in conn]
    at_client.append(rst)
    c_frames = [(t, ethernet(ip, src_mac=MAC_C if mine else MAC_R, dst_mac=MAC_R if mine else MAC_C))
                for t, ip, mine in at_client]  # fmt: skip
    p_frames = [(t + 100_000 * mine, ethernet(ip, src_mac=MAC_R if mine else MAC_P, dst_mac=MAC_P if mine else MAC_R))
                for t, ip, mine in conn]  # fmt: skip
    files = {"client": pcap(c_frames), "proxy": shift_pcap(pcap(p_frames), PROXY_AHEAD_NS)}
    for name, data in files.items():
        (tmp / f"{name}.pcap").write_bytes(data)
    vins = [
        VantageInput("client", "client", captures=[("eth1", (tmp / "client.pcap").open("rb"))],
                     facts=HostFacts(own_ips={C}, own_macs={MAC_C})),
        VantageInput("proxy", "proxy", captures=[("eth1", (tmp / "proxy.pcap").open("rb"))],
                     facts=HostFacts(own_ips={P}, own_macs={MAC_P})),
    ]  # fmt: skip
    sources = [merged.Source(v.name, "eth1", (tmp / f"{v.name}.pcap").open("rb")) for v in vins]
    return vins, sources, {"client/eth1": [f for _, f in c_frames], "proxy/eth1": [f for _, f in p_frames]}


def _ttl(ip: bytes, ttl: int) -> bytes:
    """The IPv4 packet with another TTL and its header checksum recomputed."""
    h = bytearray(ip[:20])
    h[8], h[10], h[11] = ttl, 0, 0
    s = sum(struct.unpack("!10H", bytes(h)))
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", h, 10, ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF)
    return bytes(h) + ip[20:]


def test_one_interface_per_host_the_aligned_clock_the_reset_commented(tmp_path: Path) -> None:
    vins, sources, frames = inputs(tmp_path)
    a = analyze(extract_all(vins))
    assert a.first is not None and a.first.origin_kind == "middlebox"
    out = io.BytesIO()
    info = merged.write(out, sources, a, "capture-all test", "merged for a test")
    ifaces, packets, shb = read_pcapng(out.getvalue())
    assert shb[4] == b"capture-all test" and shb[1] == b"merged for a test"
    assert [i["name"] for i in ifaces] == ["client/eth1", "proxy/eth1"]
    assert all(i["link"] == 1 and i["tsresol"] == b"\x09" and i["snaplen"] == 262144 for i in ifaces)
    assert len(packets) == info.packets == 11
    # Per interface: the captured bytes, in the captured order.
    for name, want in frames.items():
        assert [p["data"] for p in packets if p["iface"] == name] == want
        assert all(p["orig"] == len(p["data"]) for p in packets)
    # The aligned clock: every packet at the time the analysis gave it, and the file in that order.
    analysed = sorted((s.vantage + "/" + s.iface, s.ts_ns, bytes(s.seg.src, "ascii")) for v in a.vantages
                      for s in v.segments)  # fmt: skip
    assert sorted((p["iface"], p["ts"]) for p in packets) == sorted((n, t) for n, t, _ in analysed)
    times = [p["ts"] for p in packets]
    assert times == sorted(times)
    proxy = [p["ts"] for p in packets if p["iface"] == "proxy/eth1"]
    raw = [t + 100_000 * mine + PROXY_AHEAD_NS for t, _, mine in scenario()[0]]
    assert a.clocks is not None
    shift = a.clocks.offset_ns["proxy"]
    assert abs(shift + PROXY_AHEAD_NS) < 200_000  # the 3 ms were taken off (within the path's delay)
    assert [t - r for t, r in zip(proxy, raw, strict=True)] == [shift] * len(raw)
    assert f"time here = time captured {shift:+d} ns" in ifaces[1]["description"]
    assert "reference clock" in ifaces[0]["description"]
    # The one reset: one comment, on the RST, saying what the verdict says.
    commented = [p for p in packets if p["comment"]]
    assert len(commented) == info.comments == 1
    assert commented[0]["iface"] == "client/eth1" and commented[0]["data"] == frames["client/eth1"][-1]
    assert commented[0]["comment"] == (
        "R1 first: injected between client and proxy, cause middlebox (seen arriving at client/eth1)"
    )


def test_many_rounds_many_files_keep_every_packet_in_aligned_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three captures interleaved in time, read in small chunks and written in small slices (many
    merge rounds, chunk ends and slice ends everywhere), one of them pcapng (the Python path) and
    one microsecond pcap."""
    monkeypatch.setattr(scan, "CHUNK", 2048)
    monkeypatch.setattr(merged, "SLICE_BYTES", 3000)
    rng = random.Random(7)
    made: dict[str, list[tuple[int, bytes]]] = {}
    for k, name in enumerate(("a", "b", "c")):
        t, frames = T, []
        for i in range(300):
            t += rng.choice((1_000, 50_000, 3_000_000)) * (1000 if name == "b" else 1)
            ip = tcp_packet(C, P, 40000 + k, 443, ACK, seq=i, payload=b"x" * rng.randrange(0, 200))
            frames.append((t, ethernet(ip)))
        made[name] = frames
    (tmp_path / "a.pcap").write_bytes(pcap(made["a"]))
    (tmp_path / "b.pcap").write_bytes(pcap(made["b"], nano=False))
    (tmp_path / "c.pcapng").write_bytes(pcapng(made["c"]))
    a = analyze([])
    srcs = [merged.Source("a", "eth0", (tmp_path / "a.pcap").open("rb")),
            merged.Source("b", "eth0", (tmp_path / "b.pcap").open("rb")),
            merged.Source("c", "eth0", (tmp_path / "c.pcapng").open("rb"))]  # fmt: skip
    out = io.BytesIO()
    info = merged.write(out, srcs, a, "t", "t")
    _, packets, _ = read_pcapng(out.getvalue())
    assert info.packets == len(packets) == 900
    assert [p["ts"] for p in packets] == sorted(p["ts"] for p in packets)
    for name, frames in made.items():
        unit = 1000 if name != "a" else 1  # microsecond files keep microseconds
        assert [(p["ts"], p["data"]) for p in packets if p["iface"] == f"{name}/eth0"] == [
            (t // unit * unit, f) for t, f in frames
        ]


def _snapped_pcap(frames: list[tuple[int, bytes, int]], big: bool, nano: bool) -> bytes:
    """A classic pcap of (time ns, captured bytes, original length) in either byte order."""
    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 96, 1)]
    for t, data, orig in frames:
        frac = t % 10**9 if nano else t % 10**9 // 1000
        out.append(struct.pack(e + "IIII", t // 10**9, frac, len(data), orig) + data)
    return b"".join(out)


@pytest.mark.parametrize("walk", ["compiled", "python"])
def test_original_lengths_both_byte_orders_and_the_block_writer_give_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, walk: str
) -> None:
    """Records cut short by the snaplen keep their original length (little- and big-endian
    captures); the file written in whole blocks past the page cache (the part of a buffer past its
    last block carried into the next) is byte for byte the one written to a plain handle; the
    emitting loop as Python gives the same (``walk``)."""
    from orchestrator.evidence import DirectFile

    if walk == "python":
        monkeypatch.setattr(merged, "_emit", getattr(merged._emit, "py_func", merged._emit))
        monkeypatch.setattr(merged, "_memcpy", merged._memmove)
    monkeypatch.setattr(scan, "CHUNK", 4096)
    monkeypatch.setattr(merged, "SLICE_BYTES", 5000)  # slices, blocks and records end everywhere
    rng = random.Random(11)
    made: dict[str, list[tuple[int, bytes, int]]] = {}
    for k, name in enumerate(("le", "be")):
        t, frames = T + k * 700, []
        for i in range(120):
            t += rng.choice((1_000, 40_000, 2_000_000))
            data = ethernet(tcp_packet(C, P, 40000 + k, 443, ACK, seq=i, payload=b"y" * rng.randrange(0, 60)))
            frames.append((t // 1000 * 1000 if name == "be" else t, data, len(data) + rng.choice((0, 1, 3, 1400))))
        made[name] = frames
    (tmp_path / "le.pcap").write_bytes(_snapped_pcap(made["le"], big=False, nano=True))
    (tmp_path / "be.pcap").write_bytes(_snapped_pcap(made["be"], big=True, nano=False))

    def merge(out: Any) -> merged.Merged:
        srcs = [merged.Source(n, "eth0", (tmp_path / f"{n}.pcap").open("rb")) for n in ("le", "be")]
        return merged.write(out, srcs, analyze([]), "t", "t")

    plain = io.BytesIO()
    info = merge(plain)
    _, packets, _ = read_pcapng(plain.getvalue())
    assert info.packets == len(packets) == 240
    assert [p["ts"] for p in packets] == sorted(p["ts"] for p in packets)
    for name, frames in made.items():
        assert [(p["ts"], p["data"], p["orig"]) for p in packets if p["iface"] == f"{name}/eth0"] == frames
    for base in (tmp_path, Path("/dev/shm")):  # O_DIRECT where the filesystem takes it, plain on tmpfs
        path = base / f"capture-all-test-{os.getpid()}-{walk}.pcapng"
        try:
            with DirectFile(path) as out:
                merge(out)
            assert path.read_bytes() == plain.getvalue()
        finally:
            path.unlink(missing_ok=True)


def test_the_array_alignment_is_the_clock_functions_own() -> None:
    """merged._to_reference over an array gives ClockFn.to_reference exactly, across pieces."""
    fn = ClockFn((Piece(None, T, 1_234_567.25, 4.5e-5), Piece(T + 10**9, T + 10**9, -2_500_000.5, -3e-5),
                  Piece(T + 5 * 10**9, T + 6 * 10**9, 7_777.75, 0.0)))  # fmt: skip
    rng = random.Random(3)
    ts = [T + rng.randrange(-2 * 10**9, 8 * 10**9) for _ in range(5000)] + [T + 10**9, T + 5 * 10**9]
    got = merged._to_reference(fn, np.array(ts, np.int64))
    assert got.tolist() == [fn.to_reference(t) for t in ts]


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_the_merged_file_holds_exactly_what_was_written_past_the_page_cache_or_not(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the test's disk and on tmpfs (O_DIRECT or plain, whichever the filesystem takes), writes
    of every size, across buffer ends, and a tail that is no whole block."""
    from orchestrator.evidence import DirectFile

    monkeypatch.setattr(DirectFile, "CHUNK", 8192)
    base = tmp_path if where == "tmp" else Path("/dev/shm")
    path = base / f"capture-all-test-{os.getpid()}-{where}.pcapng"
    rng = random.Random(5)
    chunks = [bytes([k % 256]) * rng.choice((0, 1, 7, 4096, 8192, 9000, 30000)) for k in range(40)]
    try:
        with DirectFile(path) as out:
            for c in chunks:
                assert out.write(c) == len(c)
        assert path.read_bytes() == b"".join(chunks)
    finally:
        path.unlink(missing_ok=True)
