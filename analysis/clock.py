"""Put every vantage on one clock: from the packets themselves, else from the SSH probe.

A segment seen leaving vantage A at a_t (A's clock) and arriving at vantage B at b_t (B's clock)
took a one-way delay d >= 0. With theta = (B's clock - A's clock):

    b_t - a_t = d + theta  >=  theta      so  theta <= min over A->B samples of (b_t - a_t) = U
    a_t - b_t = d' - theta >= -theta      so  theta >= -min over B->A samples of (a_t - b_t) = L

With samples both ways, theta = (L + U) / 2 within +-(U - L) / 2: the minimum-delay envelope of
Paxson, "On Calibrating Measurements of Packet Transit Times" (SIGMETRICS 1998). Over a long
capture theta moves: the samples are cut into time windows, each window gives its own envelope,
and a line through the windows' estimates is the drift (kept when it bounds theta tighter than
the best constant does). Where no line fits (a window's estimate off the line by more
than its uncertainty) the clock stepped or changed its rate (NTP): the fit is split there, and
the report says so. Pairwise estimates are chained along the vantage graph by least total
uncertainty from a reference vantage; a proxy's two legs share its clock, so the graph connects
through it. A vantage sharing no packet both ways with another falls back on the SSH probe
(each host's clock against the controller's at the start and end of the run); with neither,
it is left unaligned and the report says so.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from analysis.decode import RST
from analysis.model import ClockProbe, Seen, VantageData

WINDOWS = 8  # at most this many windows per pair of vantages
MIN_WINDOW_NS = 250_000_000  # and none shorter: a drift needs time to show
STEP_TOLERANCE_NS = 20_000  # a window may sit this far off the fit beyond its own uncertainty
FINDING_NS = 10_000_000  # a host clock this far off the controller's is a finding in itself


# ---- offset as a function of time ----------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    start_ns: int | None  # None: from the beginning of time
    anchor_ns: int
    theta_ns: float  # value at anchor_ns
    slope: float  # ns per ns (50 ppm = 5e-5)


@dataclass(frozen=True)
class ClockFn:
    """theta(t), piecewise linear: one piece per stretch between clock steps."""

    pieces: tuple[Piece, ...]

    @staticmethod
    def constant(theta: float) -> ClockFn:
        return ClockFn((Piece(None, 0, theta, 0.0),))

    @staticmethod
    def line(anchor: int, theta: float, slope: float) -> ClockFn:
        """theta + slope * (t - anchor); ``anchor`` an integer time, so that no float ever holds
        an absolute time."""
        return ClockFn((Piece(None, anchor, theta, slope),))

    def piece(self, t: int) -> Piece:
        found = self.pieces[0]
        for p in self.pieces[1:]:
            if p.start_ns is not None and p.start_ns <= t:
                found = p
        return found

    def at(self, t: int) -> float:
        p = self.piece(t)
        return p.theta_ns + p.slope * (t - p.anchor_ns)

    def reversed(self) -> ClockFn:
        """theta is b's clock minus a's as a function of a's time: the same relation seen from b,
        a's clock minus b's as a function of b's time (exact for each linear piece)."""
        out = []
        for p in self.pieces:
            start = None if p.start_ns is None else p.start_ns + round(self.at(p.start_ns))
            out.append(Piece(start, p.anchor_ns + round(p.theta_ns), -p.theta_ns, -p.slope / (1 + p.slope)))
        return ClockFn(tuple(out))

    def then(self, other: ClockFn) -> ClockFn:
        """Chain: self is B's clock minus A's (A's time), other C's minus B's (B's time); the result
        is C's minus A's, as a function of A's time: self(t) + other(t + self(t))."""
        starts = {p.start_ns for p in self.pieces if p.start_ns is not None}
        for q in other.pieces:
            if q.start_ns is not None:  # where t + self(t) reaches q's start
                x = q.start_ns - round(self.at(q.start_ns))
                starts.add(q.start_ns - round(self.at(x)))
        points = [(None, self.pieces[0].anchor_ns)] + [(s, s) for s in sorted(starts)]
        out = []
        for start, x in points:
            moved = x + round(self.at(x))
            s1 = self.piece(x).slope
            out.append(Piece(start, x, self.at(x) + other.at(moved), s1 + other.piece(moved).slope * (1 + s1)))
        return ClockFn(tuple(out))

    def to_reference(self, t: int) -> int:
        """A time read on the clock this function describes, on the reference clock: solves
        t = u + theta(u) for u (two fixed-point steps: exact to slope^2 * theta). Integer
        nanoseconds throughout: only the small offset is ever a float (a float near 1.8e18 holds
        only multiples of 256 ns)."""
        u = t - round(self.at(t))
        u = t - round(self.at(u))
        return t - round(self.at(u))


