"""Clock alignment on real lab captures: shift and skew hosts' timestamps by known amounts,
recover them; fall back on the real SSH probe for a host sharing no packet."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from analysis.decode import decode
from analysis.pcap import Record
from analysis.report import clock_line
from orchestrator.evidence import analyze_bundle
from tests.lab import test_scenarios as scenarios
from tests.lab.labnet import BACKEND_IP, CLIENT_IP, PROXY_FRONT, Lab
from tests.lab.test_scenarios import CLIENTS, capture
from tests.pcapgen import shift_pcap

SHIFTS = {"client": 0, "router": 0, "proxy": 2_500_000_000, "backend": -700_000_000}
# A free-running clock can be this far off. At 50 ppm over scenario a's 1.6 s (80 us) the windows'
# own uncertainty (15-40 us) sometimes made a constant fit as well as the line: the drift check
# failed in 2 of 8 runs before this session's changes and 1 of 6 after (measured, the test alone).
CLIENT_PPM = 200.0


def drift_ns(host: str, t_ns: int, since_ns: int) -> float:
    """How far a host's shifted clock has run away from its constant shift at time t."""
    return CLIENT_PPM * (t_ns - since_ns) / 1e6 if host == "client" else 0.0


def capture_span_ns(bundle: Path, host: str) -> int:
    """First to last packet of a host's captures."""
    import dpkt

    times = []
    for pcap in (bundle / host).glob("*.pcap"):
        with pcap.open("rb") as fh:
            times += [int(ts * 10**9) for ts, _ in dpkt.pcap.UniversalReader(fh)]
    return max(times) - min(times) if times else 0


def assert_aligned(c: Any, since: int, t0: dict[Any, int], t1: dict[Any, int], span_ns: int = 0) -> None:
    """Every offset within 100 us of the hosts' shifts, give or take the client's drift between the
    traffic and the instant the offset is quoted (``at_ns``: read before alignment, it can lie
    0.7 s from the traffic), or, where the pair's fit is a constant (a scenario too short for the
    drift to show), plus the drift over the client's whole capture (``span_ns``): a constant is
    the offset at some instant in it; and every reported time moved by exactly what the reference clock's
    shift and drift make it at that time (within 100 us). Where the packets bound an offset less
    tightly than 100 us, the bound the report states is what must hold: a scenario with two packets
    a pair (e: a SYN and its RST) on a loaded machine, one of them 0.4 ms late on its veth, has
    "+388.9 us +-414 us" where the truth is 0, and the report says so."""
    ref = c.reference
    for host, offset in c.offset_ns.items():
        slack = abs(drift_ns("client", c.at_ns, since)) if "client" in (host, ref) else 0.0
        if "client" in (host, ref) and not c.drift_ppm.get(host) and not c.drift_ppm.get(ref):
            slack += CLIENT_PPM * span_ns / 1e6
        bound = max(100_000, c.uncertainty_ns.get(host, 0))
        assert abs(offset - (SHIFTS[ref] - SHIFTS[host])) <= bound + slack, (host, offset, ref, bound, slack)
    assert t0.keys() == t1.keys()
    moved = {k: t1[k] - t0[k] - SHIFTS[ref] - drift_ns(ref, t0[k], since) for k in t0}
    assert all(abs(m) <= 100_000 for m in moved.values()), moved


SCENARIOS = {
    # a: idle reuse, traffic spread over ~1.6 s (so 50 ppm moves the client's clock by ~80 us in it)
    "a": (f"{CLIENT_IP}->{BACKEND_IP}:81", f"{CLIENTS} reuse {BACKEND_IP} 81 1.6", "3"),
    # b: the proxy's own policy (HAProxy rejects /admin)
    "b": (f"{CLIENT_IP}->{PROXY_FRONT}:8083", f"{CLIENTS} hold {PROXY_FRONT} 8083 /admin 1", "2"),
    # c: the router forges the reset
    "c": (f"{CLIENT_IP}->{PROXY_FRONT}:8081", f"curl -sS -m 3 http://{PROXY_FRONT}:8081/", "2"),
    # e: connection refused
    "e": (f"{CLIENT_IP}->{PROXY_FRONT}:9999", f"curl -sS -m 3 http://{PROXY_FRONT}:9999/", "2"),
    # f: the backend closes with unread data
    "f": (f"{CLIENT_IP}->{BACKEND_IP}:80", f"{CLIENTS} upload {BACKEND_IP} 80 /early 2000000", "2"),
    # g: the backend resets, the proxy propagates; every host sees part of it
    "g": (f"{CLIENT_IP}->{PROXY_FRONT}:8082", f"{CLIENTS} hold {PROXY_FRONT} 8082 /partial 1", "2"),
}


