"""The fan-out: every host at once, step by step, a failing host never stopping the others.

    step      hosts                               the run
    prepare   all at once (--concurrency          waits until every host is ready (@@ready) or
              handshakes at a time)               failed: the start barrier
    arm       all at once: "go" to every host     the window (--duration) opens once every capture
              together                            listens; the reproducer runs once every host has
                                                  its witness and "before" snapshot too
    wait      the end's clock probe, from 1.5 s    until the window ends, or Ctrl-C (stop early)
              before the window's end (or once
              its arm is over) until its end
    finish    each host once the window, its own  the bundle keeps whatever every host produced
              arm and its own end probe are over

What each step does on a host is ``orchestrator.host``. A host's failure becomes its record's
status/error; nothing a host does can cancel another.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from orchestrator.bundle import Bundle
from orchestrator.host import EventSink, HostRun
from orchestrator.manifest import HostRecord, TriggerRecord
from orchestrator.options import RunOptions, WatchOptions, reproduce_label
from orchestrator.plan import Plan
from orchestrator.talk import PROBE_SAMPLES, call
from remote import commands
from remote.errors import RemoteError
from remote.transport import Connector

__all__ = ["PROBE_SAMPLES", "EventSink", "RunOptions", "RunResult", "WatchOptions", "run_capture"]


def _quiet(_host: str, _state: str, _detail: str) -> None:
    return None


@dataclass
class RunResult:
    records: list[HostRecord]
    start_skew_ms: float | None
    reproduce_exit: int | None = None
    interrupted: bool = False
    trigger: TriggerRecord | None = None  # watch mode: what ended the wait


async def _each(fn: Callable[..., object], runs: list[HostRun], *args: object) -> None:
    async with anyio.create_task_group() as tg:
        for r in runs:
            tg.start_soon(fn, r, *args)  # type: ignore[arg-type]


class _Countdown:
    """Set once ``n`` hosts have each said so once."""

    def __init__(self, n: int) -> None:
        self.left, self.event = n, anyio.Event()
        if n == 0:
            self.event.set()

    def done(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


async def run_capture(
    plan: Plan,
    connector: Connector,
    bundle: Bundle,
    opts: RunOptions,
    sink: EventSink = _quiet,
    stop_early: anyio.Event | None = None,
    started: Callable[[RunResult], None] | None = None,
    manual: anyio.Event | None = None,
) -> RunResult:
    """``started`` receives the result as soon as it exists: its host records are filled in as
    the run goes, so a caller that cancels the run (abandon) still has them. In watch mode
    (``opts.watch``), ``manual`` set is a trigger (SIGUSR1, Enter)."""
    runs = [HostRun(h, connector, bundle, opts, sink) for h in plan.hosts]
    result = RunResult([r.record for r in runs], None)
    if started is not None:
        started(result)
    try:
        await _each(HostRun.prepare, runs, anyio.CapacityLimiter(opts.concurrency))
        staged = [r for r in runs if r.ok]
        if not staged:
            return result
        listening = _Countdown(len(staged))
        over = anyio.Event()  # the window (or the watch's wait) is over

        async def through(r: HostRun) -> None:
            # Each host finishes once the window is over and its own arm (witness, "before"
            # snapshot) is: a host whose witness the kernel set up late holds up no other's finish.
            await r.arm(listening.done, listening.event)
            await over.wait()
            if r.ok and r.armed is not None:
                await r.finish()
            else:
                await r.cleanup()

        async def then_collect(window: Callable[[Callable[[], None]], Awaitable[None]], n: int) -> None:
            def close() -> None:  # the window's end: every host may finish
                if not over.is_set():
                    over.set()
                    sink("*", "collecting", f"stopping {n} capture(s), snapshots, pulling files")

            try:
                await window(close)
            except BaseException:
                over.set()  # an abandon: no line
                raise
            close()

        async with anyio.create_task_group() as tg:
            for r in staged:  # the barrier: every ready host hears "go" now
                tg.start_soon(through, r)
            # The window opens once every capture listens.
            await listening.event.wait()
            armed = [r for r in staged if r.ok and r.armed is not None]
            if armed and opts.watch is not None:
                w = opts.watch
                tg.start_soon(then_collect, lambda _: _watch(armed, len(runs), w, opts, sink, result, stop_early,
                                                             manual), len(armed))  # fmt: skip
            elif armed:
                tg.start_soon(then_collect, lambda close: _window(runs, armed, opts, bundle, sink, result, stop_early,
                                                                  close), len(armed))  # fmt: skip
            else:
                over.set()
        # Every start probe is in now (the "armed" line may have come before a late witness's).
        result.start_skew_ms = start_skew_ms(staged)
        await _each(HostRun.cleanup, [r for r in runs if r not in staged])
        if any(r.armed is not None for r in staged):
            sink("*", "collected", f"{sum(r.status == 'ok' for r in result.records)}/{len(runs)} hosts ok")
    finally:
        with anyio.CancelScope(shield=True):
            for r in runs:
                await r.close()
            await connector.close()
    return result


# The end's clock probe starts this long before the window ends (under load a probe takes about
# half a second), or once the host's arm is over, and not later than LATE_PROBE_LAST_S before the
# end (a shorter window leaves it to the finish). A probe that runs past the end holds up its own
# host's finish only (the 100-host lab's arms end 0.3-0.5 s before a 2 s window does).
LATE_PROBE_S = 1.5
LATE_PROBE_LAST_S = 0.1


async def _window(runs: list[HostRun], armed: list[HostRun], opts: RunOptions, bundle: Bundle, sink: EventSink,
                  result: RunResult, stop_early: anyio.Event | None, close: Callable[[], None]) -> None:  # fmt: skip
    """The capture window; ``close`` is called at its end (each host's finish may start: it waits
    for its own end probe only); this returns once the probes under way have ended too."""
    deadline = anyio.current_time() + opts.duration
    reproduced = anyio.Event()
    closed = anyio.Event()
    # Each host's end clock probe near the window's end.
    async with anyio.create_task_group() as probes:
        for r in armed:
            probes.start_soon(r.probe_late, deadline - LATE_PROBE_S, deadline - LATE_PROBE_LAST_S, closed)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_all_armed, armed, len(runs), result, sink)
            if opts.reproduce:
                tg.start_soon(_reproduce, runs, armed, opts, bundle, sink, result, reproduced)
            else:
                reproduced.set()
            result.interrupted = await _wait(deadline, opts.duration, sink, stop_early)
            closed.set()  # no end probe starts now
            # The window is over: a reproducer still running gets at most `grace` more seconds
            # (the captures stop by themselves then anyway), none after a Ctrl-C.
            with anyio.move_on_after(0 if result.interrupted else opts.grace):
                await reproduced.wait()
            close()
            tg.cancel_scope.cancel()


WATCHING_EVERY_S = 60.0  # "still armed" on the progress lines (a watch may last hours)
# A host's window reaches this much wider than asked on each side, beyond its clock's uncertainty.
WINDOW_MARGIN_NS = 200_000_000


async def _watch(armed: list[HostRun], total: int, w: WatchOptions, opts: RunOptions, sink: EventSink,
                 result: RunResult, stop_early: anyio.Event | None, manual: anyio.Event | None) -> None:  # fmt: skip
    """Watch mode's wait: until the first RST of the flow at any host (its trigger session), a
    manual trigger, Ctrl-C (which keeps the last seconds) or the arming's end; then ``after``
    seconds more; then each host's window, on its own clock, for the finish."""
    start = anyio.current_time()
    start_ns = time.time_ns()
    fired = anyio.Event()

    def fire(host: HostRun, host_ns: int | None, line: str, kind: str) -> None:
        if fired.is_set():
            return
        probe = host.start_probe
        now = time.time_ns()
        at = host_ns - probe.offset_ns if host_ns is not None and probe is not None else None
        note = None
        if kind == "log":
            at = now  # a log line: when it reached us
        elif at is None or not start_ns - 2 * 10**9 <= at <= now + 10**9:
            # No usable time (or one outside the arming: a clock that moved since its probe):
            # the line's arrival stands in for it, a little after the RST itself.
            note = "the RST's own time was not usable on the controller's clock: its arrival is used"
            at = now
        result.trigger = TriggerRecord(kind=kind, host=host.plan.name, line=line[:500], at_ns=at, host_ns=host_ns,
                                       armed_s=round(anyio.current_time() - start, 3), note=note)  # fmt: skip
        sink(host.plan.name, "triggered", line[:160])
        fired.set()

    async def other(event: anyio.Event | None, kind: str, say: str) -> None:
        if event is None:
            return
        await event.wait()
        if not fired.is_set():
            armed_s = round(anyio.current_time() - start, 3)
            result.trigger = TriggerRecord(kind=kind, at_ns=time.time_ns(), armed_s=armed_s)
            sink("*", "triggered", say)
            fired.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(_all_armed, armed, total, result, sink)
        for r in armed:
            tg.start_soon(r.watch_trigger, fire)
            for name, path, pattern in w.logs:
                if name == r.plan.name:
                    tg.start_soon(r.watch_log, path, pattern, fire)
        tg.start_soon(other, manual, "manual", "manual trigger")
        tg.start_soon(other, stop_early, "interrupt", "stopped (Ctrl-C): keeping the last seconds")
        with anyio.move_on_after(w.max_armed):
            while not fired.is_set():
                with anyio.move_on_after(WATCHING_EVERY_S):
                    await fired.wait()
                if not fired.is_set():
                    sink("*", "watching", f"armed {anyio.current_time() - start:.0f} s, waiting for a reset")
        if not fired.is_set():
            result.trigger = TriggerRecord(kind="max-armed", at_ns=time.time_ns(), armed_s=w.max_armed)
            sink("*", "stopping", f"no reset within {w.max_armed:.0f} s armed")
        trig = result.trigger
        assert trig is not None
        if trig.kind in ("rst", "log", "manual"):
            # The seconds after the trigger (Ctrl-C cuts them short: the window then ends now).
            wait_s = w.after - (time.time_ns() - trig.at_ns) / 1e9
            with anyio.move_on_after(max(0.0, wait_s)):
                if stop_early is not None:
                    await stop_early.wait()
                else:
                    await anyio.sleep(max(0.0, wait_s))
        result.interrupted = bool(stop_early is not None and stop_early.is_set())
        end_ns = min(time.time_ns(), trig.at_ns + int(w.after * 1e9))
        for r in armed:
            probe = r.start_probe
            off, bound = (probe.offset_ns, probe.bound_ns) if probe is not None else (0, 0)
            pad = WINDOW_MARGIN_NS + bound
            if trig.kind == "max-armed":
                r.window = (1, 1)  # no reset: nothing is kept, nothing pulled
            else:
                r.window = (max(0, trig.at_ns + off - int(w.before * 1e9) - pad), end_ns + off + pad)
        tg.cancel_scope.cancel()


