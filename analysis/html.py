"""report.html: the report for people, one self-contained file (no script, no network, no CDN).

The verdict first, then a ladder diagram (SVG) of the first reset's connections: one lifeline per
host/interface in path order (client, routers, proxies, backends), time downwards on the aligned
clock, one row per observation; each packet an arrow from where it was seen leaving to where it
was next seen, RSTs in red (forged or injected ones dashed and marked), the kernel witness's
events as diamonds and the proxies' log lines as squares on their host's line. Then the evidence,
hosts, clocks and caveats.

Rendered from report.json's own data (the same dict), so the two never disagree.
"""

from __future__ import annotations

import html
from typing import Any

ROLE_ORDER = {"client": 0, "router": 1, "nat": 1, "firewall": 1, "proxy": 2, "backend": 3}
LEFT, TOP, COL, ROW = 150, 70, 170, 24
SAME_PACKET_NS = 50_000_000  # observations of one packet lie this close together at most


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def lifelines(report: dict[str, Any]) -> list[str]:
    """host/interface names in path order: by role, then inventory order, then interface name."""
    order = {h["name"]: (ROLE_ORDER.get(h["role"], 4), k) for k, h in enumerate(report["hosts"])}
    names = {f"{x['host']}/{x['iface']}" for x in report["timeline"] if x["kind"] == "packet"}
    names |= {f"{h['name']}/{i}" for h in report["hosts"] for i in h.get("interfaces", [])}
    for h in report["hosts"]:  # a vantage that saw nothing of it still has its line
        if not any(n.startswith(h["name"] + "/") for n in names):
            names.add(f"{h['name']}/-")
    return sorted(names, key=lambda n: (*order.get(n.split("/")[0], (5, 0)), n))


def _groups(rows: list[dict[str, Any]]) -> list[list[int]]:
    """Row indices of the same packet seen at several vantages (same seq, ack, flags, length)."""
    out: list[list[int]] = []
    last: dict[tuple[Any, ...], list[int]] = {}
    for i, x in enumerate(rows):
        if x["kind"] != "packet":
            continue
        key = (x["seq"], x["ack"], x["flags"], x["len"])
        g = last.get(key)
        if g is not None and x["time_ns"] - rows[g[-1]]["time_ns"] <= SAME_PACKET_NS and x["host"] + "/" + str(
            x["iface"]
        ) not in {rows[j]["host"] + "/" + str(rows[j]["iface"]) for j in g}:
            g.append(i)
        else:
            g = [i]
            last[key] = g
            out.append(g)
    return out


