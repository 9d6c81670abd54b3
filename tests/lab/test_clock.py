"""Clock alignment on real lab captures: shift hosts' timestamps by known amounts, recover them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.evidence import analyze_bundle
from tests.lab.labnet import PROXY_FRONT, Lab
from tests.lab.test_scenarios import CLIENTS, capture
from tests.pcapgen import shift_pcap

SHIFTS = {"client": 0, "router": 0, "proxy": 2_500_000_000, "backend": -700_000_000}


def summary(root: Path) -> tuple[object, ...]:
    a, report = analyze_bundle(root)
    return a, [(r["id"], r["origin"]["kind"], r["origin"]["host"], r["chain_role"], r["cause"])
               for r in report["resets"]]  # fmt: skip


def test_offsets_are_recovered_and_the_verdict_does_not_change(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Scenario g: backend resets, the proxy propagates; every host sees some of it.
    flow = f"198.18.1.10->{PROXY_FRONT}:8082"
    capture(capsys, clean_lab, tmp_path / "b", flow, f"{CLIENTS} hold {PROXY_FRONT} 8082 /partial 1")
    before, truth = summary(tmp_path / "b")
    shifted = tmp_path / "shifted"
    shutil.copytree(tmp_path / "b", shifted)
    for host, shift in SHIFTS.items():
        for pcap in (shifted / host).glob("*.pcap"):
            pcap.write_bytes(shift_pcap(pcap.read_bytes(), shift))
    after, got = summary(shifted)
    assert got == truth  # same resets, same origins, chains and causes
    c = after.clocks  # type: ignore[attr-defined]
    assert c is not None and set(c.method.values()) <= {"reference", "packets"}, c.method
    ref_shift = SHIFTS[c.reference]
    for host, shift in SHIFTS.items():
        error = c.offset_ns[host] + (shift - ref_shift)
        assert abs(error) <= 100_000, (host, c.offset_ns[host], shift)
    # Unshifted, the lab's hosts share one kernel clock: the estimates say so too.
    assert all(abs(o) <= 100_000 for o in before.clocks.offset_ns.values())  # type: ignore[attr-defined]
