"""merged.pcapng read by the real tools: capinfos lists one interface per host/interface, tshark
reads every packet in the aligned order with the resets' comments, at the report's times."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.lab.labnet import CLIENT_IP, PROXY_FRONT, Lab
from tests.lab.test_scenarios import CLIENTS, capture, first


def tool(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def test_wireshark_reads_one_interface_per_hop_resets_commented_on_the_aligned_clock(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The backend aborts mid-response, HAProxy (nolinger) resets the client: a chain of two.
    report, stdout = capture(
        capsys,
        clean_lab,
        tmp_path / "b",
        f"{CLIENT_IP}->{PROXY_FRONT}:8082",
        f"{CLIENTS} hold {PROXY_FRONT} 8082 /partial 1",
    )
    merged = tmp_path / "b" / "merged.pcapng"
    assert f"{merged}: " in stdout and "resets commented" in stdout
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
    assert report["schema"] == "capture-all/report/3"
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