def ladder(report: dict[str, Any]) -> str:
    rows = report["timeline"]
    lines = lifelines(report)
    col = {n: LEFT + k * COL for k, n in enumerate(lines)}
    host_col: dict[str, int] = {}
    for n in lines:
        host_col.setdefault(n.split("/")[0], col[n])
    height = TOP + ROW * (len(rows) + 1)
    width = LEFT + COL * max(len(lines), 1) + 120  # room for the last line's labels
    resets = {r["id"]: r for r in report["resets"]}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" id="ladder" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
           '<defs><marker id="ah" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse">',
           '<path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker></defs>']  # fmt: skip
    for n in lines:
        x = col[n]
        svg.append(f'<g class="lifeline" data-vantage="{_e(n)}"><text x="{x}" y="{TOP - 30}" text-anchor="middle" '
                   f'font-weight="bold">{_e(n)}</text><line x1="{x}" y1="{TOP - 20}" x2="{x}" y2="{height - 10}" '
                   f'stroke="#888" stroke-dasharray="2,3"/></g>')  # fmt: skip
    y = {i: TOP + ROW * i for i in range(len(rows))}
    for i, x in enumerate(rows):
        t = x["time_utc"][11:26]
        svg.append(f'<text x="8" y="{y[i] + 4}" fill="#555">{_e(t)}</text>')
    center = LEFT + COL * (len(lines) - 1) / 2
    for g in _groups(rows):
        first = rows[g[0]]
        rid = first.get("reset_id")
        rst = "R" in first["flags"]
        r = resets.get(rid) if rid else None
        forged = r is not None and r["origin"]["kind"] == "middlebox"
        color = "#d00" if rst else "#246"
        dash = ' stroke-dasharray="6,3"' if forged else ""
        label = f"{first['flags']}" + (f" len {first['len']}" if first["len"] else "")
        if rid:
            label += f" {rid}" + (" forged" if forged and r and r["origin"]["host"] else " injected" if forged else "")
        attrs = f'class="packet{" rst" if rst else ""}" data-reset="{_e(rid or "")}"'
        pts: list[tuple[float, float, str]] = [
            (col.get(f"{rows[j]['host']}/{rows[j]['iface']}", LEFT), y[j], rows[j]["direction"]) for j in g
        ]
        if len(pts) == 1:  # seen at one vantage only: a stub toward (out) or from (in) the middle
            x0, y0, d = pts[0]
            side = 1 if x0 <= center else -1
            if d == "out":
                pts = [(x0, y0, d), (x0 + side * COL * 0.45, y0 + ROW * 0.6, "in")]
            else:
                pts = [(x0 + side * COL * 0.45, y0 - ROW * 0.6, "out"), (x0, y0, d)]
        parts = [f'<g {attrs}><title>{_e(label)} {_e(first["src"])}:{first["sport"]} &gt; {_e(first["dst"])}:'
                 f'{first["dport"]} seq {first["seq"]} ack {first["ack"]}</title>']  # fmt: skip
        for (x0, y0, _), (x1, y1, _) in zip(pts, pts[1:], strict=False):
            if x0 == x1:
                x1 += 1  # the same line twice: still a visible mark
            parts.append(f'<line x1="{x0:.1f}" y1="{y0}" x2="{x1:.1f}" y2="{y1}" stroke="{color}" '
                         f'stroke-width="{2 if rst else 1.2}"{dash} marker-end="url(#ah)"/>')  # fmt: skip
        (xa, ya, _), (xb, yb, _) = pts[0], pts[1]
        parts.append(f'<text x="{(xa + xb) / 2:.1f}" y="{(ya + yb) / 2 - 3:.1f}" text-anchor="middle" '
                     f'fill="{color}">{_e(label)}</text></g>')  # fmt: skip
        svg.append("".join(parts))
    # Marks on their host's line: the kernel witness's events (diamonds), the logs' lines (squares).
    for i, x in enumerate(rows):
        if x["kind"] not in ("kernel", "log"):
            continue
        cx, cy = host_col.get(x["host"], LEFT), y[i]
        if x["kind"] == "kernel":
            shape = (f'<path d="M{cx},{cy - 6} L{cx + 6},{cy} L{cx},{cy + 6} L{cx - 6},{cy} z" fill="#e90" '
                     'stroke="#000"/>')
            text, color = x["event"] + (" " + x["reason"] if x.get("reason") else ""), "#a60"
        else:
            shape = f'<rect x="{cx - 5}" y="{cy - 5}" width="10" height="10" fill="#6a3" stroke="#000"/>'
            text, color = f"{x['format']}: {x['says']}", "#383"
        svg.append(f'<g class="{x["kind"]}" data-reset="{_e(x.get("reset_id") or "")}"><title>{_e(x["text"])}'
                   f'</title>{shape}<text x="{cx + 9}" y="{cy + 4}" fill="{color}">{_e(text)}</text></g>')  # fmt: skip
    svg.append("</svg>")
    return "\n".join(svg)


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #111; max-width: 1600px; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; } code, pre { font-size: 12px; }
.verdict { font-size: 16px; padding: 10px 14px; background: #f4f6fa; border-left: 4px solid #246; }
.integrity { padding: 10px 14px; background: #fde8e8; border-left: 4px solid #d00; font-weight: bold; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ccc; padding: 3px 7px; }
th { background: #eee; text-align: left; } .about li { font-size: 13px; } .ladder { overflow-x: auto; }
"""


def render(report: dict[str, Any]) -> str:
    about = report.get("about") or {}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>capture-all report: {_e(report.get('flow', ''))}</title><style>{CSS}</style></head><body>",
           f"<h1>capture-all report: <code>{_e(report.get('flow', ''))}</code></h1>"]  # fmt: skip
    integ = report.get("integrity") or {}
    if integ.get("problems"):
        out.append(f'<p class="integrity">Integrity: {len(integ["problems"])} file(s) of the bundle are not what '
                   f'was collected: {_e("; ".join(integ["problems"]))}</p>')  # fmt: skip
    items = []
    for key, label in (("capture", "Capture"), ("window", "Packets")):
        w = about.get(key)
        if w:
            items.append(f"<li><b>{label}:</b> {_e(w['from_utc'])} to {_e(w['to_utc'])} ({w['duration_s']:.6f} s)</li>")
    if about.get("bundle"):
        items.append(f"<li><b>Evidence:</b> <code>{_e(about['bundle'])}</code> (manifest.json SHA-256 "
                     f"<code>{_e(about.get('manifest_sha256'))}</code>)</li>")  # fmt: skip
    if about.get("command_line"):
        items.append(f"<li><b>Captured by:</b> <code>{_e(about['command_line'])}</code></li>")
    if about.get("analyzed_by"):
        items.append(f"<li><b>Analysed by:</b> <code>{_e(about['analyzed_by'])}</code></li>")
    if about:
        items.append(f"<li><b>Report:</b> {_e(about.get('tool'))}, {_e(about.get('generated_utc'))}</li>")
    out.append(f'<ul class="about">{"".join(items)}</ul>')
    out.append(f'<p class="verdict" id="verdict"><b>Verdict.</b> {_e(report["verdict"])}</p>')
    if report.get("timeline"):
        out.append(f"<h2>Ladder around {_e(report.get('first_reset'))} (aligned clock, UTC; time downwards, one "
                   "row per observation; red: resets, dashed: forged or injected; diamonds: the kernel "
                   "witness; squares: the proxies' logs)</h2>")  # fmt: skip
        out.append(f'<div class="ladder">{ladder(report)}</div>')
    if report.get("resets"):
        out.append("<h2>Resets</h2>")
        for r in report["resets"]:
            t = r["tuple"]
            o = r["origin"]
            who = o["host"] or " and ".join(o["between"] or []) or "unknown"
            out.append(f"<h3 id='{_e(r['id'])}'>{_e(r['id'])}: <code>{_e(t['src'])}:{t['sport']} &rarr; "
                       f"{_e(t['dst'])}:{t['dport']}</code> at {_e(r['time_utc'])}</h3>"
                       f"<p>origin: {_e(o['kind'])} ({_e(who)}); chain {r['chain']}, {_e(r['chain_role'])}"
                       f"{', from ' + _e(r['propagated_from']) if r.get('propagated_from') else ''}; cause: "
                       f"<b>{_e(r['cause'])}</b></p><ul>" + "".join(f"<li>{_e(e['text'])}</li>" for e in r["evidence"])
                       + "</ul>")  # fmt: skip
    out.append("<h2>Hosts</h2><table><tr><th>host</th><th>role</th><th>status</th><th>packets</th>"
               "<th>kernel drops</th><th>clock</th><th>kernel witness</th></tr>")  # fmt: skip
    for h in report["hosts"]:
        c = h.get("clock") or {}
        w = h.get("witness") or {}
        clock = (f"{_e(c.get('method'))}, {c.get('offset_ns')} ns &plusmn;{c.get('uncertainty_ns')} ns"
                 if c.get("method") not in (None, "none") else "not aligned")  # fmt: skip
        wit = f"{_e(w.get('state'))}, {w.get('events', 0)} events" + (f": {_e(w['reason'])}" if w.get("reason") else "")
        status = _e(h["status"]) + (f": {_e(h['error'])}" if h.get("error") else "")
        out.append(f"<tr><td>{_e(h['name'])}</td><td>{_e(h['role'])}</td><td>{status}</td><td>{h['packets']}</td>"
                   f"<td>{_e(h['kernel_drops'])}</td><td>{clock}</td><td>{wit}</td></tr>")  # fmt: skip
    out.append("</table>")
    notes = [*report.get("clock_findings", []), *report.get("caveats", [])]
    if notes:
        out.append("<h2>Caveats and clock findings</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
