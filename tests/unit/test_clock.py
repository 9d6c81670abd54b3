"""Clock offsets from the packets: the minimum one-way-delay envelope, both ways."""

from __future__ import annotations

from analysis.clock import estimate
from analysis.decode import Segment
from analysis.model import HostFacts, Seen, VantageData

T = 1_795_000_000 * 10**9


def seg(seq: int, src: str, dst: str) -> Segment:
    return Segment(0, src, dst, 1, 2, 0x10, seq, 0, 0, 64, seq & 0xFFFF, True, 0, 0)


def vantage(name: str, rows: list[tuple[int, int, str, str, str]]) -> VantageData:
    v = VantageData(name, "other", "ok", None, 0, HostFacts())
    v.segments = [Seen(name, "eth0", t, way, seg(seq, src, dst)) for t, seq, way, src, dst in rows]
    return v


def test_offsets_recovered_within_the_envelope() -> None:
    """a -> b takes 30..90 us, b -> a 25..80 us; b's clock is 2.5 s ahead, c's 700 ms behind b's."""
    a_rows, b_rows, c_rows = [], [], []
    for i in range(50):
        t = T + i * 10_000_000
        d1, d2 = 30_000 + (i * 7919) % 60_000, 25_000 + (i * 104729) % 55_000
        a_rows.append((t, i, "out", "A", "B"))
        b_rows.append((t + d1 + 2_500_000_000, i, "in", "A", "B"))
        b_rows.append((t + 5_000_000 + 2_500_000_000, 1000 + i, "out", "B", "A"))
        a_rows.append((t + 5_000_000 + d2, 1000 + i, "in", "B", "A"))
        b_rows.append((t + 7_000_000 + 2_500_000_000, 2000 + i, "out", "B", "C"))
        c_rows.append((t + 7_000_000 + d1 + 1_800_000_000, 2000 + i, "in", "B", "C"))
        c_rows.append((t + 8_000_000 + 1_800_000_000, 3000 + i, "out", "C", "B"))
        b_rows.append((t + 8_000_000 + d2 + 2_500_000_000, 3000 + i, "in", "C", "B"))
    clocks = estimate([vantage("a", a_rows), vantage("b", b_rows), vantage("c", c_rows)], reference="a")
    assert clocks.method == {"a": "reference", "b": "packets", "c": "packets"}
    # The truth: b is +2.5 s, c is +1.8 s against a; the estimate is off by half the difference of
    # the minimum delays each way (30 vs 25 us), well within its stated uncertainty.
    assert abs(clocks.offset_ns["b"] + 2_500_000_000) <= 5_000
    assert abs(clocks.offset_ns["c"] + 1_800_000_000) <= 10_000
    assert clocks.uncertainty_ns["b"] >= abs(clocks.offset_ns["b"] + 2_500_000_000)


def test_one_way_only_or_nothing_shared_is_not_aligned() -> None:
    a = vantage("a", [(T, 1, "out", "A", "B")])
    b = vantage("b", [(T + 50, 1, "in", "A", "B")])
    c = vantage("c", [(T, 9, "out", "C", "D")])
    clocks = estimate([a, b, c], reference="a")
    assert clocks.method["b"] == "none" and clocks.method["c"] == "none"
