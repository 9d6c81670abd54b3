"""merged.pcapng read by the real tools: capinfos lists one interface per host/interface, tshark
reads every packet in the aligned order with the resets' comments, at the report's times."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

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