@dataclass
class Step:
    """The clock changed between two windows (a step, or a change of rate)."""

    after_ns: int  # last good estimate before, on the earlier vantage's clock
    before_ns: int  # first estimate after
    by_ns: int  # how far theta moved beyond the fitted drift


@dataclass
class Link:
    a: str
    b: str
    fn: ClockFn  # b's clock minus a's, as a function of a's time
    half_width_ns: int
    samples_ab: int
    samples_ba: int
    steps: list[Step] = field(default_factory=list)


@dataclass
class Clocks:
    reference: str | None
    offset_ns: dict[str, int] = field(default_factory=dict)  # add to a vantage's times (at at_ns)
    uncertainty_ns: dict[str, int] = field(default_factory=dict)
    method: dict[str, str] = field(default_factory=dict)  # reference | packets | probe | none
    links: list[Link] = field(default_factory=list)
    fn: dict[str, ClockFn] = field(default_factory=dict)  # vantage clock minus reference clock
    drift_ppm: dict[str, float] = field(default_factory=dict)
    at_ns: int = 0  # the (reference) time offset_ns is quoted at: the first reset, if any
    findings: list[str] = field(default_factory=list)


# ---- pairwise estimates ------------------------------------------------------------------------------
def _identity(s: Seen) -> tuple[int, int, int, int, int, int | None]:
    g = s.seg
    return (g.seq, g.ack, g.flags & 0x3F, g.payload_len, g.payload_crc, g.ip_id)


Sample = tuple[int, int]  # (time on a's clock, b_t - a_t) for one segment seen at both a and b


def _directed(vantages: list[VantageData]) -> dict[tuple[str, str], tuple[list[Sample], list[Sample]]]:
    """Per pair (a, b), a < b: segments a -> b (b_t - a_t = delay + theta: upper bounds on
    theta) and b -> a (b_t - a_t = theta - delay: lower bounds), both as (a_t, b_t - a_t)."""
    by_id: dict[tuple[int, int, int, int, int, int | None], list[Seen]] = {}
    for v in vantages:
        for s in v.segments:
            by_id.setdefault(_identity(s), []).append(s)
    out: dict[tuple[str, str], tuple[list[Sample], list[Sample]]] = {}
    for seen in by_id.values():
        outs = [s for s in seen if s.direction == "out"]
        ins = [s for s in seen if s.direction == "in"]
        if not outs or not ins or len(seen) > 16:  # a retransmitted or repeated segment: ambiguous
            continue
        for o in outs:
            for i in ins:
                if o.vantage == i.vantage:
                    continue
                if o.vantage < i.vantage:
                    out.setdefault((o.vantage, i.vantage), ([], []))[0].append((o.ts_ns, i.ts_ns - o.ts_ns))
                else:
                    out.setdefault((i.vantage, o.vantage), ([], []))[1].append((i.ts_ns, o.ts_ns - i.ts_ns))
    return out


@dataclass
class _Window:
    t: int
    theta: float
    hw: float


