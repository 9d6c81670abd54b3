"""``capture-all``: the only place that prints, colours, and chooses exit statuses.

Exit statuses of a capture run (``capture-all analyze`` has its own, see analyze_parser):
    0  every host captured and its evidence is in the bundle
    1  internal error (a debug log is written into the bundle and named)
    2  bad input: inventory, flow, options (one line, nothing contacted)
    3  partial: some hosts failed; the others' evidence is in the bundle
    4  no host produced evidence
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import __version__
from orchestrator.bundle import Bundle, verify
from orchestrator.errors import BundleError, UsageError
from orchestrator.progress import printable
from remote.commands import UnsafeValue

if TYPE_CHECKING:
    import anyio

    from analysis.verdict import Analysis
    from orchestrator.flow import Flow
    from orchestrator.manifest import Manifest
    from orchestrator.plan import Plan
    from orchestrator.run import RunOptions, RunResult

# Each path imports what it needs where it starts: the capture path's modules (pydantic, anyio,
# asyncssh) would slow `capture-all analyze`, and the analysis (numpy, numba) would delay the
# first SSH connection of a capture; it is loaded while the hosts capture.

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_PARTIAL, EXIT_NOTHING = 0, 1, 2, 3, 4
EXIT_ABANDONED = 130
EXIT_NO_RESET, EXIT_UNATTRIBUTED, EXIT_NOTHING_CAPTURED = 5, 6, 7  # analyze only
EXIT_MODIFIED = 8  # analyze: a file of the bundle is missing or differs from its manifest digest
WITNESS_BUFFER_MAX = 64 << 20  # per CPU


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


_COMMANDS = (
    ("capture", "(the default) capture the flow on every hop at once for --duration, then name the hop"),
    ("watch", "stay armed on every hop; keep the seconds around the flow's first RST (repeat incidents)"),
    ("analyze", "analyse a bundle again, offline, or pcaps taken by hand (--pcap HOST=FILE)"),
    ("plan", "show what a capture would run on each host, its filter and bounds; contacts nobody"),
    ("init", "write an inventory from your ~/.ssh/config or an Ansible inventory"),
    ("audit", "check the idle-timeout chain along the flow's path (reads configs, captures nothing)"),
    ("schema", "print report.json's JSON Schema"),
)
SUBCOMMANDS = tuple(name for name, _ in _COMMANDS if name != "capture")
_EXIT_CAPTURE = (
    (0, "every host captured and its evidence is in the bundle"),
    (1, "internal error (a debug log is written into the bundle and named)"),
    (2, "bad input: inventory, flow or options (one line; nothing contacted)"),
    (3, "partial: some hosts failed; the others' evidence is in the bundle"),
    (4, "no host produced evidence"),
    (130, "abandoned with a second Ctrl-C (each host still stops and cleans up by itself)"),
)


def _parser(prog: str, description: str, examples: tuple[str, ...], exits: tuple[tuple[int, str], ...],
            extra: str = "") -> _Parser:  # fmt: skip
    """A parser whose --help ends with examples and every exit status."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    epilog += "\n\nexit status:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in exits)
    if extra:
        epilog += "\n\n" + extra
    fmt = argparse.RawDescriptionHelpFormatter
    return _Parser(prog=prog, description=description, epilog=epilog, formatter_class=fmt)


def _what(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to capture")
    g.add_argument("-i", "--inventory", required=True, help="inventory TOML file (capture-all init writes one)")
    g.add_argument("-f", "--flow", required=True, help="CLIENT[:PORT]->SERVER:PORT, e.g. '10.0.3.41->10.0.7.12:5432'")
    g.add_argument("--hosts", help="comma-separated subset of inventory host names")


def _ssh(p: argparse.ArgumentParser, *, concurrency: bool = True) -> None:
    g = p.add_argument_group("ssh")
    g.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="trust and record keys of hosts not yet in known_hosts (a changed key is always refused)",
    )
    if concurrency:
        g.add_argument(
            "--concurrency", type=_positive(int), default=100, help="SSH handshakes in flight at once (default 100)"
        )


def _capture_options(p: argparse.ArgumentParser) -> None:
    """The capture's options, shared by ``capture-all`` and ``capture-all plan``."""
    _what(p)
    g = p.add_argument_group("bounds (each host enforces them itself, even if this controller dies)")
    g.add_argument("-d", "--duration", type=_positive(float), default=30.0, help="seconds to capture (default 30)")
    g.add_argument("--max-packets", type=_positive(int), default=1_000_000, help="per interface (default 1000000)")
    g.add_argument("--max-bytes", type=_size, default=200 << 20, help="per host, e.g. 50M (default 200M)")
    g.add_argument("--snaplen", type=_positive(int), default=262144, help="bytes kept per packet (default 262144)")
    g.add_argument(
        "--grace",
        type=_positive(int),
        default=10,
        help="the host stops its capture by itself at duration+grace seconds (default 10)",
    )
    g.add_argument(
        "--keep",
        type=_positive(int),
        default=600,
        help="the host deletes evidence nobody collected this many seconds after it ended (default 600)",
    )
    g = p.add_argument_group("reproducing the reset")
    g.add_argument(
        "--reproduce", metavar="CMD", help="shell command run on the client host once every capture is armed"
    )
    g.add_argument("--reproduce-on", metavar="HOST", help="run --reproduce there instead of the first client host")
    g.add_argument("--reproduce-timeout", type=_positive(int), default=60, help="seconds (default 60)")
    g = p.add_argument_group("kernel reset witness")
    g.add_argument(
        "--no-witness",
        action="store_true",
        help="do not run the kernel reset witness (an ftrace instance with tcp:tcp_send_reset) on the hosts",
    )
    g.add_argument(
        "--witness-buffer",
        type=_size,
        default=256 << 10,
        metavar="SIZE",
        help="the witness's kernel trace buffer per CPU, e.g. 1M (default 256K, at most 64M)",
    )


