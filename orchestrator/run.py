"""The fan-out: every host at once, phase by phase, a failing host never stopping the others.

Phases (each one remote round trip per host, all hosts concurrently, a barrier between):

    connect+prepare   preflight, private temp dir, "before" snapshot
    arm               detached, self-bounded tcpdump per interface; returns once listening
    (reproduce)       the user's command on the client host, once every capture is armed
    wait              --duration, interruptible (Ctrl-C stops early and still collects)
    finish            stop, "after" snapshot, tcpdump's counts, file digests
    pull+cleanup      each file over SFTP (or `cat` where there is no SFTP), its SHA-256 checked;
                      remove the remote dir

A host's failure becomes its record's status/error; the bundle keeps what every host produced.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from orchestrator.bundle import Bundle, sha256_file
from orchestrator.flow import ssh_exclusion
from orchestrator.manifest import CaptureFile, ClockProbeRecord, HostRecord
from orchestrator.plan import TRANSLATING_ROLES, HostPlan, Plan
from remote import commands
from remote.errors import (
    CommandError,
    CommandTimeout,
    ConnectError,
    ConnectionLost,
    InternalError,
    PreflightError,
    PrivilegeError,
    RemoteError,
    TransferError,
)
from remote.parse import (
    Armed,
    Finished,
    Parsed,
    Preflight,
    WitnessStatus,
    parse_arm,
    parse_finish,
    parse_preflight,
    parse_probe,
    parse_sections,
    snapshot_files,
)
from remote.transport import CommandResult, Connector, Transport

PROBE_SAMPLES = 8  # clock probe round trips per host, at the start and at the end

# host ("*" for the whole run), state, detail
EventSink = Callable[[str, str, str], None]


def _quiet(_host: str, _state: str, _detail: str) -> None:
    return None


@dataclass
class RunOptions:
    duration: float = 30.0
    grace: int = 10  # the host stops by itself at duration + grace
    max_packets: int = 1_000_000
    max_bytes: int = 200 * 1024 * 1024
    snaplen: int = 262144
    keep: int = 600  # the host deletes uncollected evidence this long after the capture ended
    concurrency: int = 32
    reproduce: str | None = None
    reproduce_on: str | None = None
    reproduce_timeout: int = 60
    controller_slack: float = 10.0  # the controller gives up this long after the host's own limit
    witness_kb: int = 256  # per-CPU buffer of the kernel reset witness; 0 turns it off (--no-witness)

    @property
    def limit_s(self) -> int:
        return int(self.duration + 0.999) + self.grace

    @property
    def min_free_kb(self) -> int:
        # Room for the capture cap twice over, plus the snapshots.
        return (2 * self.max_bytes) // 1024 + 10 * 1024


@dataclass
class RunResult:
    records: list[HostRecord]
    start_skew_ms: float | None
    reproduce_exit: int | None = None
    interrupted: bool = False


def _raise_for(host: str, sudo: bool, result: CommandResult, parsed: Parsed) -> None:
    status, stderr = result.exit_status, result.stderr
    last = (stderr.strip().splitlines() or [""])[-1]

    def error(cls: type[CommandError], message: str) -> CommandError:
        return cls(host, message, command=result.command.line, exit_status=status, stderr=stderr, stdout=result.stdout)

    if parsed.failure is not None:
        err = error(PreflightError, parsed.failure.text)
        err.kind = parsed.failure.code  # the script's own reason: no_tcpdump, no_interface, low_disk...
        raise err
    if sudo and status == 1 and "sudo" in stderr:
        raise error(
            PrivilegeError,
            f"sudo -n refused ({last}): allow passwordless sudo for these commands, "
            "or set sudo = false and connect as root",
        )
    if sudo and status == 127 and "sudo" in stderr:
        raise error(PrivilegeError, "sudo is not installed on the host")
    if status == commands.EXIT_TIMEOUT:
        raise CommandTimeout(host, f"{result.command.phase} hit its {result.command.timeout:.0f} s limit on the host")
    raise error(CommandError, f"{result.command.phase} exited {status}: {last or 'no message'}")


def _stop_reason(fin: Finished) -> str:
    if fin.stop_reason:  # written by the host's size watchdog
        return "max-bytes"
    if not fin.already_done:
        return "duration"  # we stopped it
    if commands.EXIT_TIMEOUT in fin.exit_codes.values():
        return "host time limit"  # the controller never came back: duration + grace
    return "max-packets"


class HostRun:
    def __init__(self, plan: HostPlan, connector: Connector, bundle: Bundle, opts: RunOptions, sink: EventSink):
        self.plan = plan
        self.connector = connector
        self.bundle = bundle
        self.opts = opts
        self.sink = sink
        self.transport: Transport | None = None
        self.preflight: Preflight | None = None
        self.armed: Armed | None = None
        self.record = HostRecord(
            name=plan.name,
            role=plan.role,
            ssh_address=f"{plan.target.host}:{plan.target.port}",
            interfaces=list(plan.interfaces),
            addresses=list(plan.addresses),
            notes=list(plan.notes),
        )

    @property
    def ok(self) -> bool:
        return self.record.status not in ("failed",)

    def fail(self, phase: str, exc: RemoteError) -> None:
        self.record.status = "failed"
        self.record.error = exc.message
        self.record.error_kind = exc.kind
        self.record.failed_phase = phase
        self.sink(self.plan.name, "failed", f"{phase}: {exc.message}")

    def internal(self, phase: str, exc: Exception) -> None:
        """A bug of ours (or output no parser foresaw) in one host's phase: that host's failed
        outcome, with the traceback in the bundle; never the run's, never the other hosts'."""
        path = f"{self.plan.name}/debug.log"
        trace = "".join(traceback.format_exception(exc))
        self.bundle.write(path, f"internal error in phase {phase} of host {self.plan.name}\n{trace}")
        self.fail(
            phase, InternalError(self.plan.name, f"internal error in {phase} ({type(exc).__name__}: {exc}); see {path}")
        )

    async def _connect(self) -> Transport:
        try:
            with anyio.fail_after(self.plan.target.connect_timeout + min(5.0, self.plan.target.connect_timeout)):
                return await self.connector.connect(self.plan.target)
        except TimeoutError:
            raise ConnectError(self.plan.name, f"no answer within {self.plan.target.connect_timeout:.0f} s") from None

    def _log(self, command: commands.RemoteCommand, exit_status: int | None, started: int, ended: int,
             stderr: str) -> None:  # fmt: skip
        self.bundle.append_jsonl(
            f"{self.plan.name}/commands.jsonl",
            {"phase": command.phase, "line": command.line, "exit_status": exit_status, "started_ns": started,
             "ended_ns": ended, "stderr": stderr[-4000:]},
        )  # fmt: skip

    async def _run(self, command: commands.RemoteCommand, *, check: bool = True) -> tuple[CommandResult, Parsed]:
        """Every remote command goes through here: a deadline on both ends and a line in
        commands.jsonl. ``check``: a non-zero exit raises the classified RemoteError."""
        assert self.transport is not None
        # The host enforces command.timeout itself (`timeout`); this is the controller's end,
        # a little later so that the host's own exit status normally wins.
        limit = command.timeout + self.opts.controller_slack
        started = time.time_ns()
        try:
            with anyio.fail_after(limit):
                result = await self.transport.run(command)
        except TimeoutError:
            self._log(command, None, started, time.time_ns(), f"no answer within {limit:.0f} s")
            raise CommandTimeout(self.plan.name, f"{command.phase} did not answer within {limit:.0f} s") from None
        self._log(command, result.exit_status, result.started_ns, result.ended_ns, result.stderr)
        parsed = parse_sections(result.stdout)
        if check and result.exit_status != 0:
            _raise_for(self.plan.name, self.plan.sudo and command.privileged, result, parsed)
        return result, parsed

    async def prepare(self, limiter: anyio.CapacityLimiter) -> None:
        name = self.plan.name
        try:
            async with limiter:
                self.sink(name, "connecting", self.record.ssh_address)
                self.transport = await self._connect()
                self.record.connected_ns = time.time_ns()
                self.sink(name, "preparing", "preflight and snapshot")
                cmd = commands.prepare(
                    self.plan.tmpdir, list(self.plan.interfaces), min_free_kb=self.opts.min_free_kb, sudo=self.plan.sudo
                )
                _, parsed = await self._run(cmd)
            pre = parse_preflight(parsed)
            self.preflight = pre
            self.record.remote_dir = pre.remote_dir or None
            for fname, text in snapshot_files(parsed).items():
                self.bundle.write(f"{name}/before/{fname}", text)
            if pre.uid != 0:
                raise PrivilegeError(name, f"commands run as uid {pre.uid}; tcpdump needs root: set sudo = true")
            if not pre.remote_dir:
                raise CommandError(name, "prepare did not report its temp directory")
            self.sink(name, "preparing", "clock probe")
            await self.probe("start")
        except RemoteError as exc:
            self.fail("prepare", exc)
        except Exception as exc:  # a host's bug is that host's outcome, not the run's
            self.internal("prepare", exc)

    async def probe(self, phase: str) -> None:
        """Sample the host's clock against ours (NTP-style, PROBE_SAMPLES round trips, the
        shortest kept). Never fails the host: a probe that does not work is a note."""
        if self.transport is None:
            return
        cmd = commands.clock_probe()
        started = time.time_ns()
        try:
            with anyio.fail_after(cmd.timeout):
                header, samples = await self.transport.exchange(cmd, PROBE_SAMPLES)
        except (RemoteError, TimeoutError) as exc:
            why = exc.message if isinstance(exc, RemoteError) else f"no answer within {cmd.timeout:.0f} s"
            self._log(cmd, None, started, time.time_ns(), why)
            self.record.notes.append(f"clock probe at {phase} failed: {why}")
            return
        self._log(cmd, 0, started, time.time_ns(), "")
        got = parse_probe(header, samples)
        if got is None:
            self.record.notes.append(f"clock probe at {phase}: no usable answer ({header or 'nothing'})")
            return
        self.record.clock_probes.append(ClockProbeRecord(phase=phase, **vars(got)))

    def bpf(self) -> str:
        ssh = self.preflight.ssh if self.preflight else None
        excl = ssh_exclusion(ssh.client_ip, ssh.client_port, ssh.server_ip, ssh.server_port) if ssh else None
        return self.plan.bpf(excl)

    async def arm(self) -> None:
        assert self.record.remote_dir is not None
        try:
            self.record.bpf_filter = self.bpf()
            cmd = commands.arm(
                self.record.remote_dir,
                list(self.plan.interfaces),
                self.record.bpf_filter,
                tcpdump=self.preflight.tcpdump if self.preflight else "",
                limit_s=self.opts.limit_s,
                max_packets=self.opts.max_packets,
                max_bytes=self.opts.max_bytes,
                snaplen=self.opts.snaplen,
                keep_s=self.opts.keep,
                witness_kb=self.opts.witness_kb,
                sudo=self.plan.sudo,
            )
            _, parsed = await self._run(cmd)
            self.armed = parse_arm(parsed)
            self.record.armed_ns = time.time_ns()
            self.record.remote_armed_ns = self.armed.armed_ns or None
            self._witness(self.armed.witness)
            w = self.record.witness
            witness = "kernel witness on" if w.state == "running" else f"no kernel witness: {w.reason or w.state}"
            self.sink(self.plan.name, "armed", f"{', '.join(self.plan.interfaces)}; {witness}")
        except RemoteError as exc:
            if isinstance(exc, CommandError) and exc.partial_output:
                for iface, text in parse_sections(exc.partial_output).sections.items():
                    if iface.startswith("tcpdump_err "):
                        exc.message += f" ({text.body.strip().splitlines()[-1] if text.body.strip() else ''})"
            self.fail("arm", exc)
        except commands.UnsafeValue as exc:
            self.fail("arm", CommandError(self.plan.name, str(exc)))
        except Exception as exc:  # a host's bug is that host's outcome, not the run's
            self.internal("arm", exc)

    def _witness(self, status: WitnessStatus) -> None:
        w = self.record.witness
        if status.state == "unknown":
            return  # the job wrote no status (yet): keep what we knew
        w.state, w.reason = status.state, status.reason or None
        w.instance = status.instance or w.instance
        w.clock = status.clock or w.clock
        w.events = status.events or w.events
        w.removed = status.removed
        w.error = status.error or None
        note = f"removed {status.swept} stale ftrace instance(s) of an earlier capture-all job"
        if status.swept and note not in self.record.notes:  # reported at arm and again at finish
            self.record.notes.append(note)

    async def _pull(self, remote_name: str, local_rel: str, sha256: str) -> None:
        assert self.transport is not None and self.record.remote_dir is not None
        sub, _, fname = local_rel.rpartition("/")
        local = self.bundle.folder(self.plan.name, *([sub] if sub else [])) / fname  # 0700 folders
        await self.transport.get(f"{self.record.remote_dir}/{remote_name}", local)
        if sha256_file(local) != sha256:
            raise TransferError(self.plan.name, f"{remote_name}: SHA-256 after transfer differs from the host's")

    async def _finish_once(self) -> Parsed:
        assert self.record.remote_dir is not None
        # A translating box also reports its conntrack entries for the flow's server ports.
        ports = tuple(sorted({leg.server.port for leg in self.plan.legs if leg.server.port}))
        cmd = commands.finish(
            self.record.remote_dir,
            list(self.plan.interfaces),
            wait_s=self.opts.grace + 5,
            sudo=self.plan.sudo,
            conntrack_ports=ports if self.plan.role in TRANSLATING_ROLES else (),
        )
        _, parsed = await self._run(cmd)
        return parsed

    async def finish(self) -> None:
        name = self.plan.name
        self.sink(name, "stopping", "")
        try:
            try:
                parsed = await self._finish_once()
            except ConnectionLost:
                # The capture stopped by itself on the host; its files wait there until
                # `keep` runs out. One fresh connection is worth a try.
                self.sink(name, "reconnecting", "connection lost during capture")
                if self.transport is not None:
                    with anyio.CancelScope(shield=True):
                        await self.transport.close()
                self.transport = await self._connect()
                parsed = await self._finish_once()
            fin = parse_finish(parsed)
            await self.probe("end")
            self.record.stopped_ns = fin.done_ns
            self.record.stop_reason = _stop_reason(fin)
            for fname, text in snapshot_files(parsed).items():
                self.bundle.write(f"{name}/after/{fname}", text)
            for iface, text in fin.tcpdump_stderr.items():
                self.bundle.write(f"{name}/{iface}.tcpdump.txt", text)
            self.sink(name, "pulling", f"{len(fin.files) + len(fin.witness.files)} file(s)")
            for rf in fin.files:
                iface = rf.name.removesuffix(".pcap")
                await self._pull(rf.name, rf.name, rf.sha256)
                stats = fin.stats.get(iface)
                self.record.captures.append(
                    CaptureFile(
                        interface=iface,
                        path=f"{name}/{rf.name}",
                        bytes=rf.size,
                        packets=stats.captured if stats else None,
                        received_by_filter=stats.received if stats else None,
                        kernel_drops=stats.dropped if stats else None,
                        tcpdump_exit=fin.exit_codes.get(iface),
                    )
                )
            self._witness(fin.witness)
            for wf in fin.witness.files:
                # The witness adds to the packets; a file of it that cannot be pulled is a note,
                # never a reason to lose the host's captures.
                try:
                    await self._pull(wf.name, f"witness/{wf.name}", wf.sha256)
                except RemoteError as exc:
                    self.record.notes.append(f"kernel witness file {wf.name} not pulled: {exc.message}")
                    self.record.witness.error = f"{wf.name} not pulled"
                    continue
                self.record.witness.files.append(f"{name}/witness/{wf.name}")
            if self.record.witness.removed is False:
                self.record.notes.append(
                    f"the job could not remove its ftrace instance {self.record.witness.instance}; the next "
                    f"capture-all job on this host removes it"
                )
            missing = [i for i in self.plan.interfaces if f"{i}.pcap" not in {f.name for f in fin.files}]
            bad = {i: c for i, c in fin.exit_codes.items() if c not in (0, 124, None)}
            if missing or bad:
                self.record.status = "partial" if self.record.captures else "failed"
                problem = ", ".join(
                    [f"no capture from {i}" for i in missing] + [f"tcpdump on {i} exited {c}" for i, c in bad.items()]
                )
                self.record.error = problem
                self.record.error_kind = "capture"
                self.record.failed_phase = "finish"
                self.sink(name, "failed" if self.record.status == "failed" else "partial", problem)
        except RemoteError as exc:
            self.fail("finish", exc)
        except Exception as exc:  # a host's bug is that host's outcome, not the run's
            self.internal("finish", exc)
        await self.cleanup()
        if self.record.status == "pending":
            self.record.status = "ok"
            total = sum(c.packets or 0 for c in self.record.captures)
            drops = sum(c.kernel_drops or 0 for c in self.record.captures)
            self.sink(name, "done", f"{total} packets, {drops} dropped by kernel")

    async def cleanup(self) -> None:
        """Remove the remote dir; on failure the host's own reaper still does it after `keep`."""
        if self.transport is None or self.record.remote_dir is None:
            return
        try:
            await self._run(commands.cleanup(self.record.remote_dir, sudo=self.plan.sudo))
            self.record.remote_dir_removed = True
        except RemoteError as exc:
            self.record.notes.append(
                f"cleanup failed ({exc.message}); the host removes it {self.opts.keep} s after the capture"
            )

    async def close(self) -> None:
        if self.transport is not None:
            with anyio.CancelScope(shield=True):
                await self.transport.close()