def start_skew_ms(armed: list[HostRun]) -> float | None:
    """How far apart the captures started: each host's own clock when its capture listened, put on
    the controller's clock by that host's start probe, where every host has one; else when the
    controller heard of it (later, and bunched wherever the controller was busy reading: it may look
    closer than the starts were)."""
    started = [r for r in armed if r.armed is not None]
    probed = [(r.record.remote_armed_ns, r.start_probe) for r in started]
    if probed and all(t and p is not None for t, p in probed):
        times = [t - p.offset_ns for t, p in probed if t and p is not None]
    else:
        times = [r.record.armed_ns for r in started if r.record.armed_ns]
    return (max(times) - min(times)) / 1e6 if times else None


async def _all_armed(armed: list[HostRun], total: int, result: RunResult, sink: EventSink) -> None:
    for r in armed:
        await r.arm_done.wait()
    result.start_skew_ms = start_skew_ms(armed)
    ok = sum(r.ok for r in armed)
    sink("*", "armed", f"{ok}/{total} hosts capturing, start skew {result.start_skew_ms or 0:.0f} ms")


async def _wait(deadline: float, duration: float, sink: EventSink, stop_early: anyio.Event | None) -> bool:
    start = deadline - duration
    while True:
        now = anyio.current_time()
        if now >= deadline:
            return False
        if stop_early is not None and stop_early.is_set():
            sink("*", "stopping", "stopped early on request")
            return True
        sink("*", "capturing", f"{now - start:.0f}/{duration:.0f} s")
        with anyio.move_on_after(min(1.0, deadline - now)):
            if stop_early is not None:
                await stop_early.wait()
            else:
                await anyio.sleep(1.0)