def _output(p: argparse.ArgumentParser, default_out: str) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-o", "--out", type=Path, help=f"bundle folder (default {default_out})")
    g.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    talk = g.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="no progress lines: warnings and the result only")
    talk.add_argument("-v", "--verbose", action="store_true", help="print the plan (capture-all plan) first")


def capture_parser() -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:<8}  {text}" for name, text in _COMMANDS)
    p = _parser(
        "capture-all",
        "Capture a TCP flow on every hop at once over SSH, and show who sent the reset.\n\n"
        f"commands (capture-all COMMAND --help):\n{commands}",
        (
            "capture-all plan -i inv.toml -f '10.20.2.17->10.20.4.18:443'     # what would run, contacting nobody",
            "capture-all -i inv.toml -f '10.20.2.17->10.20.4.18:443' -d 60    # capture 60 s on every hop",
            "capture-all -i inv.toml -f '10.20.2.17->10.20.4.18:443' -d 5 \\\n"
            "      --reproduce 'curl -sS https://10.20.4.18/'                 # and reproduce it from the client",
        ),
        _EXIT_CAPTURE,
        "Times are printed in UTC. No colour is ever printed (NO_COLOR is respected by default); "
        "TERM=dumb or a pipe gives plain progress lines.",
    )
    p.add_argument("--version", action="version", version=f"capture-all {__version__}")
    _capture_options(p)
    _ssh(p)
    _output(p, "./capture-all-<UTC time>")
    return p


def plan_parser() -> argparse.ArgumentParser:
    p = _parser(
        "capture-all plan",
        "Show what `capture-all -i INV -f FLOW` would do, without contacting any host: the legs derived from "
        "the inventory, and per host how it is reached, the privilege used, the interfaces, the exact BPF "
        "filter, the commands that would run and the bounds each host enforces itself. Takes the capture's "
        "options.",
        (
            "capture-all plan -i inv.toml -f '10.20.2.17->10.20.4.18:443'",
            "capture-all plan -i inv.toml -f '10.20.2.17->10.20.4.18:443' -d 120 --hosts lb-1 -v",
            "capture-all plan -i inv.toml -f '10.20.2.17->10.20.4.18:443' --json | jq '.hosts[].filter'",
        ),
        ((0, "the plan is valid (printed)"), (2, "bad input: inventory, flow or options (one line)")),
    )
    _capture_options(p)
    _ssh(p, concurrency=False)
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="the plan as JSON")
    g.add_argument("-v", "--verbose", action="store_true", help="each host's SSH command line too (long)")
    return p


