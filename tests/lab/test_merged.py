"""merged.pcapng read by the real tools: capinfos lists one interface per host/interface, tshark
reads every packet in the aligned order with the resets' comments, at the report's times."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import subprocess
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main
from tests.lab.labnet import CLIENT_IP, PROXY_FRONT, Lab
from tests.lab.test_scenarios import CLIENTS, capture, first


def propagated(capsys: pytest.CaptureFixture[str], lab: Lab, out: Path) -> tuple[dict[str, Any], str]:
    """The backend aborts mid-response, HAProxy (TCP mode, nolinger) resets the client: a chain of two."""
    return capture(
        capsys, lab, out, f"{CLIENT_IP}->{PROXY_FRONT}:8082", f"{CLIENTS} hold {PROXY_FRONT} 8082 /partial 1"
    )


def tool(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def test_wireshark_reads_one_interface_per_hop_resets_commented_on_the_aligned_clock(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The backend aborts mid-response, HAProxy (nolinger) resets the client: a chain of two.
    report, stdout = propagated(capsys, clean_lab, tmp_path / "b")
    merged = tmp_path / "b" / "merged.pcapng"
    assert f"{merged}: " in stdout and "reset observations commented" in stdout
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    want = {f"{h['name']}/{c['interface']}": c["packets"] for h in manifest["hosts"] for c in h["captures"]}
    assert len(want) >= 4  # client, proxy (two sides), backend at least

    info = tool("capinfos", "-M", str(merged))
    names = [line.split("=", 1)[1].strip() for line in info.splitlines() if line.strip().startswith("Name =")]
    assert sorted(names) == sorted(want)
    assert "Time precision = nanoseconds (9)" in info

    rows = [line.split("\t") for line in tool(
        "tshark", "-r", str(merged), "-T", "fields", "-E", "occurrence=f", "-e", "frame.interface_name",
        "-e", "frame.time_epoch", "-e", "tcp.flags.reset", "-e", "frame.comment",
    ).splitlines()]  # fmt: skip
    for name, count in want.items():
        assert sum(r[0] == name for r in rows) == count, name
    times = [int(Decimal(r[1]) * 10**9) for r in rows]
    assert times == sorted(times)  # the file is in aligned order

    # Every reset observation in the report has its comment, at its aligned time, on its interface.
    seen = {(f"{o['host']}/{o['iface']}", o["time_ns"]): r for r in report["resets"] for o in r["seen_at"]}
    commented = {(r[0], int(Decimal(r[1]) * 10**9)): r[3] for r in rows if len(r) > 3 and r[3]}
    assert set(commented) == set(seen)
    r1 = first(report)
    assert all(r[2] == "1" for r in rows if len(r) > 3 and r[3])  # comments sit on RSTs only
    texts = list(commented.values())
    assert any(t.startswith(f"{r1['id']} first: sent by backend's own stack") for t in texts), texts
    assert any(f"propagated from {r1['id']}: sent by proxy's own stack" in t for t in texts), texts
    # The display filter the README gives finds exactly those.
    found = tool("tshark", "-r", str(merged), "-Y", 'frame.comment contains "R"', "-T", "fields", "-e", "frame.number")
    assert len(found.split()) == len(seen)
    assert report["merged"]["reset_comments"] == len(seen) and report["merged"]["problems"] == []


def test_reports_say_what_they_are_of(clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pasted into a ticket, a report ties back to its evidence: the window with its date (UTC,
    ISO), the tool's version, the command lines, the bundle and its manifest's digest."""
    flow = f"{CLIENT_IP}->{PROXY_FRONT}:8082"
    report, _ = capture(capsys, clean_lab, tmp_path / "b", flow, f"{CLIENTS} hold {PROXY_FRONT} 8082 /partial 1")
    about = report["about"]
    digest = hashlib.sha256((tmp_path / "b/manifest.json").read_bytes()).hexdigest()
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    assert report["schema"] == "capture-all/report/4"
    assert about["manifest_sha256"] == digest and about["bundle"] == str((tmp_path / "b").resolve())
    assert about["command"] == manifest["command"] and about["command"][:3] == ["capture-all", "--plain", "-i"]
    assert "--flow" in about["command"] and flow in about["command"] and about["analyzed_by"] is None
    assert about["tool"].startswith("capture-all ") and about["generated_utc"].endswith("Z")
    w = about["window"]
    armed = min(h["armed_ns"] for h in manifest["hosts"])
    stopped = max(h["stopped_ns"] for h in manifest["hosts"])
    assert armed - 10**9 < w["from_ns"] < w["to_ns"] < stopped + 10**9  # the packets lie within the run
    assert w["from_utc"] == iso_utc(w["from_ns"]) and 0 < w["duration_s"] <= 4
    c = about["capture"]
    assert (c["from_ns"], c["to_ns"]) == (armed, stopped) and c["to_utc"] == iso_utc(stopped)
    assert 2 <= c["duration_s"] < 4  # -d 2
    r1 = first(report)
    assert r1["time_utc"] == iso_utc(r1["time_ns"])
    assert all(o["time_utc"] == iso_utc(o["time_ns"]) for o in r1["seen_at"])
    assert all(x["time_utc"] == iso_utc(x["time_ns"]) for x in report["timeline"])
    md = (tmp_path / "b/report.md").read_text()
    head = md.split("**Verdict.**")[0]
    assert f"- **Window:** {w['from_utc']} to {w['to_utc']}" in head
    assert f"- **Capture:** {c['from_utc']} to {c['to_utc']} ({c['duration_s']:.3f} s" in head
    assert f"manifest.json SHA-256 `{digest}`" in head and "- **Captured by:** `capture-all --plain -i " in head
    assert f"- **Report:** {about['tool']}, " in head
    assert f"at {w['from_utc'][:10]} " in md  # each reset's heading has its date
    # A re-analysis says so, with its own command line.
    assert main(["analyze", str(tmp_path / "b"), "-o", str(tmp_path / "r")]) == 0
    again = json.loads((tmp_path / "r/report.json").read_text())["about"]
    assert again["analyzed_by"].startswith("capture-all analyze ") and again["manifest_sha256"] == digest
    assert "- **Analysed by:** `capture-all analyze " in (tmp_path / "r/report.md").read_text()


