"""Renderings of an ``Analysis``: report.json (schema capture-all/report/4), report.md, terminal.

Schema history: /2 made each reset's ``evidence`` a list of records (``kind``, ``text``, the
numbers) and added ``names`` (the connection's names through address translation), ``isn`` (its
incarnation) and ``blocked_by`` (contrary evidence that stopped a middlebox conviction). /3 added
``about`` (provenance: window, commands, bundle, manifest digest), a ``time_utc`` beside every
``time_ns``, ``hosts[].interfaces``, ``integrity`` and ``merged`` (merged.pcapng), and the published
schema (``analysis.schema``: every report.json is validated against it)."""

from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import dataclass, field
from typing import Any

from analysis.correlate import Reset, flow_key
from analysis.counters import deltas
from analysis.decode import RST, flag_text
from analysis.evidence import ChainRole
from analysis.logs import LogLine
from analysis.model import Seen, VantageData
from analysis.verdict import Analysis
from analysis.witness import KernelEvent

SCHEMA = "capture-all/report/4"
TIMELINE_BEFORE_NS = 3 * 10**9
TIMELINE_AFTER_NS = 1 * 10**9
TIMELINE_MAX = 40


def clock(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc).strftime("%H:%M:%S")
    return f"{t}.{ns % 10**9:09d}"[:15]


def iso(ns: int) -> str:
    """UTC, ISO 8601, every nanosecond: 2026-12-01T21:22:43.148610123Z."""
    t = dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{t}.{ns % 10**9:09d}Z"


def day(ns: int) -> str:
    return iso(ns)[:10]


@dataclass
class About:
    """What a report is of, so that a copy pasted into a ticket can be tied back to its evidence."""

    tool: str
    generated_utc: str
    command: list[str] = field(default_factory=list)  # the command that collected the evidence
    analyzed_by: list[str] | None = None  # the command that made this report (None: the capture itself)
    bundle: str | None = None
    manifest_sha256: str | None = None
    captured_utc: str | None = None  # when the capture run started (the manifest's created_utc)
    run_ns: tuple[int, int] | None = None  # the captures' window: the first host armed, the last stopped


def window(a: Analysis) -> tuple[int, int] | None:
    """The earliest and the latest packet of all the captures (aligned clock)."""
    lo = [v.first_ns for v in a.vantages if v.first_ns is not None]
    hi = [v.last_ns for v in a.vantages if v.last_ns is not None]
    return (min(lo), max(hi)) if lo and hi else None


def _about(a: Analysis, about: About) -> dict[str, Any]:
    w = window(a)
    return {
        "tool": about.tool,
        "generated_utc": about.generated_utc,
        "command": about.command,
        "command_line": shlex.join(about.command) if about.command else None,
        "analyzed_by": shlex.join(about.analyzed_by) if about.analyzed_by else None,
        "bundle": about.bundle,
        "manifest_sha256": about.manifest_sha256,
        "captured_utc": about.captured_utc,
        "capture": _span(about.run_ns),
        "window": _span(w),
    }


def _span(span: tuple[int, int] | None) -> dict[str, Any] | None:
    if span is None:
        return None
    lo, hi = span
    return {"from_ns": lo, "to_ns": hi, "from_utc": iso(lo), "to_utc": iso(hi), "duration_s": round((hi - lo) / 1e9, 6)}


def _isos(obj: Any) -> Any:
    """Every ``time_ns`` in the report gets its ``time_utc`` beside it."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k] = _isos(v)
            if k == "time_ns" and isinstance(v, int):
                out["time_utc"] = iso(v)
        return out
    if isinstance(obj, list):
        return [_isos(x) for x in obj]
    return obj


def about_lines(about: dict[str, Any] | None) -> list[str]:
    """The report's provenance (report.json's ``about``), for the top of report.md."""
    if not about:
        return []
    out = []
    c = about.get("capture")
    if c:
        out.append(f"- **Capture:** {c['from_utc']} to {c['to_utc']} ({c['duration_s']:.3f} s: the first host "
                   "armed to the last stopped)")  # fmt: skip
    w = about.get("window")
    if w:
        out.append(f"- **Window:** {w['from_utc']} to {w['to_utc']} ({w['duration_s']:.6f} s: the captures' first "
                   "and last packet, aligned clock)")  # fmt: skip
    if about.get("bundle"):
        digest = f" (manifest.json SHA-256 `{about['manifest_sha256']}`)" if about.get("manifest_sha256") else ""
        out.append(f"- **Evidence:** `{about['bundle']}`{digest}")
    if about.get("command_line"):
        when = f", started {about['captured_utc']}" if about.get("captured_utc") else ""
        out.append(f"- **Captured by:** `{about['command_line']}`{when}")
    if about.get("analyzed_by"):
        out.append(f"- **Analysed by:** `{about['analyzed_by']}`")
    out.append(f"- **Report:** {about['tool']}, {about['generated_utc']}")
    return out


@dataclass
class KernelRow:
    """A witness event on the timeline: what a host's own kernel logged."""

    vantage: str
    event: KernelEvent

    @property
    def ts_ns(self) -> int:
        return self.event.ts_ns