def _seconds(text: str) -> float:
    """90, 90s, 15m, 4h."""
    t = text.strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], 0)
    num = t[:-1] if mult else t
    try:
        v = float(num) * (mult or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 90s, 15m or 4h") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return v


def watch_parser() -> argparse.ArgumentParser:
    p = _parser(
        "capture-all watch",
        "Arm every hop with a bounded ring of the flow's packets, wait for the flow's first RST at any of them, "
        "keep the seconds around it, and show who sent it. Repeats up to --count incidents.",
        (
            "capture-all watch -i inv.toml -f '10.20.2.17->10.20.4.18:443'              # one incident, up to 4 h",
            "capture-all watch -i inv.toml -f '10.20.2.17->10.20.4.18:443' --count 3 --max-armed 8h",
            "capture-all watch -i inv.toml -f '10.20.2.17->10.20.4.18:443' \\\n"
            "      --trigger-on-log 'lb-1:/var/log/haproxy.log:SD--'              # or on HAProxy's own word",
        ),
        (
            (0, "every incident collected from every host"),
            (1, "internal error (a debug log is written into the bundle and named)"),
            (2, "bad input: inventory, flow or options (one line; nothing contacted)"),
            (3, "partial: a host failed in some incident; the others' evidence is kept"),
            (4, "nothing collected"),
            (5, "no reset while armed (--max-armed reached)"),
            (130, "abandoned with a second Ctrl-C (each host still stops and cleans up by itself)"),
        ),
        "SIGUSR1 (or Enter on a terminal) triggers by hand; Ctrl-C keeps the last --before seconds and stops.",
    )
    _what(p)
    g = p.add_argument_group("the window kept around each trigger, and the bounds")
    g.add_argument("--before", type=_seconds, default=10.0, help="seconds kept before the trigger (default 10)")
    g.add_argument("--after", type=_seconds, default=3.0, help="seconds kept after it (default 3)")
    g.add_argument("--count", type=_positive(int), default=1, help="incidents to collect, re-arming between them")
    g.add_argument("--max-armed", type=_seconds, default=4 * 3600.0,
                   help="stop after this long armed in all, e.g. 4h; each host enforces it itself (default 4h)")
    g.add_argument("--ring-bytes", type=_size, default=100 << 20,
                   help="each host's ring over all its interfaces, e.g. 50M (default 100M, at least 4M)")
    g.add_argument("--snaplen", type=_positive(int), default=262144, help="bytes kept per packet (default 262144)")
    g.add_argument("--grace", type=_positive(int), default=10, help="seconds past --max-armed before a host stops")
    g.add_argument("--keep", type=_positive(int), default=600, help="a host deletes uncollected evidence after this")
    g = p.add_argument_group("triggers")
    g.add_argument("--trigger-on-log", action="append", default=[], metavar="HOST:SOURCE:REGEX",
                   help="also trigger on the first line on HOST matching REGEX (grep -E); SOURCE a file or "
                   "journal=UNIT, e.g. 'lb-1:/var/log/haproxy.log:SD--' (repeatable)")
    g = p.add_argument_group("kernel reset witness")
    g.add_argument("--no-witness", action="store_true", help="no kernel reset witness on the hosts")
    g.add_argument("--witness-buffer", type=_size, default=1 << 20, metavar="SIZE",
                   help="the witness's buffer per CPU; while armed it keeps the latest events (default 1M)")
    _ssh(p)
    _output(p, "./capture-all-watch-<UTC time>, one bundle per incident")
    return p  # fmt: skip


def analyze_parser() -> argparse.ArgumentParser:
    p = _parser(
        "capture-all analyze",
        "Re-run the analysis offline: on a bundle, or on pcaps taken by hand (--pcap HOST=FILE). The bundle is "
        "evidence: it is verified against its manifest first and never written into.",
        (
            "capture-all analyze capture-all-20261201T224032Z",
            "capture-all analyze BUNDLE -o /tmp/again          # report.html, report.md, merged.pcapng there",
            "capture-all analyze --pcap lb-1=lb.pcap --pcap api-1=api.pcap -i inv.toml --json",
        ),
        (
            (0, "the first reset is attributed"),
            (1, "internal error"),
            (2, "bad input: not a bundle, an unreadable file, bad options (one line)"),
            (5, "no reset in the window"),
            (6, "reset(s) seen but not attributable (the report says why)"),
            (7, "nothing captured"),
            (8, "the bundle was modified: a file is missing or differs from its manifest (unless --allow-modified)"),
        ),
    )
    p.add_argument("bundle", type=Path, nargs="?", help="a capture-all bundle folder")
    p.add_argument(
        "--pcap",
        action="append",
        default=[],
        metavar="HOST=FILE",
        help="a capture taken by hand, named by host (repeatable)",
    )
    p.add_argument("-i", "--inventory", help="with --pcap: roles and addresses of the hosts")
    p.add_argument("-o", "--out", type=Path, help="write report.json and report.md here (a new or empty folder)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the timeline")
    p.add_argument("--allow-modified", action="store_true",
                   help="a bundle whose files differ from its manifest: exit by the verdict, not 8 (still reported)")
    return p  # fmt: skip


def summary_lines(root: Path, result: Analysis) -> list[str]:
    """Per host: status, packets, kernel drops, and every RST it saw (id, direction, TTL)."""
    from analysis.decode import flag_text
    from analysis.report import clock
    from orchestrator.evidence import load_manifest

    manifest = load_manifest(root)
    ids = {id(o): r.id for r in result.resets for o in r.seen}
    by_name = {v.name: v for v in result.vantages}
    lines = []
    for host in manifest["hosts"]:
        name, status = host["name"], host.get("status", "ok")
        head = f"  {name:<12} {host.get('role', 'other'):<8} {status:<7}"
        if status == "failed":
            lines.append(f"{head} {host.get('failed_phase')}: {host.get('error')}")
            continue
        v = by_name[name]
        rsts = [s for s in v.segments if id(s) in ids]
        drops = v.kernel_drops or 0
        lines.append(f"{head} {v.packets} packets, {drops} dropped by kernel, {len(rsts)} RST")
        for s in rsts:
            g = s.seg
            lines.append(
                f"    {clock(s.ts_ns)} {name}/{s.iface} {s.direction:>3} RST [{flag_text(g.flags)}] "
                f"{g.src}:{g.sport} > {g.dst}:{g.dport} ttl {g.ttl}  ({ids[id(s)]})"
            )
    return lines


def _abandoned(result: RunResult, opts: RunOptions) -> None:
    """Hosts whose evidence was not collected when the user gave up: said so in the manifest."""
    for r in result.records:
        if r.status == "pending":
            r.status, r.error_kind = "failed", "abandoned"
            r.error = (
                f"abandoned (second Ctrl-C) before its evidence was collected; the host stops its capture "
                f"by itself and deletes it {opts.keep} s after"
            )


def _exit_for(result: RunResult) -> int:
    statuses = [r.status for r in result.records]
    if all(s == "ok" for s in statuses):
        return EXIT_OK
    if any(s in ("ok", "partial") for s in statuses):
        return EXIT_PARTIAL
    return EXIT_NOTHING


def _calm_gc() -> None:
    """The collector's young generation at a run's pace: a run's tasks, futures and frames churn
    (Python's default collects every 700 allocations: 316 collections, 0.44 s of a 100-host run's
    controller, measured; 110 and 0.07 s so), and what the imports made is never garbage (frozen)."""
    import gc

    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def _capture(args: argparse.Namespace) -> int:
    import anyio

    from orchestrator.progress import Progress
    from orchestrator.run import run_capture
    from remote.ssh import SshConnector  # the CLI is the one place that picks the real transport

    _calm_gc()
    flow, digest, plan = _plan(args)
    opts = _run_options(args, plan)
    if args.verbose:
        from orchestrator.dryrun import plan_facts, plan_lines

        print("\n".join(plan_lines(plan_facts(plan, opts, str(args.inventory)))), file=sys.stderr, flush=True)
    now = dt.datetime.now(dt.timezone.utc)
    root = args.out or Path(f"capture-all-{now.strftime('%Y%m%dT%H%M%SZ')}")
    opts.holder = holder_label(root)
    bundle = Bundle.create(root)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    progress = Progress([h.name for h in plan.hosts], live=False if args.plain else None, quiet=args.quiet)
    manifest = _manifest(args, digest, flow.text, plan, opts, now)
    stop, abandon = anyio.Event(), anyio.Event()
    holder: list[RunResult] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, stop, abandon, tg.cancel_scope)
            await run_capture(plan, SshConnector(), bundle, opts, _preloading(progress), stop, holder.append)
            tg.cancel_scope.cancel()
    except BaseException:
        bundle.write("debug.log", traceback.format_exc())
        raise
    finally:
        progress.close()
        _write_manifest(bundle, manifest, holder, abandon.is_set(), opts)
    if abandon.is_set() or not holder:
        print(
            f"capture-all: abandoned with a second Ctrl-C; every host stops its capture by itself within "
            f"{opts.limit_s} s and deletes what was not collected {opts.keep} s later. {root}/manifest.json "
            f"says what each host had done.",
            file=sys.stderr,
        )
        return EXIT_ABANDONED
    code, _, lines = _conclude(root, holder[0], flow.text, len(manifest.files))
    print("\n".join(map(printable, lines)))
    return code