def _pick_reproducer(runs: list[HostRun], opts: RunOptions) -> HostRun | None:
    if opts.reproduce_on:
        return next((r for r in runs if r.plan.name == opts.reproduce_on), None)
    return next((r for r in runs if r.plan.role == "client"), None)


async def _reproduce(runs: list[HostRun], armed: list[HostRun], opts: RunOptions, bundle: Bundle, sink: EventSink,
                     result: RunResult, done: anyio.Event) -> None:  # fmt: skip
    try:
        for r in armed:  # every host's witness and "before" snapshot first
            await r.arm_done.wait()
        await _reproduce_once(runs, opts, bundle, sink, result)
    except anyio.get_cancelled_exc_class():
        host = _pick_reproducer(runs, opts)
        why = "--reproduce still running after the window: not waited for (its host ends it at its own timeout)"
        sink(host.plan.name if host else "*", "warning", why)
        raise
    except Exception as exc:  # a bug of ours while reproducing costs the reproduction, never the evidence
        sink("*", "warning", f"--reproduce failed: {type(exc).__name__}: {exc}")
    finally:
        done.set()


async def _reproduce_once(runs: list[HostRun], opts: RunOptions, bundle: Bundle, sink: EventSink,
                          result: RunResult) -> None:  # fmt: skip
    assert opts.reproduce is not None
    host = _pick_reproducer(runs, opts)
    if host is None or host.transport is None or not host.ok:
        name = host.plan.name if host else "(no client host)"
        sink("*", "warning", f"--reproduce not run: {name} is not connected")
        return
    cmd = commands.reproduce(opts.reproduce, timeout_s=opts.reproduce_timeout)
    label = reproduce_label(opts.reproduce)
    sink(host.plan.name, "reproducing", label)
    try:
        res, _ = await call(host.transport, cmd, host.log, slack=opts.controller_slack, sudo=False, check=False)
    except RemoteError as exc:
        sink(host.plan.name, "warning", f"--reproduce failed: {exc.message}")
        return
    result.reproduce_exit = res.exit_status
    bundle.write(
        f"{host.plan.name}/reproduce.txt",
        f"$ {label}\n# exit status {res.exit_status}\n# stdout\n{res.stdout}# stderr\n{res.stderr}",
    )
    tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [""]
    sink(host.plan.name, "reproduced", f"exit {res.exit_status}: {tail[0][:120]}")