@dataclass
class LogRow:
    """A proxy's log line on the timeline (its time: the log's own resolution, aligned)."""

    vantage: str
    line: LogLine

    @property
    def ts_ns(self) -> int:
        return self.line.time_ns or 0


Row = Seen | KernelRow | LogRow


def timeline(a: Analysis, first: Reset) -> list[tuple[Row, str | None]]:
    """Every segment of the first reset's chain's connections, at every vantage, around it, and
    what the hosts' kernels logged about resets on those connections."""
    chain = [r for r in a.resets if r.chain == first.chain]
    keys = {k for r in chain for k in (a.world.names.keys(r.tuple4) if a.world else {r.key})}
    marks: dict[int, str] = {id(o): r.id for r in chain for o in r.seen}
    for r in chain:
        if r.kernel_sent is not None:
            marks[id(r.kernel_sent[1])] = r.id
        for _, e in r.kernel_received:
            marks[id(e)] = r.id
    lo = min(r.time_ns for r in chain) - TIMELINE_BEFORE_NS
    hi = max(r.time_ns for r in chain) + TIMELINE_AFTER_NS
    rows: list[Row] = [
        s
        for v in a.vantages
        for s in v.segments
        if lo <= s.ts_ns <= hi and flow_key(s.seg.src, s.seg.sport, s.seg.dst, s.seg.dport) in keys
    ]
    rows += [
        KernelRow(v.name, e)
        for v in a.vantages
        for e in v.witness.events
        if lo <= e.ts_ns <= hi and flow_key(*e.tuple4()) in keys
    ]
    chain_ids = {r.id for r in chain}
    rows += [
        LogRow(v.name, line)
        for v in a.vantages
        for line in v.logs
        if a.log_reset.get(id(line)) in chain_ids
    ]
    rows.sort(key=lambda s: (s.ts_ns, s.vantage))

    def mark(s: Row) -> str | None:
        if isinstance(s, LogRow):
            return a.log_reset.get(id(s.line))
        return marks.get(id(s.event if isinstance(s, KernelRow) else s))

    if len(rows) > TIMELINE_MAX:
        t0 = first.time_ns
        keep = sorted(rows, key=lambda s: (mark(s) is None, abs(s.ts_ns - t0)))[:TIMELINE_MAX]
        rows = sorted(keep, key=lambda s: (s.ts_ns, s.vantage))
    return [(s, mark(s)) for s in rows]


def _kernel(e: KernelEvent) -> dict[str, Any]:
    return {
        "event": f"tcp_{e.kind}_reset",
        "time_ns": e.ts_ns,
        "src": e.src,
        "sport": e.sport,
        "dst": e.dst,
        "dport": e.dport,
        "state": e.state,
        "reason": e.reason,
        "pid": e.pid,
        "comm": e.comm,
        "softirq": e.softirq,
        "sender_process": None if e.softirq or e.kind != "send" else f"{e.comm} pid {e.pid}",
    }


def log_text(line: LogLine) -> str:
    """A log line on the timeline: whose, in what resolution, what it says."""
    res = {10**6: "ms", 10**9: "s"}.get(line.resolution_ns, f"{line.resolution_ns} ns")
    return f"{line.host} {line.kind} log (to the {res}): {line.says}"


def _log(line: LogLine, reset_id: str | None) -> dict[str, Any]:
    return {
        "host": line.host,
        "source": line.source,
        "format": line.kind,
        "time_ns": line.time_ns,
        "time_utc": None if line.time_ns is None else iso(line.time_ns),
        "resolution_ns": line.resolution_ns,
        "meaning": line.meaning,
        "says": line.says,
        "client": None if line.client is None else {"ip": line.client[0], "port": line.client[1]},
        "upstream": line.upstream,
        "text": line.text,
        "reset_id": reset_id,
    }


def _row(s: Row, mark: str | None) -> dict[str, Any]:
    if isinstance(s, LogRow):
        return {"kind": "log", **_log(s.line, mark)}
    if isinstance(s, KernelRow):
        return {"kind": "kernel", "host": s.vantage, "text": s.event.describe(s.vantage), **_kernel(s.event),
                "reset_id": mark}  # fmt: skip
    g = s.seg
    return {
        "kind": "packet",
        "time_ns": s.ts_ns,
        "host": s.vantage,
        "iface": s.iface,
        "direction": s.direction,
        "src": g.src,
        "sport": g.sport,
        "dst": g.dst,
        "dport": g.dport,
        "flags": flag_text(g.flags),
        "seq": g.seq,
        "ack": g.ack,
        "len": g.payload_len,
        "ttl": g.ttl,
        "ip_id": g.ip_id,
        "reset_id": mark,
    }


def to_json(a: Analysis, flow: str, tool: str = "capture-all", about: About | None = None) -> dict[str, Any]:
    out: dict[str, Any] = _isos(_to_json(a, flow, tool, about))
    return out


def _to_json(a: Analysis, flow: str, tool: str, about: About | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "generated_by": tool,
        "about": _about(a, about) if about is not None else None,
        "flow": flow,
        "hosts": [
            {
                "name": v.name,
                "role": v.role,
                "interfaces": [i for n, i, _ in a.sources if n == v.name],
                "status": "ok" if v.captured else "failed",
                "error": v.error,
                "packets": v.packets,
                "kernel_drops": v.kernel_drops,
                "clock": _clock(a, v.name),
                "witness": _witness(v),
                **_counters(v),
            }
            for v in a.vantages
        ],
        "clock_reference": a.clocks.reference if a.clocks else None,
        "clock_findings": a.clocks.findings if a.clocks else [],
        "resets": [
            {
                "id": r.id,
                "time_ns": r.time_ns,
                "tuple": dict(zip(("src", "sport", "dst", "dport"), r.tuple4, strict=True)),
                "origin": {"kind": r.origin_kind, "host": r.origin_host, "between": r.between},
                "chain": r.chain,
                "chain_role": r.chain_role,
                "propagated_from": r.propagated_from,
                "cause": r.cause,
                "seen_at": [
                    {
                        "host": o.vantage,
                        "iface": o.iface,
                        "direction": o.direction,
                        "time_ns": o.ts_ns,
                        "ttl": o.seg.ttl,
                    }
                    for o in r.seen
                ],
                "names": [dict(zip(("src", "sport", "dst", "dport"), n, strict=True)) for n in r.names],
                "isn": r.isn,
                "evidence": [e.to_json() for e in r.evidence],
                "blocked_by": [str(e.kind) for e in r.blocked],
                "kernel": {
                    "sent": {"host": r.kernel_sent[0], **_kernel(r.kernel_sent[1])} if r.kernel_sent else None,
                    "received": [{"host": h, **_kernel(e)} for h, e in r.kernel_received],
                    "no_send_event_at": r.witness_absent,
                },
                "owners": r.owners,
            }
            for r in a.resets
        ],
        "first_reset": a.first.id if a.first else None,
        "verdict": a.verdict,
        "caveats": a.caveats,
        "timeline": [_row(s, m) for s, m in timeline(a, a.first)] if a.first else [],
        "log_lines": [_log(line, a.log_reset.get(id(line))) for v in a.vantages for line in v.logs],
        "idle_chain": a.idle_chain,
    }


def _witness(v: VantageData) -> dict[str, Any]:
    w = v.witness
    return {
        "state": w.state,
        "reason": w.reason or None,
        "events": len(w.events),
        "lost": w.lost,
        "other_hosts_events": w.foreign,
        "reason_field": w.has_reason,
        "start_ns": w.start_ns,
        "end_ns": w.end_ns,
        "clock_bound_ns": w.clock_bound_ns if w.ran else None,
    }


def _counters(v: VantageData) -> dict[str, Any]:
    d = deltas(v.facts)
    before, after, top = d.conntrack
    return {
        "counters": d.counters,
        "conntrack": {"before": before, "after": after, "max": top},
        "interface_drops": d.links,
    }