def summary(root: Path) -> tuple[Any, dict[str, Any]]:
    return analyze_bundle(root)


def verdicts(report: dict[str, Any]) -> list[tuple[object, ...]]:
    return [(r["id"], r["origin"]["kind"], r["origin"]["host"], r["chain_role"], r["cause"]) for r in report["resets"]]


def seen_times(report: dict[str, Any]) -> dict[tuple[str, str, str, str], int]:
    """Every observation of every reset, packets and the hosts' kernel witness events."""
    seen = {
        (r["id"], o["host"], o["iface"], o["direction"]): o["time_ns"] for r in report["resets"] for o in r["seen_at"]
    }
    for r in report["resets"]:
        k = r["kernel"]
        for e in ([k["sent"]] if k["sent"] else []) + k["received"]:
            seen[(r["id"], e["host"], "kernel", e["event"])] = e["time_ns"]
    return seen


def shift_sync(text: str, shift: int, ppm: float, since_ns: int) -> str:
    """The witness's wall-clock readings (``witness.sync``) as a host with that clock took them."""
    out = []
    for line in text.splitlines():
        label, k, lo, hi = line.split()
        moved = [int(t) + shift + round(ppm * (int(t) - since_ns) / 1e6) for t in (lo, hi)]
        out.append(f"{label} {k} {moved[0]} {moved[1]}")
    return "\n".join(out) + "\n"


def shifted_copy(src: Path, dst: Path, since_ns: int, shifts: dict[str, int], ppm: dict[str, float],
                 keep: dict[str, Any] | None = None) -> None:  # fmt: skip
    shutil.copytree(src, dst)
    for host, shift in shifts.items():
        for pcap in (dst / host).glob("*.pcap"):
            data = pcap.read_bytes()
            pcap.write_bytes(shift_pcap(data, shift, ppm.get(host, 0.0), since_ns, (keep or {}).get(host)))
        sync = dst / host / "witness/witness.sync"
        if sync.is_file():
            sync.write_text(shift_sync(sync.read_text(), shift, ppm.get(host, 0.0), since_ns))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_offsets_and_drift_are_recovered_and_the_verdict_does_not_change(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str], scenario: str
) -> None:
    flow, reproduce, duration = SCENARIOS[scenario]
    if scenario == "c":
        clean_lab.router_forges_resets(8081)
    capture(capsys, clean_lab, tmp_path / "b", flow, reproduce, duration)
    before, report0 = summary(tmp_path / "b")
    since = before.clocks.at_ns
    shifted_copy(tmp_path / "b", tmp_path / "s", since, SHIFTS, {"client": CLIENT_PPM})
    after, report1 = summary(tmp_path / "s")
    assert verdicts(report1) == verdicts(report0)  # same resets, origins, chains and causes
    c = after.clocks
    assert set(c.method.values()) <= {"reference", "packets"}, c.method
    t0, t1 = seen_times(report0), seen_times(report1)
    assert any(k[2] == "kernel" for k in t0), t0  # the witness's events move with their host's clock
    assert_aligned(c, since, t0, t1, capture_span_ns(tmp_path / "s", "client"))
    if scenario == "a":
        # Traffic over 1.6 s: the client's drift shows. Window estimates good to 15-40 us over
        # 1.6 s bound the rate to about +-50 ppm (measured at 200 ppm, 12 runs: 168 to 194).
        rel = {h: c.drift_ppm[h] - c.drift_ppm["client"] for h in c.drift_ppm if h != "client"}
        assert rel and all(abs(d + CLIENT_PPM) < 0.25 * CLIENT_PPM for d in rel.values()), rel
    # Unshifted, the lab's hosts share one kernel clock: the estimates say so too, within 100 us or
    # the bound they state where the packets bound them less tightly (as in assert_aligned).
    u = before.clocks.uncertainty_ns
    off = {h: (o, u.get(h, 0)) for h, o in before.clocks.offset_ns.items()}
    assert all(abs(o) <= max(100_000, b) for o, b in off.values()), off


def test_a_host_sharing_no_packet_falls_back_on_the_ssh_probe(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow, reproduce, duration = SCENARIOS["g"]
    capture(capsys, clean_lab, tmp_path / "b", flow, reproduce, duration)
    manifest = json.loads((tmp_path / "b/manifest.json").read_text())
    probes = {h["name"]: [dict(p) for p in h["clock_probes"]] for h in manifest["hosts"]}
    # The real probe over real sshd: start and end, each within its bound of the shared clock.
    assert all([p["phase"] for p in ps] == ["start", "end"] for ps in probes.values()), probes
    assert all(abs(p["offset_ns"]) <= p["bound_ns"] < 50_000_000 for ps in probes.values() for p in ps), probes
    _, report0 = summary(tmp_path / "b")

    # The backend's clock is 700 ms behind, and its capture keeps only what it sent: no segment is
    # then seen both ways with another host. Its probes say -700 ms, as they would on such a host.
    def outgoing(_t: int, frame: bytes) -> bool:
        seg = decode(Record(0, frame, 1))
        return seg is not None and seg.src == BACKEND_IP

    shifted_copy(tmp_path / "b", tmp_path / "s", 0, {"backend": -700_000_000}, {}, {"backend": outgoing})
    for h in manifest["hosts"]:
        for p in h["clock_probes"] if h["name"] == "backend" else []:
            p["offset_ns"] -= 700_000_000
    (tmp_path / "s/manifest.json").write_text(json.dumps(manifest))
    a, report = summary(tmp_path / "s")
    assert verdicts(report) == verdicts(report0)
    hosts = {h["name"]: h for h in report["hosts"]}
    clock = hosts["backend"]["clock"]
    assert clock["method"] == "probe", clock
    assert abs(clock["offset_ns"] - 700_000_000) <= clock["uncertainty_ns"] < 50_000_000, clock
    assert [p["offset_ns"] for p in clock["probe"]] == [p["offset_ns"] - 700_000_000 for p in probes["backend"]]
    assert any(re.match(r"backend's clock is 70\d\.\d ms behind the controller's", f) for f in report["clock_findings"])
    line = clock_line(a)
    assert line is not None and re.search(r"backend \+0\.(69|70)\d+ s \+-\d+ us from the SSH probe", line), line

    # Without its probes either, the backend's time is declared unaligned.
    for h in manifest["hosts"]:
        if h["name"] == "backend":
            h["clock_probes"] = []
    (tmp_path / "s/manifest.json").write_text(json.dumps(manifest))
    _, report = summary(tmp_path / "s")
    assert {h["name"]: h["clock"]["method"] for h in report["hosts"]}["backend"] == "none"
    assert any("backend not aligned" in c or "Clock of backend" in c for c in report["caveats"]), report["caveats"]


def test_scenario_d_verdict_survives_shifted_and_drifting_clocks(clean_lab: Lab, tmp_path: Path) -> None:
    """d (the backend killed and restarted) needs its own choreography: run it, then shift it."""
    scenarios.test_d_backend_killed_with_connections_open(clean_lab, tmp_path)
    before, report0 = summary(tmp_path / "b")
    shifted_copy(tmp_path / "b", tmp_path / "s", before.clocks.at_ns, SHIFTS, {"client": CLIENT_PPM})
    after, report1 = summary(tmp_path / "s")
    assert verdicts(report1) == verdicts(report0)
    assert_aligned(after.clocks, before.clocks.at_ns, seen_times(report0), seen_times(report1),
                   capture_span_ns(tmp_path / "s", "client"))  # fmt: skip