def _run_options(args: argparse.Namespace, plan: Plan) -> RunOptions:
    """A capture's options (capture-all and capture-all plan), checked before anyone is contacted."""
    from orchestrator.run import RunOptions

    if args.reproduce_on and args.reproduce_on not in {h.name for h in plan.hosts}:
        raise UsageError(f"--reproduce-on: {args.reproduce_on} is not a host of this run")
    opts = RunOptions(
        duration=args.duration,
        grace=args.grace,
        max_packets=args.max_packets,
        max_bytes=args.max_bytes,
        snaplen=args.snaplen,
        keep=args.keep,
        concurrency=getattr(args, "concurrency", 100),
        reproduce=args.reproduce,
        reproduce_on=args.reproduce_on,
        reproduce_timeout=args.reproduce_timeout,
        witness_kb=0 if args.no_witness else max(4, args.witness_buffer >> 10),
    )
    if opts.reproduce is not None:
        from remote.commands import reproduce

        reproduce(opts.reproduce, timeout_s=opts.reproduce_timeout)  # validate before contacting anyone
    return opts


def _plan_command(args: argparse.Namespace) -> int:
    """``capture-all plan``: the capture's plan, printed; nothing is contacted."""
    from orchestrator.dryrun import plan_facts, plan_lines
    from remote.errors import RemoteError

    _flow, _digest, plan = _plan(args)
    opts = _run_options(args, plan)
    try:
        facts = plan_facts(plan, opts, str(args.inventory))
    except RemoteError as exc:  # the user's ssh config, read for its known_hosts files
        raise UsageError(exc.message) from None
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print("\n".join(plan_lines(facts, verbose=args.verbose)))
    return EXIT_OK


def _plan(args: argparse.Namespace) -> tuple[Flow, str, Plan]:
    """The flow, the inventory's digest and the plan, from a capture's or a watch's options."""
    from orchestrator.flow import parse_flow
    from orchestrator.inventory import load_inventory
    from orchestrator.plan import build_plan

    if args.witness_buffer > WITNESS_BUFFER_MAX:
        # Kernel memory on every CPU of every host: kept small on production machines.
        raise UsageError(f"--witness-buffer: at most {WITNESS_BUFFER_MAX >> 20}M per CPU")
    flow = parse_flow(args.flow)
    inv, digest = load_inventory(args.inventory)
    only = [h.strip() for h in args.hosts.split(",")] if args.hosts else None
    plan = build_plan(flow, inv, inventory_sha256=digest, only=only, accept_new_host_keys=args.accept_new_host_keys)
    return flow, digest, plan


