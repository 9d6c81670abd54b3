"""``capture-all``: the only place that prints, colours, and chooses exit statuses.

Exit statuses:
    0  every host captured and its evidence is in the bundle
    1  internal error (a debug log is written into the bundle and named)
    2  bad input: inventory, flow, options (one line, nothing contacted)
    3  partial: some hosts failed; the others' evidence is in the bundle
    4  no host produced evidence
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import anyio

from analysis.pcap import NotACapture
from analysis.resets import VantageSummary, summarize
from orchestrator import __version__
from orchestrator.bundle import Bundle, Manifest, verify
from orchestrator.errors import BundleError, UsageError
from orchestrator.flow import parse_flow
from orchestrator.inventory import load_inventory
from orchestrator.plan import build_plan
from orchestrator.progress import Progress
from orchestrator.run import RunOptions, RunResult, run_capture
from remote.commands import UnsafeValue
from remote.parse import host_addresses

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_PARTIAL, EXIT_NOTHING = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    if not num.isdigit() or int(num) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 200M")
    return int(num) * units[unit]


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def conv(text: str) -> float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return v

    return conv


def capture_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="capture-all",
        description="Capture a TCP flow on every hop at once over SSH, and show who sent the reset.",
        epilog="Also: capture-all analyze BUNDLE. Exit: 0 ok, 2 bad input, 3 partial, 4 nothing captured.",
    )
    p.add_argument("--version", action="version", version=f"capture-all {__version__}")
    p.add_argument("-i", "--inventory", required=True, help="inventory TOML file (see inventory.example.toml)")
    p.add_argument("-f", "--flow", required=True, help="CLIENT[:PORT]->SERVER:PORT, e.g. '10.0.3.41->10.0.7.12:5432'")
    p.add_argument("-d", "--duration", type=_positive(float), default=30.0, help="seconds to capture (default 30)")
    p.add_argument("-o", "--out", type=Path, help="bundle folder (default ./capture-all-<UTC time>)")
    p.add_argument("--max-packets", type=_positive(int), default=1_000_000, help="per interface (default 1000000)")
    p.add_argument("--max-bytes", type=_size, default=200 << 20, help="per host, e.g. 50M (default 200M)")
    p.add_argument("--snaplen", type=_positive(int), default=262144, help="bytes kept per packet (default 262144)")
    p.add_argument(
        "--grace",
        type=_positive(int),
        default=10,
        help="the host stops its capture by itself at duration+grace seconds (default 10)",
    )
    p.add_argument(
        "--keep",
        type=_positive(int),
        default=600,
        help="the host deletes evidence nobody collected this many seconds after it ended (default 600)",
    )
    p.add_argument(
        "--reproduce", metavar="CMD", help="shell command run on the client host once every capture is armed"
    )
    p.add_argument("--reproduce-on", metavar="HOST", help="run --reproduce there instead of the first client host")
    p.add_argument("--reproduce-timeout", type=_positive(int), default=60, help="seconds (default 60)")
    p.add_argument("--hosts", help="comma-separated subset of inventory host names")
    p.add_argument("--concurrency", type=_positive(int), default=32, help="SSH connections opened at once (default 32)")
    p.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="trust and record keys of hosts not yet in known_hosts (a changed key is always refused)",
    )
    p.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    return p


def analyze_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="capture-all analyze", description="List the resets in a bundle's captures, per host.")
    p.add_argument("bundle", type=Path)
    return p


def _host_facts(host_dir: Path) -> tuple[set[str], set[bytes]]:
    def read(name: str) -> str:
        try:
            return (host_dir / "before" / name).read_text()
        except OSError:
            return ""

    return host_addresses(read("ip_addr.txt"), read("ip_link.txt"))


def _describe(name: str, iface: str, s: VantageSummary) -> list[str]:
    lines = []
    for r in s.resets:
        arrow = f"{r.src}:{r.sport} > {r.dst}:{r.dport}"
        ttl = f"ttl {r.ttl}"
        if r.sender_ttls:
            ttl += f" (sender's other packets here: ttl {', '.join(map(str, r.sender_ttls))})"
        t = dt.datetime.fromtimestamp(r.ts_ns // 1_000_000_000, dt.timezone.utc).strftime("%H:%M:%S")
        frac = f"{r.ts_ns % 1_000_000_000:09d}"[:6]
        lines.append(
            f"    {t}.{frac} {name}/{iface} {r.direction:>3} RST [{r.flags}] {arrow} seq {r.seq} ack {r.ack} {ttl}"
        )
    return lines


def summarize_bundle(root: Path, out: list[str]) -> int:
    """Append per-host reset lines to ``out``; returns how many resets were seen in all."""
    total = 0
    manifest = json.loads((root / "manifest.json").read_text())
    for host in manifest["hosts"]:
        name = host["name"]
        caps = host.get("captures", [])
        packets = sum(c.get("packets") or 0 for c in caps)
        drops = sum(c.get("kernel_drops") or 0 for c in caps)
        status = host["status"]
        head = f"  {name:<12} {host['role']:<8} {status:<7}"
        if status == "failed":
            out.append(f"{head} {host.get('failed_phase')}: {host.get('error')}")
            continue
        ips, macs = _host_facts(root / name)
        details: list[str] = []
        resets = 0
        for c in caps:
            try:
                with (root / c["path"]).open("rb") as fh:
                    s = summarize(fh, ips, macs)
            except (OSError, NotACapture) as exc:
                details.append(f"    {c['path']}: unreadable ({exc})")
                continue
            resets += len(s.resets)
            details.extend(_describe(name, c["interface"], s))
            if s.stats.truncated or s.stats.corrupt:
                details.append(f"    {c['path']}: {'; '.join(s.stats.problems)}")
        total += resets
        out.append(f"{head} {packets} packets, {drops} dropped by kernel, {resets} RST")
        out.extend(details)
    return total


def _exit_for(result: RunResult) -> int:
    statuses = [r.status for r in result.records]
    if all(s == "ok" for s in statuses):
        return EXIT_OK
    if any(s in ("ok", "partial") for s in statuses):
        return EXIT_PARTIAL
    return EXIT_NOTHING


async def _capture(args: argparse.Namespace) -> int:
    from remote.ssh import SshConnector  # the CLI is the one place that picks the real transport

    flow = parse_flow(args.flow)
    inv, digest = load_inventory(args.inventory)
    only = [h.strip() for h in args.hosts.split(",")] if args.hosts else None
    plan = build_plan(flow, inv, inventory_sha256=digest, only=only, accept_new_host_keys=args.accept_new_host_keys)
    if args.reproduce_on and args.reproduce_on not in {h.name for h in plan.hosts}:
        raise UsageError(f"--reproduce-on: {args.reproduce_on} is not a host of this run")
    opts = RunOptions(
        duration=args.duration,
        grace=args.grace,
        max_packets=args.max_packets,
        max_bytes=args.max_bytes,
        snaplen=args.snaplen,
        keep=args.keep,
        concurrency=args.concurrency,
        reproduce=args.reproduce,
        reproduce_on=args.reproduce_on,
        reproduce_timeout=args.reproduce_timeout,
    )
    if opts.reproduce is not None:
        from remote.commands import reproduce

        reproduce(opts.reproduce, timeout_s=opts.reproduce_timeout)  # validate before contacting anyone
    now = dt.datetime.now(dt.timezone.utc)
    root = args.out or Path(f"capture-all-{now.strftime('%Y%m%dT%H%M%SZ')}")
    bundle = Bundle.create(root)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    progress = Progress([h.name for h in plan.hosts], live=False if args.plain else None)
    manifest = Manifest(
        version=__version__,
        created_utc=now.isoformat(),
        inventory=str(args.inventory),
        inventory_sha256=digest,
        flow=flow.text,
        legs=[f"{leg.name}: {leg.bpf()}" for leg in plan.legs],
        options={k: v for k, v in vars(opts).items()},
        hosts=[],
    )
    stop = anyio.Event()
    result: RunResult | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, stop, tg.cancel_scope)
            result = await run_capture(plan, SshConnector(), bundle, opts, progress, stop)
            tg.cancel_scope.cancel()
    except BaseException:
        bundle.write("debug.log", traceback.format_exc())
        raise
    finally:
        progress.close()
        if result is not None:
            manifest.hosts = result.records
            manifest.start_skew_ms = result.start_skew_ms
            manifest.exit_status = _exit_for(result)
        bundle.write_manifest(manifest)
    assert result is not None
    code = _exit_for(result)
    problems = verify(root)
    lines = [f"bundle: {root.resolve()}"]
    lines.append(f"  manifest.json: {len(manifest.files)} files, SHA-256 {'verified' if not problems else 'MISMATCH'}")
    if result.start_skew_ms is not None:
        lines.append(f"  captures armed within {result.start_skew_ms:.0f} ms of each other")
    summarize_bundle(root, lines)
    print("\n".join(lines))
    return code


async def _watch_signals(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    """First Ctrl-C: stop capturing now and still collect. Second: give up."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stop.is_set():
                scope.cancel()
                return
            print("\nstopping early: collecting what was captured (Ctrl-C again to abandon)", file=sys.stderr)
            stop.set()


def _analyze(args: argparse.Namespace) -> int:
    root: Path = args.bundle
    if not (root / "manifest.json").is_file():
        raise UsageError(f"{root}: not a capture-all bundle (no manifest.json)")
    lines = [f"bundle: {root.resolve()}"]
    problems = verify(root)
    lines.append("  manifest.json: SHA-256 " + ("verified" if not problems else "MISMATCH: " + "; ".join(problems)))
    summarize_bundle(root, lines)
    print("\n".join(lines))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["analyze"]:
            return _analyze(analyze_parser().parse_args(argv[1:]))
        args = capture_parser().parse_args(argv)
        return anyio.run(_capture, args, backend="asyncio")
    except (UsageError, UnsafeValue) as exc:
        print(f"capture-all: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BundleError as exc:
        print(f"capture-all: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("capture-all: abandoned; every host stops its capture by itself", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
