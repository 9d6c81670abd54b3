"""Benchmark: capture-all's full analysis vs tshark's and tcpdump's reset filters, same files.

    scripts/bench [--packets 2000000] [--flows 5000] [--resets 5] [--runs 3] [--syns] [--merged]

Generates (once, cached under bench/out/) bundles of three vantages, then runs, side by side:
  capture-all analyze BUNDLE                        (read, correlate, attribute, write reports)
  tshark -r F -Y 'tcp.flags.reset==1'               (per file)
  tcpdump -r F 'tcp[tcpflags] & tcp-rst != 0'       (per file)
and prints wall time and peak memory (each process's max RSS, from wait4) with ratios.
A half-size bundle is analysed too: peak memory should not follow the files' size. ``--merged``
adds what re-analysis into a folder costs (``analyze BUNDLE -o DIR``: the reports and
merged.pcapng, a fresh folder each run) against the analysis alone, the two alternating, medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in MiB of one command (its output discarded)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 5, 6):
        raise SystemExit(f"{argv[0]} failed with {proc.returncode}")
    return elapsed, usage.ru_maxrss // 1024


def bundle(packets: int, flows: int, resets: int, syns: bool = False) -> Path:
    path = OUT / f"bundle-{packets}-{flows}-{resets}{'-syns' if syns else ''}"
    if not (path / "manifest.json").exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), str(path), "--packets", str(packets),
                        "--flows", str(flows), "--resets", str(resets), *(["--syns"] if syns else [])],
                       check=True)  # fmt: skip
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=5000)
    ap.add_argument("--resets", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="capture-all runs (the best is reported)")
    ap.add_argument("--baseline-runs", type=int, default=1, help="tshark/tcpdump runs per file")
    ap.add_argument("--syns", action="store_true", help="every connection opens in the capture (a SYN each)")
    ap.add_argument("--merged", action="store_true", help="also time analyze -o DIR (merged.pcapng) against analyze")
    args = ap.parse_args()
    big = bundle(args.packets, args.flows, args.resets, args.syns)
    half = bundle(args.packets // 2, args.flows, args.resets, args.syns)
    files = sorted(big.glob("*/eth0.pcap"))
    size = sum(f.stat().st_size for f in files)
    print(f"bundle: {big} ({len(files)} vantages, {args.packets} packets each, {size / 2**20:.0f} MiB)")
    cli = [sys.executable, "-m", "orchestrator.cli", "analyze", "--json"]
    cold = run([*cli, str(big)])  # numba compiles (or loads its cache) on the first run
    ours = min((run([*cli, str(big)]) for _ in range(args.runs)), key=lambda r: r[0])
    ours_half = min((run([*cli, str(half)]) for _ in range(args.runs)), key=lambda r: r[0])
    results = {"capture-all analyze (3 vantages)": ours}
    for tool, argv in (("tshark", ["tshark", "-n", "-r", "{}", "-Y", "tcp.flags.reset==1"]),
                       ("tcpdump", ["tcpdump", "-n", "-r", "{}", "tcp[tcpflags] & tcp-rst != 0"])):  # fmt: skip
        if shutil.which(argv[0]) is None:
            print(f"{tool}: not installed, skipped")
            continue
        total, peak = 0.0, 0
        for f in files:
            cmd = [a.replace("{}", str(f)) for a in argv]
            t, m = min((run(cmd) for _ in range(args.baseline_runs)), key=lambda r: r[0])
            total, peak = total + t, max(peak, m)
        results[f"{tool} reset filter (3 files)"] = (total, peak)
    print(f"{'':38} {'seconds':>8} {'peak MiB':>9} {'vs capture-all':>15}")
    for name, (t, m) in results.items():
        print(f"{name:38} {t:8.2f} {m:9d} {t / ours[0]:14.1f}x")
    if args.merged:
        merged_cost(cli, big, max(args.runs, 5))
    print(f"capture-all first run (cold numba cache): {cold[0]:.2f} s, {cold[1]} MiB")
    print(
        f"capture-all on the half-size bundle: {ours_half[0]:.2f} s, {ours_half[1]} MiB "
        f"(full size: {ours[1]} MiB; memory ratio {ours[1] / max(ours_half[1], 1):.2f} for 2x the data)"
    )


def merged_cost(cli: list[str], bundle_dir: Path, runs: int) -> None:
    """analyze BUNDLE -o DIR (reports and merged.pcapng into a fresh folder) against the same
    analysis printing its report only, alternating run by run; the folder is removed between runs,
    outside the timing."""
    dest = OUT / "merged-run"
    alone, into = [], []
    for _ in range(runs):
        alone.append(run([*cli, str(bundle_dir)]))
        shutil.rmtree(dest, ignore_errors=True)
        into.append(run([*cli[:-1], str(bundle_dir), "-o", str(dest)]))
        shutil.rmtree(dest)
    a = statistics.median(t for t, _ in alone)
    b = statistics.median(t for t, _ in into)
    peak_a, peak_b = max(m for _, m in alone), max(m for _, m in into)
    print(f"analyze -o DIR (with merged.pcapng), median of {runs}: {b:.2f} s, {peak_b} MiB; "
          f"analyze alone: {a:.2f} s, {peak_a} MiB; ratio {b / a:.2f}x")


if __name__ == "__main__":
    main()