def _manifest(args: argparse.Namespace, digest: str, flow: str, plan: Plan, opts: RunOptions,
              now: dt.datetime) -> Manifest:  # fmt: skip
    from orchestrator.manifest import Manifest

    return Manifest(
        version=__version__,
        created_utc=now.isoformat(),
        command=_shown_command(COMMAND),
        inventory=str(args.inventory),
        inventory_sha256=digest,
        flow=flow,
        legs=[f"{leg.name}: {leg.bpf()}" for leg in plan.legs],
        options=_shown_options(opts),
        hosts=[],
    )


def _shown_command(argv: list[str]) -> list[str]:
    """This process's command line, --reproduce's value as its label (``reproduce_label``)."""
    from orchestrator.options import reproduce_label

    shown, after = [], False
    for a in argv:
        if after:
            shown.append(reproduce_label(a))
        elif a.startswith("--reproduce="):
            shown.append("--reproduce=" + reproduce_label(a.split("=", 1)[1]))
        else:
            shown.append(a)
        after = a == "--reproduce"
    return shown


def _shown_options(opts: RunOptions) -> dict[str, Any]:
    from orchestrator.options import reproduce_label

    options: dict[str, Any] = json.loads(json.dumps(vars(opts), default=vars))  # watch mode's options nested
    if opts.reproduce is not None:
        options["reproduce"] = reproduce_label(opts.reproduce)
    return options


def _write_manifest(bundle: Bundle, manifest: Manifest, holder: list[RunResult], abandoned: bool,
                    opts: RunOptions) -> None:  # fmt: skip
    """The run's outcome into its manifest, whatever ended it (a second Ctrl-C included)."""
    if holder:
        if abandoned:
            _abandoned(holder[0], opts)
        manifest.hosts = holder[0].records
        manifest.start_skew_ms = holder[0].start_skew_ms
        manifest.trigger = holder[0].trigger
        manifest.exit_status = EXIT_ABANDONED if abandoned else _exit_for(holder[0])
    bundle.write_manifest(manifest)


async def _watch(args: argparse.Namespace) -> int:
    """``capture-all watch``: arm, wait for the trigger, keep the window, analyse, print, re-arm."""
    import shutil
    import time

    import anyio

    from orchestrator import incidents
    from orchestrator.progress import Progress
    from orchestrator.run import RunOptions, WatchOptions, run_capture
    from remote.ssh import SshConnector

    _calm_gc()
    if args.ring_bytes < 4 << 20:
        raise UsageError("--ring-bytes: at least 4M (two files of 1 MB per interface, tcpdump -C's unit)")
    if args.before + args.after >= args.max_armed:
        raise UsageError("--max-armed: must be longer than --before + --after")
    flow, digest, plan = _plan(args)
    logs = _log_triggers(args.trigger_on_log, {h.name for h in plan.hosts})
    started = dt.datetime.now(dt.timezone.utc)
    out: Path = args.out or Path(f"capture-all-watch-{started.strftime('%Y%m%dT%H%M%SZ')}")
    Bundle.create(out)  # a new or empty folder: every incident a bundle inside it
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    given = {k: v for k, v in vars(args).items() if k not in ("out", "inventory")}
    armed_facts: dict[str, object] = {
        "flow": flow.text, "inventory": str(args.inventory), "started_utc": started.isoformat(), "ended_utc": None,
        "ended": None, "options": json.loads(json.dumps(given, default=str)),
    }  # fmt: skip
    rows: list[dict[str, object]] = []
    incidents.write(out, rows, armed_facts)
    stop, abandon = anyio.Event(), anyio.Event()
    manual: list[anyio.Event] = [anyio.Event()]
    end_at = time.monotonic() + args.max_armed
    codes: list[int] = []
    why_end = "--count reached"
    progress = Progress([h.name for h in plan.hosts], live=False if args.plain else None, quiet=args.quiet)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, stop, abandon, tg.cancel_scope)
            tg.start_soon(_manual_triggers, manual)
            for n in range(1, args.count + 1):
                left = end_at - time.monotonic()
                if left < args.before + args.after:
                    why_end = "--max-armed reached"
                    break
                wopts = WatchOptions(before=args.before, after=args.after, ring_bytes=args.ring_bytes, max_armed=left,
                                     logs=logs)  # fmt: skip
                opts = RunOptions(
                    duration=left, grace=args.grace, max_packets=1 << 40, snaplen=args.snaplen, keep=args.keep,
                    concurrency=args.concurrency, watch=wopts,
                    witness_kb=0 if args.no_witness else max(4, args.witness_buffer >> 10),
                    max_bytes=args.ring_bytes + args.ring_bytes // 4 + (1 << 20),  # the watchdog, past the ring
                )  # fmt: skip
                root = out / f"{n:03d}-armed"
                opts.holder = holder_label(root)
                bundle = Bundle.create(root)
                manual[0] = anyio.Event()
                holder: list[RunResult] = []
                manifest = _manifest(args, digest, flow.text, plan, opts, dt.datetime.now(dt.timezone.utc))
                print(f"incident {n}/{args.count}: arming {len(plan.hosts)} host(s) (before {args.before:g} s, "
                      f"after {args.after:g} s; at most {left:.0f} s more)", file=sys.stderr, flush=True)  # fmt: skip
                try:
                    await run_capture(plan, SshConnector(), bundle, opts, _preloading(progress), stop,
                                      holder.append, manual[0])  # fmt: skip
                except BaseException:
                    bundle.write("debug.log", traceback.format_exc())
                    raise
                finally:
                    _write_manifest(bundle, manifest, holder, abandon.is_set(), opts)
                res = holder[0]
                trig = res.trigger
                if trig is None or trig.kind == "max-armed":
                    shutil.rmtree(root, ignore_errors=True)  # armed, no reset: nothing was kept
                    why_end = "--max-armed reached" if trig is not None else "no host armed"
                    if trig is None:
                        codes.append(_exit_for(res))
                    break
                when = dt.datetime.fromtimestamp(trig.at_ns / 1e9, dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
                final = out / f"{n:03d}-{when[:-4]}Z"
                root.rename(final)
                code, report, lines = _conclude(final, res, flow.text, len(manifest.files))
                codes.append(code)
                failed = [r.name for r in res.records if r.status == "failed"]
                rows.append(incidents.row(final.name, trig.model_dump(), report, code, failed))
                incidents.write(out, rows, armed_facts)
                where = f" at {trig.host}" if trig.host else ""
                print(f"incident {n}: {trig.kind} trigger{where}, armed {trig.armed_s or 0:.1f} s", flush=True)
                print("\n".join(map(printable, lines)), flush=True)
                if res.interrupted or stop.is_set():
                    why_end = "stopped (Ctrl-C)"
                    break
            tg.cancel_scope.cancel()
    finally:
        progress.close()
        armed_facts["ended_utc"] = dt.datetime.now(dt.timezone.utc).isoformat()
        armed_facts["ended"] = "abandoned (second Ctrl-C)" if abandon.is_set() else why_end
        incidents.write(out, rows, armed_facts)
    print(f"{incidents.summary(rows)}  ({len(rows)} incident(s); {why_end})")
    print(f"index: {out / 'incidents.md'}, {out / 'incidents.json'}")
    if abandon.is_set():
        return EXIT_ABANDONED
    if not rows:
        return codes[0] if codes else EXIT_NO_RESET
    if all(c == EXIT_OK for c in codes):
        return EXIT_OK
    return EXIT_PARTIAL if any(c in (EXIT_OK, EXIT_PARTIAL) for c in codes) else EXIT_NOTHING


def _log_triggers(given: list[str], hosts: set[str]) -> tuple[tuple[str, str, str], ...]:
    """--trigger-on-log HOST:SOURCE:REGEX, checked before anything is contacted."""
    from remote.commands import validate_log_path, validate_log_pattern

    out = []
    for text in given:
        host, _, rest = text.partition(":")
        path, _, pattern = rest.partition(":")
        if not host or not path or not pattern:
            raise UsageError(f"--trigger-on-log {text!r}: HOST:SOURCE:REGEX, e.g. 'lb-1:/var/log/haproxy.log:SD--'")
        if host not in hosts:
            raise UsageError(f"--trigger-on-log: {host} is not a host of this run")
        out.append((host, validate_log_path(path), validate_log_pattern(pattern)))
    return tuple(out)


def _conclude(root: Path, res: RunResult, flow: str, digested: int) -> tuple[int, dict[str, object], list[str]]:
    """A run's bundle analysed: its exit status, report.json and the lines to print."""
    from analysis.report import terminal
    from orchestrator.evidence import analyze_bundle, merged_line, write_reports

    result, report = analyze_bundle(root)
    report["integrity"] = {"verified": True, "problems": []}  # the digests were just made from these files
    write_reports(root, result, report, flow)
    lines = [f"bundle: {root.resolve()}"]
    lines.append(merged_line(root.resolve(), report["merged"]))
    # The digests were just computed from these files, and every capture already matched the
    # host's own SHA-256 after the transfer: hashing them all again here would only re-read them.
    lines.append(f"  manifest.json: SHA-256 of {digested} files (check later: capture-all analyze)")
    if res.start_skew_ms is not None:
        lines.append(f"  captures armed within {res.start_skew_ms:.0f} ms of each other")
    for r in res.records:
        w = r.window
        if w is None or res.trigger is None or res.trigger.kind == "max-armed":
            continue
        off = next((p.offset_ns for p in r.clock_probes if p.phase == "start"), 0)
        wanted = res.trigger.at_ns + off - w.from_ns
        for iface, first in sorted(w.reach_ns.items()):
            back = (res.trigger.at_ns + off - first) / 1e9
            if first > w.from_ns + 1_000_000_000 and back < wanted / 1e9:
                lines.append(f"  {r.name}/{iface}: its ring reaches back only {back:.1f} s before the trigger "
                             f"(traffic outran --ring-bytes)")  # fmt: skip
    lines += summary_lines(root, result)
    lines += terminal(result)
    lines.append(f"reports: {root / 'report.html'}, {root / 'report.md'}, {root / 'report.json'}")
    return _exit_for(res), report, lines


async def _manual_triggers(current: list[anyio.Event]) -> None:
    """SIGUSR1, or Enter where stdin is a terminal: a trigger by hand (the current arming's)."""
    import anyio

    async def keys() -> None:
        if not sys.stdin.isatty():
            return
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:
                return
            current[0].set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(keys)
        with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
            async for _ in signals:
                current[0].set()


def holder_label(root: Path) -> str:
    """user@controller:bundle, in the characters a host's lock file takes: what a second run on
    the same host is told holds it."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    text = f"{user}@{socket.gethostname()}:{root.resolve()}"
    return re.sub(r"[^A-Za-z0-9_.:@/+=-]", "_", text)[:200]


def _preloading(sink: Callable[[str, str, str], None]) -> Callable[[str, str, str], None]:
    """The sink, which also starts loading the analysis in a thread once every host is armed:
    the hosts are capturing then, and the analysis is what comes next."""

    def preload() -> None:
        import analysis.report  # noqa: F401
        import orchestrator.evidence  # noqa: F401

    started: list[threading.Thread] = []

    def relay(host: str, state: str, detail: str) -> None:
        if host == "*" and state == "armed" and not started:
            started.append(threading.Thread(target=preload, name="preload-analysis", daemon=True))
            started[0].start()
        sink(host, state, detail)

    return relay


async def _watch_signals(stop: anyio.Event, abandon: anyio.Event, scope: anyio.CancelScope) -> None:
    """First Ctrl-C: stop capturing now and still collect. Second: give up (``abandon``)."""
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stop.is_set():
                abandon.set()
                scope.cancel()
                return
            print("\nstopping early: collecting what was captured (Ctrl-C again to abandon)", file=sys.stderr)
            stop.set()


def _analyze(args: argparse.Namespace) -> int:
    from analysis.report import terminal
    from orchestrator.evidence import analyze_bundle, analyze_pcaps, merged_line, write_reports

    if args.bundle is not None and args.pcap:
        raise UsageError("analyze: give a bundle or --pcap HOST=FILE, not both")
    if args.bundle is not None:
        root: Path = args.bundle
        if not (root / "manifest.json").is_file():
            raise UsageError(f"{root}: not a capture-all bundle (no manifest.json)")
        # checks the manifest first: one line if it is bad
        result, report = analyze_bundle(root, analyzed_by=list(COMMAND))
        problems = verify(root)
        report["integrity"] = {"verified": not problems, "problems": problems}
        # The bundle is evidence: re-analysis never writes into it (it may be read-only, or signed).
        if args.out:
            Bundle.create(args.out)
            write_reports(args.out, result, report, report["flow"], problems)
        lines = [
            f"bundle: {root.resolve()}",
            "  manifest.json: SHA-256 " + ("verified" if not problems else "MISMATCH: " + "; ".join(problems)),
        ]
        if args.out:
            lines.append(merged_line(args.out.resolve(), report["merged"]))
        if problems:
            lines.insert(0, f"INTEGRITY: {len(problems)} file(s) of this bundle are not what was collected: "
                            + "; ".join(problems))  # fmt: skip
        lines += summary_lines(root, result)
    elif args.pcap:
        from orchestrator.inventory import load_inventory

        inv = load_inventory(args.inventory)[0] if args.inventory else None
        result, report = analyze_pcaps(args.pcap, inv, analyzed_by=list(COMMAND))
        lines = []
        if args.out:
            Bundle.create(args.out)
            write_reports(args.out, result, report, "hand-taken captures")
            lines.append(merged_line(args.out.resolve(), report["merged"]))
    else:
        raise UsageError("analyze: give a bundle folder or at least one --pcap HOST=FILE")
    if args.json:
        from analysis.schema import dump

        print(dump(report), end="")
    else:
        print("\n".join(map(printable, lines + terminal(result))))
    modified = report.get("integrity", {}).get("problems") or []
    if modified and not args.allow_modified:
        more = f" (and {len(modified) - 1} more)" if len(modified) > 1 else ""
        print(f"capture-all: bundle modified: {modified[0]}{more}; exit {EXIT_MODIFIED} "
              "(--allow-modified to exit by the verdict)", file=sys.stderr)  # fmt: skip
        return EXIT_MODIFIED
    if result.first is None:
        return EXIT_NO_RESET if any(v.captured and v.packets for v in result.vantages) else EXIT_NOTHING_CAPTURED
    return EXIT_OK if result.first.origin_kind != "unknown" else EXIT_UNATTRIBUTED


EXIT_AUDIT_VIOLATED = 9  # audit: an idle-timeout pair out of order


def audit_parser() -> argparse.ArgumentParser:
    p = _parser(
        "capture-all audit",
        "Audit the idle-timeout chain along the flow's path without capturing: each host's HAProxy config and "
        "nginx -T (read-only, over SSH), the inventory's idle_timeout where a value cannot be read; whoever "
        "reuses idle connections must give up on them before the other side closes them.",
        (
            "capture-all audit -i inv.toml -f '10.20.2.17->10.20.4.18:443'",
            "capture-all audit -i inv.toml -f '10.20.2.17->10.20.4.18:443' --hosts app-1,lb-1",
        ),
        (
            (0, "every pair in order"),
            (1, "internal error"),
            (2, "bad input: inventory, flow or options (one line)"),
            (3, "no pair could be checked"),
            (9, "a pair violated: the reuser's idle timeout is not shorter than the other side's"),
        ),
    )
    _what(p)
    _ssh(p, concurrency=False)
    p.set_defaults(witness_buffer=0)
    return p


async def _audit(args: argparse.Namespace) -> int:
    from orchestrator.audit import audit
    from orchestrator.inventory import load_inventory
    from remote.ssh import SshConnector

    _flow, _digest, plan = _plan(args)
    inv, _ = load_inventory(args.inventory)
    stated = {h.name: h.idle_timeout for h in inv.hosts}
    connector = SshConnector()
    try:
        result = await audit(plan, connector, stated)
    finally:
        await connector.close()
    print(f"idle-timeout chain of {args.flow} (the reuser's must be shorter):")
    for pair in result.pairs:
        print(f"  {pair.text()}")
    for note in result.notes:
        print(f"  note: {note}")
    if not result.pairs:
        print("  no pair could be checked")
        return EXIT_PARTIAL
    return EXIT_OK if all(p.ok for p in result.pairs) else EXIT_AUDIT_VIOLATED


def schema_parser() -> argparse.ArgumentParser:
    return _parser(
        "capture-all schema",
        "Print report.json's JSON Schema (draft 2020-12), as shipped in the package. Its $id is the schema "
        'string every report.json carries in its "schema" field (capture-all/report/N).',
        ("capture-all schema > report.schema.json", "capture-all schema | jq .properties.first"),
        ((0, "printed"),),
    )


def _schema(args: argparse.Namespace) -> int:
    from analysis.schema import shipped

    print(shipped(), end="")
    return EXIT_OK


COMMAND: list[str] = []  # this process's command line, as given to main()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    COMMAND[:] = ["capture-all", *argv]  # the reports and the manifest say what made them
    try:
        if argv[:1] == ["analyze"]:
            return _analyze(analyze_parser().parse_args(argv[1:]))
        if argv[:1] == ["schema"]:
            return _schema(schema_parser().parse_args(argv[1:]))
        if argv[:1] == ["plan"]:
            return _plan_command(plan_parser().parse_args(argv[1:]))
        if argv[:1] == ["init"]:
            from orchestrator.init import init_command, init_parser

            return init_command(init_parser().parse_args(argv[1:]))
        if argv[:1] == ["audit"]:
            aargs = audit_parser().parse_args(argv[1:])
            import anyio

            return anyio.run(_audit, aargs, backend="asyncio")
        if argv[:1] == ["watch"]:
            wargs = watch_parser().parse_args(argv[1:])
            import anyio

            return anyio.run(_watch, wargs, backend="asyncio")
        if argv[:1] == ["capture"]:
            argv = argv[1:]
        elif argv and not argv[0].startswith("-"):
            # The capture takes no word of its own: a first word is a (mistyped) subcommand.
            near = difflib.get_close_matches(argv[0], SUBCOMMANDS, n=1)
            hint = f"; did you mean 'capture-all {near[0]}'?" if near else f" (commands: {', '.join(SUBCOMMANDS)})"
            raise UsageError(f"unknown command {argv[0]!r}{hint}")
        args = capture_parser().parse_args(argv)
        import anyio

        return anyio.run(_capture, args, backend="asyncio")
    except (UsageError, UnsafeValue) as exc:
        print(f"capture-all: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BundleError as exc:
        print(f"capture-all: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("capture-all: abandoned; every host stops its capture by itself", file=sys.stderr)
        return EXIT_ABANDONED


def entry() -> None:
    """The ``capture-all`` command: ``main``, its output flushed, and the process ends there,
    without the interpreter's teardown of what it loaded (numba, llvmlite, asyncssh, pydantic:
    0.15-0.2 s after the report was printed, measured, where a 100-host run's whole overhead is
    about 6 s). Nothing of ours is left to it: the bundle's files are closed where they are written,
    the sessions by ``run_capture``, the analysis's threads joined. An exception (a bug) still ends
    the ordinary way, with its traceback. Dependencies' deprecation notices are not shown
    (``thirdparty``)."""
    from orchestrator.thirdparty import quiet_dependencies

    quiet_dependencies()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (capture-all ... | head)
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