async def _each(fn: Callable[..., object], runs: list[HostRun], *args: object) -> None:
    async with anyio.create_task_group() as tg:
        for r in runs:
            tg.start_soon(fn, r, *args)  # type: ignore[arg-type]


async def run_capture(
    plan: Plan,
    connector: Connector,
    bundle: Bundle,
    opts: RunOptions,
    sink: EventSink = _quiet,
    stop_early: anyio.Event | None = None,
    started: Callable[[RunResult], None] | None = None,
) -> RunResult:
    """``started`` receives the result as soon as it exists: its host records are filled in as
    the run goes, so a caller that cancels the run (abandon) still has them."""
    runs = [HostRun(h, connector, bundle, opts, sink) for h in plan.hosts]
    result = RunResult([r.record for r in runs], None)
    if started is not None:
        started(result)
    try:
        await _each(HostRun.prepare, runs, anyio.CapacityLimiter(opts.concurrency))
        await _each(HostRun.arm, [r for r in runs if r.ok])
        armed = [r for r in runs if r.ok and r.armed is not None]
        # A host that made its directory but failed before capturing: remove the directory now.
        await _each(HostRun.cleanup, [r for r in runs if not r.ok])
        if not armed:
            return result
        times = [r.record.armed_ns for r in armed if r.record.armed_ns]
        result.start_skew_ms = (max(times) - min(times)) / 1e6 if times else None
        sink("*", "armed", f"{len(armed)}/{len(runs)} hosts capturing, start skew {result.start_skew_ms or 0:.0f} ms")
        deadline = anyio.current_time() + opts.duration
        reproduced = anyio.Event()
        async with anyio.create_task_group() as tg:
            if opts.reproduce:
                tg.start_soon(_reproduce, runs, opts, bundle, sink, result, reproduced)
            else:
                reproduced.set()
            result.interrupted = await _wait(deadline, opts.duration, sink, stop_early)
            # The window is over: a reproducer still running gets at most `grace` more seconds
            # (the captures stop by themselves then anyway), none after a Ctrl-C.
            with anyio.move_on_after(0 if result.interrupted else opts.grace):
                await reproduced.wait()
            tg.cancel_scope.cancel()
        sink("*", "collecting", f"stopping {len(armed)} capture(s), snapshots, pulling files")
        await _each(HostRun.finish, armed)
        sink("*", "collected", f"{sum(r.status == 'ok' for r in result.records)}/{len(runs)} hosts ok")
    finally:
        with anyio.CancelScope(shield=True):
            for r in runs:
                await r.close()
    return result


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


async def _reproduce(runs: list[HostRun], opts: RunOptions, bundle: Bundle, sink: EventSink, result: RunResult,
                     done: anyio.Event) -> None:  # fmt: skip
    try:
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
    sink(host.plan.name, "reproducing", opts.reproduce)
    try:
        res, _ = await host._run(cmd, check=False)  # its own exit status is the user's business
    except RemoteError as exc:
        sink(host.plan.name, "warning", f"--reproduce failed: {exc.message}")
        return
    result.reproduce_exit = res.exit_status
    bundle.write(
        f"{host.plan.name}/reproduce.txt",
        f"$ {opts.reproduce}\n# exit status {res.exit_status}\n# stdout\n{res.stdout}# stderr\n{res.stderr}",
    )
    tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [""]
    sink(host.plan.name, "reproduced", f"exit {res.exit_status}: {tail[0][:120]}")
