"""The columnar scanner: the compiled walk and the pure-Python walk agree, record by record."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.decode import ACK, PSH, RST, SYN
from analysis.pcap import NotACapture, ReadStats
from analysis.scan import HAVE_NUMBA, conn_hash, scan
from tests.pcapgen import ethernet, pcap, pcapng, sll, sll2, tcp_packet

T0 = 1_795_238_229_832_322_513


def mixed() -> list[tuple[int, bytes]]:
    out = []
    for i in range(50):
        out.append(
            (
                T0 + i,
                ethernet(
                    tcp_packet("10.0.0.1", "10.0.0.2", 1000 + i % 7, 443, PSH | ACK, payload=b"x" * (i % 13)),
                    vlan=5 if i % 3 == 0 else None,
                ),
            )
        )
        out.append((T0 + i + 1, ethernet(tcp_packet("2001:db8::2", "2001:db8::1", 443, 2000 + i % 5, RST | ACK))))
    out.append((T0 + 99, ethernet(b"\x45" + b"\x00" * 30)))  # not TCP, cut short
    return out


def columns(data: bytes, use_numba: bool) -> tuple[ReadStats, dict[str, np.ndarray]]:
    stats = ReadStats()
    chunks = list(scan(io.BytesIO(data), stats, use_numba=use_numba))
    names = ("ts", "flags", "key", "plen", "length")
    cols = {k: np.concatenate([getattr(c, k) for c in chunks]) if chunks else np.array([]) for k in names}
    return stats, cols


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is part of the test extras; this compares the two walks")
@pytest.mark.parametrize("linktype,wrap", [(1, None), (113, "sll"), (276, "sll2"), (101, "raw")])
def test_compiled_and_python_walks_agree(linktype: int, wrap: str | None) -> None:
    frames = mixed()
    if wrap is not None:
        frames = [(t, f[14:]) for t, f in frames]  # strip Ethernet (VLAN frames stay odd on purpose)
        frames = [(t, sll(f, 4) if wrap == "sll" else sll2(f, 0, 3) if wrap == "sll2" else f) for t, f in frames]
    data = pcap(frames, linktype=linktype)
    s1, fast = columns(data, True)
    s2, slow = columns(data, False)
    assert s1.records == s2.records == len(frames)
    for k in fast:
        assert np.array_equal(fast[k], slow[k]), k
    assert (fast["flags"] >= 0).sum() > 50


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is part of the test extras; the Python walk always decodes")
def test_the_walk_without_looking_into_packets_finds_the_same_records(tmp_path: Path) -> None:
    """tcp=False (merged.pcapng's scan): every record's time, place and length as the full walk
    has them, from a file (mapped) and from a stream; flags -2, nothing decoded."""
    path = tmp_path / "m.pcap"
    path.write_bytes(pcap(mixed()))
    for open_ in (lambda: path.open("rb"), lambda: io.BytesIO(path.read_bytes())):
        with open_() as fh:
            full = [(c.ts.copy(), c.off.copy(), c.length.copy()) for c in scan(fh, ReadStats())]
        with open_() as fh:
            lean = [(c.ts.copy(), c.off.copy(), c.length.copy(), c.flags.copy(), c.plen.copy())
                    for c in scan(fh, ReadStats(), tcp=False)]  # fmt: skip
        assert len(full) == len(lean) > 0
        for (ts, off, n), (ts2, off2, n2, flags, plen) in zip(full, lean, strict=True):
            assert np.array_equal(ts, ts2) and np.array_equal(off, off2) and np.array_equal(n, n2)
            assert (flags == -2).all() and (plen == 0).all()


def test_connection_hash_is_direction_free_and_matches_the_scanner() -> None:
    assert conn_hash("10.0.0.1", 1000, "10.0.0.2", 443) == conn_hash("10.0.0.2", 443, "10.0.0.1", 1000)
    assert conn_hash("10.0.0.1", 1000, "10.0.0.2", 443) != conn_hash("10.0.0.1", 1001, "10.0.0.2", 443)
    data = pcap([(T0, ethernet(tcp_packet("10.0.0.2", "10.0.0.1", 443, 1000, SYN)))])
    for use in (True, False):
        _, cols = columns(data, use)
        assert int(cols["key"][0]) == conn_hash("10.0.0.1", 1000, "10.0.0.2", 443)


def test_truncated_and_foreign_files() -> None:
    data = pcap(mixed())
    for use in (True, False):
        stats, cols = columns(data[:-7], use)
        assert stats.truncated == 1 and len(cols["ts"]) == len(mixed()) - 1
    with pytest.raises(NotACapture):
        list(scan(io.BytesIO(b"GIF89a..."), ReadStats()))
    _, cols = columns(pcapng(mixed()[:4]), True)  # pcapng: the Python walk
    assert len(cols["ts"]) == 4


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=24, max_value=4000), st.integers(min_value=0, max_value=255))
def test_mutated_pcap_never_crashes_either_walk(pos: int, value: int) -> None:
    data = bytearray(pcap(mixed()))
    data[pos % len(data)] = value
    for use in (True, False):
        columns(bytes(data), use)


def test_without_numba_the_sequence_keys_match_conn_hash_and_warn_of_nothing() -> None:
    """An install without the fast extra (pipx install capture-all) walks in numpy scalars: the
    same hashes as conn_hash, and no overflow warning from the hash's wrapping multiply."""
    code = """
import io, sys, warnings
sys.modules["numba"] = None  # as if not installed
warnings.simplefilter("error")
import numpy as np
from analysis.pcap import ReadStats
from analysis.scan import HAVE_NUMBA, conn_hash, scan, seq_keys
from tests.pcapgen import ethernet, pcap, tcp_packet
from analysis.decode import ACK, PSH
assert not HAVE_NUMBA
data = pcap([(1, ethernet(tcp_packet("10.0.0.1", "10.0.0.2", 40000, 443, PSH | ACK, seq=7, payload=b"x"))),
             (2, ethernet(tcp_packet("2001:db8::2", "2001:db8::1", 443, 2000, ACK, seq=9)))])
(chunk,) = scan(io.BytesIO(data), ReadStats())
seq, key, ok = seq_keys(chunk, np.arange(2))
assert ok.all() and list(seq) == [7, 9], (ok, seq)
assert int(key[0]) == conn_hash("10.0.0.2", 443, "10.0.0.1", 40000)
assert int(key[1]) == conn_hash("2001:db8::1", 2000, "2001:db8::2", 443)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr
