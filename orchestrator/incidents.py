"""Watch mode's index over its incidents: ``OUT/incidents.json`` and ``OUT/incidents.md``.

Each incident is a complete bundle of its own (``OUT/001-<UTC time>/``: manifest, captures,
reports, digests); the index says, per incident, when it fired, which trigger, and the first
reset's origin and cause, and sums them up across incidents. It is rewritten after every
incident, so a watch stopped (or killed) at any point leaves an index of what it collected.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.bundle import Bundle

SCHEMA = "capture-all/incidents/1"


def row(folder: str, trigger: dict[str, Any], report: dict[str, Any] | None, exit_status: int,
        failed: list[str]) -> dict[str, Any]:  # fmt: skip
    """One incident: its bundle folder (relative to OUT), the trigger (as the manifest has it),
    and the first reset of its report (None where the analysis found none)."""
    first = None
    if report is not None and report.get("first_reset"):
        r = next((x for x in report.get("resets", []) if x.get("id") == report["first_reset"]), None)
        if r is not None:
            o = r.get("origin") or {}
            first = {"id": r.get("id"), "origin": o.get("kind"), "host": o.get("host"), "between": o.get("between"),
                     "cause": r.get("cause"), "tuple": r.get("tuple")}  # fmt: skip
    return {
        "folder": folder,
        "trigger": trigger,
        "first_reset": first,
        "verdict": (report or {}).get("verdict"),
        "exit_status": exit_status,
        "failed_hosts": failed,
    }


def _who(first: dict[str, Any] | None) -> str:
    if first is None:
        return "no reset"
    if first.get("origin") == "unknown" or not first.get("host") and not first.get("between"):
        return "unknown"
    where = first.get("host") or " / ".join(first.get("between") or [])
    return f"{first.get('origin')} {where}"


def summary(rows: list[dict[str, Any]]) -> str:
    """ "4 of 5 first resets: host lb-1, cause proxy_policy; 1 of 5: unknown (lb-1 failed)"."""
    if not rows:
        return "no incident"
    n = len(rows)
    counts = Counter((_who(r["first_reset"]), (r["first_reset"] or {}).get("cause")) for r in rows)
    parts = []
    for (who, cause), k in counts.most_common():
        failed = sorted({h for r in rows if _who(r["first_reset"]) == who for h in r["failed_hosts"]})
        text = f"{k} of {n}: {who}" + (f", cause {cause}" if cause and who not in ("unknown", "no reset") else "")
        if failed and who in ("unknown", "no reset"):
            text += f" ({', '.join(failed)} failed)"
        parts.append(text)
    return "first resets: " + "; ".join(parts)


def write(out: Path, rows: list[dict[str, Any]], armed: dict[str, Any]) -> None:
    """``armed``: the watch's own facts (flow, when it started and ended, why it ended)."""
    b = Bundle(out)
    doc = {"schema": SCHEMA, **armed, "summary": summary(rows), "incidents": rows}
    b.write("incidents.json", json.dumps(doc, indent=2) + "\n")
    lines = [f"# capture-all watch: {armed.get('flow', '')}", ""]
    lines.append(f"Armed from {armed.get('started_utc')} to {armed.get('ended_utc') or '(still armed)'}"
                 f"{'; ended: ' + armed['ended'] if armed.get('ended') else ''}.")  # fmt: skip
    lines += ["", f"**{summary(rows)}**", ""]
    if rows:
        lines += ["| # | bundle | trigger | first reset | cause | verdict |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(rows, 1):
            t = r["trigger"]
            trig = t.get("kind", "?") + (f" at {t['host']}" if t.get("host") else "")
            first = r["first_reset"] or {}
            verdict = (r.get("verdict") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {i} | [{r['folder']}]({r['folder']}/report.md) | {trig} | {_who(r['first_reset'])} | "
                         f"{first.get('cause') or ''} | {verdict} |")  # fmt: skip
    b.write("incidents.md", "\n".join(lines) + "\n")