def _envelope(fwd: list[Sample], bwd: list[Sample]) -> _Window:
    """theta within [max of the lower bounds, min of the upper bounds]."""
    u = min(fwd, key=lambda s: s[1])
    low = max(bwd, key=lambda s: s[1])
    theta = (u[1] + low[1]) / 2
    return _Window((u[0] + low[0]) // 2, theta, abs(u[1] - low[1]) / 2)


def _fit(ws: list[_Window]) -> tuple[ClockFn, float, bool]:
    """theta(t) from the windows' estimates: (fn, half-width, whether a line fits them all).

    Each window's interval holds the truth at its own time, so a fit's honest half-width is its
    worst distance to a window's estimate plus that window's own. The line (weighted by
    1/uncertainty^2) is the drift; it is kept when it is tighter than the best constant. One
    window: the constant envelope over its samples."""
    if len(ws) == 1:
        return ClockFn.constant(ws[0].theta), ws[0].hw, True
    wt = [1.0 / (w.hw + 1_000.0) ** 2 for w in ws]
    t0 = ws[0].t  # times relative to an integer origin: no float holds an absolute time
    tm = t0 + round(sum(x * (w.t - t0) for x, w in zip(wt, ws, strict=True)) / sum(wt))
    ym = sum(x * w.theta for x, w in zip(wt, ws, strict=True)) / sum(wt)
    sxx = sum(x * (w.t - tm) ** 2 for x, w in zip(wt, ws, strict=True))
    slope = sum(x * (w.t - tm) * (w.theta - ym) for x, w in zip(wt, ws, strict=True)) / sxx if sxx else 0.0
    line = ClockFn.line(tm, ym, slope)
    resid = [abs(w.theta - line.at(w.t)) for w in ws]
    ok = all(r <= w.hw + STEP_TOLERANCE_NS for r, w in zip(resid, ws, strict=True))
    hw_line = max(w.hw + r for r, w in zip(resid, ws, strict=True))
    hw_flat = max(w.hw + abs(w.theta - ym) for w in ws)
    if hw_line + 1_000 < hw_flat:
        return line, hw_line, ok
    return ClockFn.constant(ym), hw_flat, ok


def _segments(ws: list[_Window]) -> list[list[_Window]]:
    """Split where no single line fits: at the largest jump between neighbouring windows."""
    _, _, ok = _fit(ws)
    if ok or len(ws) < 2:
        return [ws]
    k = max(range(len(ws) - 1), key=lambda i: abs(ws[i + 1].theta - ws[i].theta) - ws[i].hw - ws[i + 1].hw)
    return _segments(ws[: k + 1]) + _segments(ws[k + 1 :])


def _link(a: str, b: str, fwd: list[Sample], bwd: list[Sample]) -> Link:
    """One pair's theta(t) from its upper (fwd) and lower (bwd) bounds: windows, fit, steps."""
    times = sorted(t for t, _ in fwd + bwd)
    span = times[-1] - times[0]
    n = max(1, min(WINDOWS, span // MIN_WINDOW_NS))
    windows = []
    slots: list[tuple[list[Sample], list[Sample]]] = [([], []) for _ in range(n)]
    for side, samples in ((0, fwd), (1, bwd)):
        for smp in samples:
            slots[min(n - 1, (smp[0] - times[0]) * n // span) if span else 0][side].append(smp)
    for f, g in slots:
        if f and g:
            windows.append(_envelope(f, g))
    if not windows:  # both ways, but never in the same window: one envelope over everything
        windows = [_envelope(fwd, bwd)]
    parts = _segments(windows)
    fits = [_fit(p) for p in parts]
    pieces: list[Piece] = []
    steps = []
    for i, (p, (fn, _hw, _ok)) in enumerate(zip(parts, fits, strict=True)):
        start = None if i == 0 else (parts[i - 1][-1].t + p[0].t) // 2
        piece = fn.pieces[0]
        pieces.append(Piece(start, piece.anchor_ns, piece.theta_ns, piece.slope))
        if i:
            prev = fits[i - 1][0]
            steps.append(Step(parts[i - 1][-1].t, p[0].t, round(fn.at(p[0].t) - prev.at(p[0].t))))
    return Link(a, b, ClockFn(tuple(pieces)), round(max(hw for _, hw, _ in fits)), len(fwd), len(bwd), steps)


def links(vantages: list[VantageData]) -> list[Link]:
    """Pairwise offset estimates from segments seen leaving one vantage and arriving at another."""
    return [_link(a, b, fwd, bwd) for (a, b), (fwd, bwd) in sorted(_directed(vantages).items()) if fwd and bwd]


# ---- one reference clock -------------------------------------------------------------------------
def probe_fn(probes: list[ClockProbe]) -> tuple[ClockFn, int] | None:
    """The host's clock minus the controller's from its SSH probes (a line through the start and
    end probes, so a drifting clock is followed), and the worst bound."""
    if not probes:
        return None
    ps = sorted(probes, key=lambda p: p.at_ns)
    bound = max(p.bound_ns for p in ps)
    a, b = ps[0], ps[-1]
    if b.at_ns - a.at_ns < MIN_WINDOW_NS or abs(b.offset_ns - a.offset_ns) <= a.bound_ns + b.bound_ns:
        # No drift beyond the probes' own noise: a line through two noisy points would invent one.
        return ClockFn.constant(sum(p.offset_ns for p in ps) / len(ps)), bound
    return ClockFn.line(a.at_ns, a.offset_ns, (b.offset_ns - a.offset_ns) / (b.at_ns - a.at_ns)), bound


def _at(vantages: list[VantageData]) -> int:
    resets = [s.ts_ns for v in vantages for s in v.segments if s.seg.flags & RST]
    if resets:
        return min(resets)
    times = sorted(s.ts_ns for v in vantages for s in v.segments)
    return times[len(times) // 2] if times else 0


def _span(ns: float) -> str:
    ns = abs(ns)
    if ns >= 1e9:
        return f"{ns / 1e9:.3f} s"
    return f"{ns / 1e6:.1f} ms" if ns >= 1e6 else f"{ns / 1e3:.0f} us"


def _findings(vantages: list[VantageData], found: list[Link]) -> list[str]:
    out = []
    for v in vantages:
        # Only an offset beyond the threshold even at its bound's near edge: a probe whose round
        # trip was slow (a busy controller) says nothing of the host's time service.
        worst = max(v.probes, key=lambda p: abs(p.offset_ns) - p.bound_ns, default=None)
        if worst is not None and abs(worst.offset_ns) - worst.bound_ns > FINDING_NS:
            way = "ahead of" if worst.offset_ns > 0 else "behind"
            out.append(
                f"{v.name}'s clock is {_span(worst.offset_ns)} {way} the controller's (SSH probe, "
                f"+-{_span(worst.bound_ns)}): its time service is off, and its own logs will disagree with "
                f"other hosts' by as much (capture-all aligns its packets regardless)."
            )
    for link in found:
        for st in link.steps:
            out.append(
                f"The clocks of {link.a} and {link.b} moved apart by {st.by_ns / 1e6:+.3f} ms between "
                f"{st.after_ns / 1e9:.3f} and {st.before_ns / 1e9:.3f} ({link.a}'s clock, s since the epoch): one of "
                f"them stepped or changed rate (NTP) during the capture; times are aligned piecewise around it."
            )
    return out


def estimate(vantages: list[VantageData], reference: str | None = None) -> Clocks:
    # A host whose capture missed the flow may still have witness events to place in time.
    names = [v.name for v in vantages if v.segments or v.witness.events]
    found = links(vantages)
    if not names:
        return Clocks(None, findings=_findings(vantages, found))
    edges: dict[str, list[tuple[str, ClockFn, int]]] = {}
    for link in found:
        edges.setdefault(link.a, []).append((link.b, link.fn, link.half_width_ns))
        edges.setdefault(link.b, []).append((link.a, link.fn.reversed(), link.half_width_ns))
    if reference is None or reference not in names:
        # The best-connected vantage keeps its own clock: fewest hops to everyone else.
        reference = max(names, key=lambda n: (len(edges.get(n, [])), -names.index(n)))
    clocks = Clocks(reference, links=found, at_ns=_at(vantages), findings=_findings(vantages, found))
    # Dijkstra on uncertainty: theta(ref -> v) accumulates along the path.
    best: dict[str, tuple[ClockFn, int]] = {reference: (ClockFn.constant(0.0), 0)}
    heap = [(0, reference)]
    while heap:
        width, node = heapq.heappop(heap)
        if width > best[node][1]:
            continue
        theta = best[node][0]
        for nxt, fn, hw in edges.get(node, []):
            if nxt not in best or width + hw < best[nxt][1]:
                best[nxt] = (theta.then(fn), width + hw)
                heapq.heappush(heap, (width + hw, nxt))
    method = {n: ("reference" if n == reference else "packets") for n in best}
    # No packet shared both ways: the SSH probes, through the best-aligned host that has them too.
    probes = {v.name: pf for v in vantages if (pf := probe_fn(v.probes)) is not None}
    for n in names:
        if n in best or n not in probes:
            continue
        via = [(best[m][1] + probes[m][1] + probes[n][1], m) for m in best if m in probes and method[m] != "probe"]
        if via:
            unc, m = min(via)
            best[n] = (best[m][0].then(probes[m][0].reversed().then(probes[n][0])), unc)
            method[n] = "probe"
    for n in names:
        if n in best:
            fn, unc = best[n]
            clocks.fn[n], clocks.method[n], clocks.uncertainty_ns[n] = fn, method[n], unc
            clocks.offset_ns[n] = -round(fn.at(clocks.at_ns))
            clocks.drift_ppm[n] = fn.piece(clocks.at_ns).slope * 1e6
        else:
            clocks.offset_ns[n], clocks.uncertainty_ns[n], clocks.method[n] = 0, 0, "none"
    return clocks


def apply(vantages: list[VantageData], clocks: Clocks) -> None:
    """Shift every vantage's segment times (and its activity keys) onto the reference clock."""
    for v in vantages:
        v.clock_method = clocks.method.get(v.name, "none")
        fn = clocks.fn.get(v.name)
        if fn is None or v.clock_method == "reference":
            continue
        for s in v.segments:
            s.ts_ns = fn.to_reference(s.ts_ns)
        for line in v.logs:
            line.time_ns = None if line.time_ns is None else fn.to_reference(line.time_ns)
        v.first_ns = None if v.first_ns is None else fn.to_reference(v.first_ns)
        v.last_ns = None if v.last_ns is None else fn.to_reference(v.last_ns)
        v.activity = {fn.to_reference(t): a for t, a in v.activity.items()}
        w = v.witness
        for e in w.events:
            e.ts_ns = fn.to_reference(e.ts_ns)
        w.start_ns = None if w.start_ns is None else fn.to_reference(w.start_ns)
        w.end_ns = None if w.end_ns is None else fn.to_reference(w.end_ns)