def iso_utc(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9:09d}Z"


PROBE = """<script>
const out = {lifelines: {}, r1: [], kernel: 0, width: innerWidth};
for (const g of document.querySelectorAll("g.lifeline")) {
  const b = g.getBBox();
  out.lifelines[g.dataset.vantage] = [b.x, b.y, b.width, b.height];
}
for (const g of document.querySelectorAll("g.packet.rst")) {
  const b = g.getBBox();
  out.r1.push([g.dataset.reset, g.textContent, b.width, b.height]);
}
out.kernel = document.querySelectorAll("g.kernel").length;
const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script></body>"""


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of a non-interlaced 8-bit PNG (the test's own decoder)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    o, idat, head = 8, b"", b""
    while o < len(data):
        n = int.from_bytes(data[o : o + 4], "big")
        kind, body = data[o + 4 : o + 8], data[o + 8 : o + 8 + n]
        head = body if kind == b"IHDR" else head
        idat += body if kind == b"IDAT" else b""
        o += 12 + n
    w, h = int.from_bytes(head[:4], "big"), int.from_bytes(head[4:8], "big")
    assert head[8] == 8 and head[9] in (2, 6) and head[12] == 0, head
    bpp = 3 if head[9] == 2 else 4
    raw, rows, prev = zlib.decompress(idat), [], bytearray(w * bpp)
    for r in range(h):
        f, line = raw[r * (w * bpp + 1)], bytearray(raw[r * (w * bpp + 1) + 1 : (r + 1) * (w * bpp + 1)])
        for i in range(len(line)):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(f)
            if pred is None:  # Paeth
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows


def test_report_html_in_a_real_browser_draws_every_vantage_and_the_forged_reset(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_lab.router_forges_resets(8081)
    report, _ = capture(capsys, clean_lab, tmp_path / "b", f"{CLIENT_IP}->{PROXY_FRONT}:8081",
                        f"curl -sS -m 3 http://{PROXY_FRONT}:8081/")  # fmt: skip
    page = (tmp_path / "b/report.html").read_text()
    # Self-contained: nothing to fetch (no script, stylesheet, image or font from anywhere).
    assert "<script" not in page and "<link" not in page and "src=" not in page and "@import" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        f"curl -sS -m 3 http://{PROXY_FRONT}:8081/", ""
    )
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    vantages = {f"{h['name']}/{c['interface']}" for h in manifest["hosts"] for c in h["captures"]}
    r1 = first(report)
    assert r1["origin"]["kind"] == "middlebox" and r1["origin"]["host"] == "router"

    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE))
    dom = chromium("--dump-dom", probe.as_uri()).stdout
    seen = json.loads(html.unescape(dom.split('<pre id="probe">')[1].split("</pre>")[0]))
    assert set(seen["lifelines"]) >= vantages, seen["lifelines"]
    for name in vantages:  # laid out by the browser: a tall line with its label
        x, y, w, h = seen["lifelines"][name]
        assert h > 200 and w > 10 and x > 100, (name, seen["lifelines"][name])
    drawn = [r for r in seen["r1"] if r[0] == r1["id"]]
    assert drawn and all(w > 10 and h > 0 for _, _, w, h in drawn), seen["r1"]
    assert any(f"{r1['id']} forged" in text for _, text, _, _ in drawn), drawn
    assert seen["kernel"] >= 1  # the client's kernel received it

    shot = tmp_path / "report.png"
    chromium("--window-size=1300,1600", f"--screenshot={shot}", (tmp_path / "b/report.html").as_uri())
    w, h, rows = png_pixels(shot)
    bpp = len(rows[0]) // w
    red = sum(
        1 for row in rows for i in range(0, len(row), bpp) if row[i] > 180 and row[i + 1] < 60 and row[i + 2] < 60
    )
    assert red > 100, red  # the reset arrows are drawn, in red
    dark = sum(1 for row in rows for i in range(0, len(row), bpp) if row[i] < 100 and row[i + 1] < 100)
    assert dark > 2000  # text and lines, not a blank page