def witness_line(a: Analysis) -> str | None:
    """'kernel witness: client ran (2 events), proxy unavailable (tracefs is not mounted ...)'."""
    parts = []
    for v in a.vantages:
        w = v.witness
        if w.state == "none":
            continue
        if w.ran:
            lost = f", {w.lost} lost" if w.lost else ""
            reason = "" if w.has_reason or not any(e.kind == "send" for e in w.events) else ", no reason field"
            parts.append(f"{v.name} ran ({len(w.events)} event{'s' * (len(w.events) != 1)}{lost}{reason})")
        else:
            parts.append(f"{v.name} {w.state}" + (f" ({w.reason})" if w.reason else ""))
    return "kernel witness: " + "; ".join(parts) if parts else None


def _clock(a: Analysis, name: str) -> dict[str, Any]:
    c = a.clocks
    v = next((v for v in a.vantages if v.name == name), None)
    probes = [{"phase": p.phase, "at_ns": p.at_ns, "offset_ns": p.offset_ns, "bound_ns": p.bound_ns}
              for p in (v.probes if v else [])]  # fmt: skip
    if c is None or name not in c.method:
        return {"method": "none", "offset_ns": 0, "at_ns": None, "uncertainty_ns": None, "drift_ppm": None,
                "probe": probes}  # fmt: skip
    aligned = c.method[name] != "none"
    return {
        "method": c.method[name],
        "offset_ns": c.offset_ns[name],
        "at_ns": c.at_ns,
        "uncertainty_ns": c.uncertainty_ns[name] if aligned else None,
        "drift_ppm": round(c.drift_ppm.get(name, 0.0), 3) if aligned else None,
        "probe": probes,
    }


_METHOD = {"packets": "from the packets", "probe": "from the SSH probe (no packet shared both ways)"}


def clock_line(a: Analysis) -> str | None:
    """'clocks (reference client): router +4.0 us +-3 us from the packets, ...' for several hosts."""
    c = a.clocks
    if c is None or len(c.method) < 2:
        return None
    parts = []
    for name, method in c.method.items():
        if method == "none":
            parts.append(f"{name} not aligned (no packet shared both ways, no SSH probe)")
        elif method != "reference":
            off = c.offset_ns[name]
            shown = f"{off / 1e3:+.1f} us" if abs(off) < 1_000_000 else f"{off / 1e9:+.6f} s"
            drift = c.drift_ppm.get(name, 0.0)
            extra = f", gaining {drift:+.1f} ppm on the reference" if drift else ""
            parts.append(f"{name} {shown} +-{c.uncertainty_ns[name] / 1e3:.0f} us {_METHOD[method]}{extra}")
    return f"clocks (reference {c.reference}, offsets added at the first reset): " + "; ".join(parts)


def _aligned(a: Analysis) -> bool:
    return a.clocks is not None and all(m != "none" for m in a.clocks.method.values())


def _packet(s: Seen) -> str:
    g = s.seg
    return f"{g.src}:{g.sport} > {g.dst}:{g.dport}"


def terminal(a: Analysis) -> list[str]:
    lines: list[str] = []
    if a.first is not None:
        how = "one clock for all hosts (aligned)" if _aligned(a) else "each host's own clock"
        lines.append(f"timeline around the first reset ({a.first.id}), {how}:")
        for s, mark in timeline(a, a.first):
            if isinstance(s, LogRow):
                lines.append(f"  {clock(s.ts_ns)} {log_text(s.line)} ({mark})")
                continue
            if isinstance(s, KernelRow):
                tag = f"<== {mark}" if mark else ""
                lines.append(f"  {clock(s.ts_ns)} {s.event.describe(s.vantage)} {tag}".rstrip())
                continue
            g = s.seg
            flag = f"[{flag_text(g.flags)}]"
            arrow = f"<== {mark}" if mark and g.flags & RST else ""
            lines.append(
                f"  {clock(s.ts_ns)} {s.vantage + '/' + s.iface:<14} {s.direction:>3} {_packet(s):<44} "
                f"{flag:<6} seq {g.seq} ack {g.ack} len {g.payload_len} ttl {g.ttl} {arrow}".rstrip()
            )
        for r in a.resets:
            if r.chain == a.first.chain:
                lines.append(f"  {r.id} ({r.chain_role}, cause {r.cause}):")
                lines.extend(f"    - {e.text}" for e in r.evidence)
                lines.extend(f"    - owner at {h}: {o}" for h, o in r.owners.items())
        others = [r for r in a.resets if r.chain != a.first.chain and r.chain_role == ChainRole.FIRST]
        for r in others:
            lines.append(f"  also: {r.id} {r.describe()} origin {r.origin_host or r.origin_kind}, cause {r.cause}")
    line = clock_line(a)
    if line:
        lines.append(f"  {line}")
    wline = witness_line(a)
    if wline:
        lines.append(f"  {wline}")
    for v in a.vantages:
        moved = deltas(v.facts).nonzero()
        if moved:
            lines.append(f"  counters at {v.name} (after - before): {', '.join(moved)}")
    for f in a.clocks.findings if a.clocks else []:
        lines.append(f"  clock: {f}")
    for c in a.caveats:
        lines.append(f"  caveat: {c}")
    lines.append(f"verdict: {a.verdict}")
    return lines


def markdown(a: Analysis, flow: str, about: dict[str, Any] | None = None) -> str:
    out = [f"# capture-all report: `{flow}`", ""]
    head = about_lines(about)
    out += head + ([""] if head else [])
    out += [f"**Verdict.** {a.verdict}", ""]
    if a.caveats:
        out += ["**Caveats.**", ""] + [f"- {c}" for c in a.caveats] + [""]
    line = clock_line(a)
    out += ["## Hosts", ""] + ([line, ""] if line else [])
    if a.clocks and a.clocks.findings:
        out += ["**Clock findings.**", ""] + [f"- {f}" for f in a.clocks.findings] + [""]
    out += [
        "| host | role | status | packets | kernel drops | kernel witness | counters (after - before) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in a.vantages:
        status = "ok" if v.captured else f"failed: {v.error}"
        drops = "?" if v.kernel_drops is None else v.kernel_drops
        w = v.witness
        wit = f"ran, {len(w.events)} events" if w.ran else (f"{w.state}: {w.reason}" if w.reason else w.state)
        moved = ", ".join(deltas(v.facts).nonzero()) or "-"
        out.append(f"| {v.name} | {v.role} | {status} | {v.packets} | {drops} | {wit} | {moved} |")
    out.append("")
    if a.resets:
        out += ["## Resets", ""]
        for r in a.resets:
            where = ", ".join(f"{o.vantage}/{o.iface} {o.direction} ttl {o.seg.ttl}" for o in r.seen)
            origin = r.origin_host or (" and ".join(r.between) if r.between else "unknown")
            out += (
                [
                    f"### {r.id}: `{r.describe()}` at {day(r.time_ns)} {clock(r.time_ns)} UTC",
                    "",
                    f"- origin: {r.origin_kind} ({origin}); chain {r.chain}, {r.chain_role}; cause: {r.cause}",
                    f"- seen at: {where}",
                ]
                + [f"- {e.text}" for e in r.evidence]
                + [f"- owner at {h}: {o}" for h, o in r.owners.items()]
                + [""]
            )
    if a.idle_chain is not None:
        out += ["## Idle-timeout chain (read on the hosts during the capture)", ""]
        out += [f"- {p['text']}" for p in a.idle_chain["pairs"]] or ["- no pair could be checked"]
        out += [f"- note: {n}" for n in a.idle_chain["notes"]]
        out += [f"- explains {x['reset_id']} (reused after {x['idle_ns'] / 1e9:.1f} s idle)"
                for x in a.idle_chain["explains"]]  # fmt: skip
        out.append("")
    if a.first is not None:
        out += [
            f"## Timeline around {a.first.id} ({'aligned clock' if _aligned(a) else 'each host’s own clock'}, UTC, "
            f"{day(a.first.time_ns)})",
            "",
            "| time | host | dir | packet | flags | seq | ack | len | ttl | |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s, mark in timeline(a, a.first):
            if isinstance(s, LogRow):
                out.append(f"| {clock(s.ts_ns)} | {s.vantage}/log | | {log_text(s.line)} | | | | | | {mark} |")
                continue
            if isinstance(s, KernelRow):
                tag = f"**{mark}**" if mark else ""
                out.append(
                    f"| {clock(s.ts_ns)} | {s.vantage}/kernel | | {s.event.describe(s.vantage)} | | | | | | {tag} |"
                )
                continue
            g = s.seg
            out.append(
                f"| {clock(s.ts_ns)} | {s.vantage}/{s.iface} | {s.direction} | {_packet(s)} | "
                f"{flag_text(g.flags)} | {g.seq} | {g.ack} | {g.payload_len} | {g.ttl} | "
                f"{'**' + mark + '**' if mark and g.flags & RST else ''} |"
            )
        out.append("")
    return "\n".join(out)
