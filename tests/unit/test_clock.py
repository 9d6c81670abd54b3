"""Clock offsets from the packets: the minimum one-way-delay envelope, both ways."""

from __future__ import annotations

from collections.abc import Callable

from analysis.clock import ClockFn, apply, estimate
from analysis.decode import Segment
from analysis.model import ClockProbe, HostFacts, Seen, VantageData

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


def two_hosts(theta: Callable[[int], int], seconds: int = 60) -> tuple[VantageData, VantageData, list[int]]:
    """a and b exchange a segment each way every 100 ms for ``seconds``; b's clock reads
    true time + theta(true time). Returns the vantages and each b segment's true time."""
    a_rows, b_rows, truth = [], [], []
    for i in range(seconds * 10):
        t = T + i * 100_000_000
        d1, d2 = 30_000 + (i * 7919) % 60_000, 25_000 + (i * 104729) % 55_000
        a_rows.append((t, i, "out", "A", "B"))
        b_rows.append((t + d1 + theta(t + d1), i, "in", "A", "B"))
        truth.append(t + d1)
        t2 = t + 50_000_000
        b_rows.append((t2 + theta(t2), 10_000 + i, "out", "B", "A"))
        truth.append(t2)
        a_rows.append((t2 + d2, 10_000 + i, "in", "B", "A"))
    return vantage("a", a_rows), vantage("b", b_rows), truth


def aligned_errors(b: VantageData, truth: list[int]) -> list[int]:
    return [s.ts_ns - t for s, t in zip(sorted(b.segments, key=lambda s: s.seg.seq), _by_seq(truth), strict=True)]


def _by_seq(truth: list[int]) -> list[int]:
    # two_hosts appends (in, seq i) and (out, seq 10000 + i) alternately: reorder by seq.
    return truth[0::2] + truth[1::2]


def test_drift_is_estimated_and_followed() -> None:
    """50 ppm over a minute is 3 ms: a constant offset would be 1.5 ms wrong at the ends."""
    a, b, truth = two_hosts(lambda t: 2_500_000_000 + (t - T) * 50 // 1_000_000)
    clocks = estimate([a, b], reference="a")
    assert abs(clocks.drift_ppm["b"] - 50) < 1, clocks.drift_ppm
    assert not clocks.findings
    apply([a, b], clocks)
    errors = aligned_errors(b, truth)
    assert max(abs(e) for e in errors) <= 50_000, (min(errors), max(errors))


def test_clock_step_is_detected_and_aligned_piecewise() -> None:
    """b's clock jumps 200 ms forward half-way through (ntpd stepping it)."""
    half = T + 30 * 10**9
    a, b, truth = two_hosts(lambda t: 700_000_000 + (200_000_000 if t >= half else 0))
    clocks = estimate([a, b], reference="a")
    assert len(clocks.links[0].steps) == 1 and abs(clocks.links[0].steps[0].by_ns - 200_000_000) < 100_000
    assert any("stepped" in f for f in clocks.findings), clocks.findings
    apply([a, b], clocks)
    errors = aligned_errors(b, truth)
    # Away from the step's window (where it cannot be placed more precisely) every time is right.
    near = [e for e, t in zip(errors, _by_seq(truth), strict=True) if abs(t - half) < 8 * 10**9]
    far = [e for e, t in zip(errors, _by_seq(truth), strict=True) if abs(t - half) >= 8 * 10**9]
    assert max(abs(e) for e in far) <= 50_000
    assert len(near) < len(far)


def test_a_host_sharing_no_packet_falls_back_on_the_ssh_probe() -> None:
    a = vantage("a", [(T, 1, "out", "A", "B")])
    b = vantage("b", [(T + 50, 1, "in", "A", "B"), (T + 60, 2, "out", "B", "A")])
    a.segments.append(Seen("a", "eth0", T + 120, "in", seg(2, "B", "A")))
    c = vantage("c", [(T + 5_000_000_000, 9, "out", "C", "D")])
    a.probes = [ClockProbe("start", T, 1_000, 300_000), ClockProbe("end", T + 10**10, 1_000, 300_000)]
    c.probes = [ClockProbe("start", T, 3_200_000_000, 400_000), ClockProbe("end", T + 10**10, 3_200_000_000, 400_000)]
    clocks = estimate([a, b, c], reference="a")
    assert clocks.method == {"a": "reference", "b": "packets", "c": "probe"}
    assert abs(clocks.offset_ns["c"] + 3_199_999_000) <= 1_000 and clocks.uncertainty_ns["c"] == 700_000
    assert any(f.startswith("c's clock is 3.200 s ahead of the controller's") for f in clocks.findings)
    # 13.6 ms behind, +-13.9 ms: a slow probe (seen on 100 busy lab hosts sharing one clock), no finding.
    c.probes = [ClockProbe("start", T, -13_600_000, 13_900_000), ClockProbe("end", T + 10**10, -13_600_000, 13_900_000)]
    assert not any(f.startswith("c's clock") for f in estimate([a, b, c], reference="a").findings)
    c.probes = []
    assert estimate([a, b, c], reference="a").method["c"] == "none"


def test_aligned_times_stay_exact_nanoseconds() -> None:
    """A float near 1.8e18 holds only multiples of 256 ns: five consecutive timestamps of a
    drifting, offset host must stay five distinct, consecutive aligned times."""
    t = 1_795_000_000_123_456_789
    fn = ClockFn.line(t - 10**9, 1234.5, 5e-5)
    aligned = [fn.to_reference(t + k) for k in range(5)]
    assert [b - a for a, b in zip(aligned, aligned[1:], strict=False)] == [1, 1, 1, 1]
    assert abs(aligned[0] + fn.at(aligned[0]) - t) <= 1  # u + theta(u) = t
    back = fn.reversed()  # the same relation seen from the other clock: the exact inverse
    assert all(abs(back.to_reference(u) - (t + k)) <= 1 for k, u in enumerate(aligned))