def test_haproxys_own_log_line_is_on_the_timeline_and_cited(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The backend aborts mid-response, HAProxy (TCP mode, nolinger) resets the client: HAProxy's
    log says the server aborted in the data phase (SD) for the client's address and port; it comes
    back from the proxy, is matched to the client's connection, agrees with the packets, and is on
    the timeline on the aligned clock, within its millisecond."""
    report, stdout = propagated(capsys, clean_lab, tmp_path / "b")
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    proxy = next(h for h in manifest["hosts"] if h["name"] == "proxy")
    assert "proxy/logs/log.1.txt" in proxy["logs"] and "proxy/logs/log.1.meta" in manifest["files"]
    r1 = first(report)
    to_client = [r for r in report["resets"] if r["tuple"]["dst"] == CLIENT_IP]
    assert to_client, report["resets"]
    r2 = to_client[0]
    port = r2["tuple"]["dport"]
    mine = [
        x for x in report["log_lines"] if x["format"] == "haproxy" and x["client"] == {"ip": CLIENT_IP, "port": port}
    ]
    assert len(mine) == 1, report["log_lines"]
    line = mine[0]
    assert line["meaning"] == "upstream_reset" and line["says"].startswith("termination state SD")
    assert line["reset_id"] == r2["id"] and line["resolution_ns"] == 10**6
    assert line["time_utc"] == iso_utc(line["time_ns"])
    # HAProxy writes the line when it closes the session: within its millisecond of its own reset.
    at_proxy = next(o for o in r2["seen_at"] if o["host"] == "proxy")
    assert abs(line["time_ns"] - at_proxy["time_ns"]) < 50_000_000, (line["time_ns"], at_proxy["time_ns"])
    cited = [e for e in r2["evidence"] if e["kind"] == "log_agrees"]
    assert cited and f'HAProxy on proxy logged "{line["says"]}" for {CLIENT_IP}:{port}' in cited[0]["text"], r2
    assert f"(backend sent {r1['id']})" in cited[0]["text"]
    assert any(x["kind"] == "log" and x["reset_id"] == r2["id"] for x in report["timeline"])
    assert "proxy haproxy log (to the ms): termination state SD" in stdout
