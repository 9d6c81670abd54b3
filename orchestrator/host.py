"""One host through a capture run: its state machine, and what each step leaves in the bundle.

One SSH connection and one capture session (one shell on the host) for the whole run; its steps:

    step       the session                              on failure (the host's outcome, never the run's)
    prepare    connect; until @@ready: preflight,       failed_phase prepare; the host's job sees the
               private dir, the host's run lock         session end and removes the dir (a second
               (busy: another run holds it), the job    run's host: busy, naming the holder)
    arm        go FILTER; tcpdump listening; then the   failed_phase arm, if tcpdump never listened;
               probe, the witness, the "before"         after that a note: the capture is collected
               snapshot, until @@armed                  all the same
    probe      near the window's end: the end's clock   a note; the finish probes instead
               probe, until @@armed again
    finish     finish: stop, list, probe, "after"       failed_phase finish; what was pulled is kept
               snapshot, until @@listed; the pulls;
               rm (or the cleanup command)

A capture session lost on the way is finished by a session of its own over a new connection.
Any exception in a step, ours included, ends in ``fail`` or ``internal``: the host's record says
what happened, and a bug writes its traceback to ``<host>/debug.log``.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections.abc import Awaitable, Callable

import anyio

from orchestrator.bundle import Bundle, sha256_file
from orchestrator.flow import ssh_exclusion
from orchestrator.manifest import CaptureFile, ClockProbeRecord, HostRecord, WindowRecord
from orchestrator.options import RunOptions, capture_command, finish_wait_s, flow_ports
from orchestrator.plan import TRANSLATING_ROLES, HostPlan
from orchestrator.talk import Log, Talk, call
from remote import commands
from remote.errors import (
    CommandError,
    CommandTimeout,
    ConnectError,
    ConnectionLost,
    InternalError,
    RemoteError,
    TransferError,
)
from remote.parse import (
    Armed,
    Finished,
    Parsed,
    Preflight,
    ProbeResult,
    RemoteFile,
    WitnessStatus,
    parse_arm,
    parse_cleanup,
    parse_finish,
    parse_inline,
    parse_preflight,
    parse_rst_line,
    snapshot_files,
)
from remote.transport import Connector, Transport


def _made_in(remote_dir: str, tmpdir: str) -> bool:
    """``remote_dir`` is what our ``mktemp -d TMPDIR/capture-all.XXXXXXXX`` makes there."""
    try:
        commands.validate_remote_dir(remote_dir)
    except commands.UnsafeValue:
        return False
    return remote_dir.rsplit("/", 1)[0] == (tmpdir.rstrip("/") or "")

# host ("*" for the whole run), state, detail
EventSink = Callable[[str, str, str], None]

TRIGGER_RECONNECTS = 3  # a watch's lost trigger session is re-established this often at most


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
        self.plan, self.connector, self.bundle, self.opts, self.sink = plan, connector, bundle, opts, sink
        self.log = Log(bundle, plan.name)
        self.transport: Transport | None = None
        self.talk: Talk | None = None  # the capture session, open from prepare to the end of finish
        self.preflight: Preflight | None = None
        self.armed: Armed | None = None
        self.arm_done = anyio.Event()
        self.late_probe: anyio.Event | None = None  # set once the window's end probe is over (or not taken)
        self.listed = False  # the finish listed the files: the session now waits for "rm"
        self.idle = False  # the capture session reached @@armed: it waits for "probe" or "finish"
        self.window: tuple[int, int] | None = None  # watch mode: what to keep (host clock, ns)
        self.trigger_talk: Talk | None = None  # watch mode: the trigger session
        self.extra_talks: list[Talk] = []  # and its log triggers
        # The flow's server ports on this host: its snapshots list their sockets.
        self.ports = flow_ports(plan)
        self.conntrack = plan.role in TRANSLATING_ROLES  # a translating box reports its conntrack entries
        self.wait_s = finish_wait_s(opts)
        self.record = HostRecord(
            name=plan.name,
            role=plan.role,
            ssh_address=f"{plan.target.host}:{plan.target.port}",
            interfaces=list(plan.interfaces),
            addresses=list(plan.addresses),
            notes=list(plan.notes),
            idle_timeout=plan.idle_timeout,
        )

    @property
    def ok(self) -> bool:
        return self.record.status != "failed"

    @property
    def sudo(self) -> bool:
        return self.plan.sudo

    def fail(self, phase: str, exc: RemoteError) -> None:
        self.record.status = "failed"
        self.record.error = exc.message
        self.record.error_kind = exc.kind
        self.record.failed_phase = phase
        self.sink(self.plan.name, "failed", f"{phase}: {exc.message}")

    def _debug(self, phase: str, exc: BaseException) -> str:
        path = f"{self.plan.name}/debug.log"
        trace = "".join(traceback.format_exception(exc))
        self.bundle.write(path, f"internal error in phase {phase} of host {self.plan.name}\n{trace}")
        return path

    def internal(self, phase: str, exc: Exception) -> None:
        """A bug of ours (or output no parser foresaw) in one host's phase: that host's failed
        outcome, with the traceback in the bundle; never the run's, never the other hosts'."""
        path = self._debug(phase, exc)
        self.fail(
            phase, InternalError(self.plan.name, f"internal error in {phase} ({type(exc).__name__}: {exc}); see {path}")
        )

    def _why(self, phase: str, exc: Exception) -> str:
        """What went wrong in a step whose failure costs only a note (a bug of ours also writes
        its traceback to debug.log)."""
        if isinstance(exc, RemoteError):
            return exc.message
        self._debug(phase, exc)
        return f"internal error ({type(exc).__name__}: {exc})"

    async def _guard(self, phase: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run one step; whatever it raises becomes this host's outcome."""
        try:
            await step()
        except RemoteError as exc:
            self.fail(phase, exc)
        except commands.UnsafeValue as exc:
            self.fail(phase, CommandError(self.plan.name, str(exc)))
        except Exception as exc:  # a host's bug is that host's outcome, not the run's
            self.internal(phase, exc)

    async def _connect(self) -> Transport:
        t = self.plan.target.connect_timeout
        try:
            with anyio.fail_after(t + min(5.0, t)):
                return await self.connector.connect(self.plan.target)
        except TimeoutError:
            raise ConnectError(self.plan.name, f"no answer within {t:.0f} s") from None

    async def _talk(self, command: commands.RemoteCommand) -> Talk:
        assert self.transport is not None
        return await Talk.open(self.transport, command, self.log, self.opts.step_timeout, self.sudo)

    # ---- prepare: connect, and the capture session up to @@ready ---------------------------------
    async def prepare(self, limiter: anyio.CapacityLimiter) -> None:
        await self._guard("prepare", lambda: self._prepare(limiter))
        if not self.ok:
            await self._end_talk()

    async def _prepare(self, limiter: anyio.CapacityLimiter) -> None:
        name = self.plan.name
        async with limiter:  # the handshakes: the costly part of a connection, for both ends
            self.sink(name, "connecting", self.record.ssh_address)
            self.transport = await self._connect()
        self.record.connected_ns = time.time_ns()
        self.sink(name, "preparing", "preflight")
        cmd = capture_command(self.plan, self.opts)
        self.talk = await self._talk(cmd)
        try:
            ready = await self.talk.until("@@ready", what="preflight")
        except CommandTimeout as exc:
            raise await self.talk.stalled(exc) from None
        self.preflight = pre = parse_preflight(self.talk.parsed())
        self.record.remote_dir = pre.remote_dir or None
        if ready is None:
            raise await self.talk.failure()
        if not pre.remote_dir:
            raise CommandError(name, "the capture session did not report its temp directory")
        if not _made_in(pre.remote_dir, self.plan.tmpdir):
            # The one directory a root cleanup is ever sent for: the host names it, the plan bounds it.
            self.record.remote_dir = None
            raise CommandError(name, f"the capture session named {pre.remote_dir[:200]!r}, not a capture-all "
                               f"directory of its tmpdir {self.plan.tmpdir}: refused")  # fmt: skip
        ssh = pre.ssh
        excl = ssh_exclusion(ssh.client_ip, ssh.client_port, ssh.server_ip, ssh.server_port) if ssh else None
        self.record.bpf_filter = self.plan.bpf(excl)
        self.sink(name, "ready", "waiting for the other hosts")

    async def _end_talk(self) -> None:
        if self.talk is not None:
            await self.talk.end()
            self.talk = None

    # ---- arm: go, listening, probe, witness, "before" snapshot ---------------------------------
    async def arm(self, listening: Callable[[], None], all_listening: anyio.Event) -> None:
        """``listening`` is called once, when this host's capture listens or the host failed;
        the rest of the session (probe, witness, snapshot) waits for ``all_listening``: until
        every capture listens, the hosts' CPUs are the other captures' start."""
        told = False

        def tell() -> None:
            nonlocal told
            if not told:
                told = True
                listening()

        try:
            await self._guard("arm", lambda: self._arm(tell, all_listening))
            if not self.ok:
                await self._end_talk()
        finally:
            tell()
            self.arm_done.set()

    async def _arm(self, listening: Callable[[], None], all_listening: anyio.Event) -> None:
        talk = self.talk
        assert talk is not None and self.record.bpf_filter is not None
        await talk.say("go " + self.record.bpf_filter)
        header = await talk.until("@@probe", what="tcpdump listening", extra=15)
        self.record.armed_ns = time.time_ns()
        if header is None:
            err = await talk.failure()
            tail = [s.body.strip().splitlines()[-1] for n, s in talk.parsed().sections.items()
                    if n.startswith("tcpdump_err ") and s.body.strip()]  # fmt: skip
            if tail:
                err.message += f" ({tail[0]})"
            self.record.armed_ns = None
            raise err
        self.armed = parse_arm(talk.parsed())
        self.record.remote_armed_ns = self.armed.armed_ns or None
        listening()
        await all_listening.wait()
        try:
            await self._after_listening(talk, header)
        except Exception as exc:
            # The capture runs: whatever went wrong after it started costs its extras (probe,
            # witness, "before" snapshot), never the capture, which finish still collects.
            why = self._why("arm", exc)
            self.record.notes.append(f"after the capture started, the capture session failed: {why}")
            self.sink(self.plan.name, "warning", f"arm: {why}")

    async def _after_listening(self, talk: Talk, header: str) -> None:
        self._probe("start", await talk.probe(header, what="clock probe at start"))
        await talk.say("snap")
        if await talk.until("@@armed", what="witness and before snapshot") is None:
            raise await talk.failure()
        self.idle = True
        parsed = talk.parsed()
        armed = parse_arm(parsed)
        self.record.tcpdump = armed.tcpdump or None
        for fname, text in snapshot_files(parsed).items():
            self.bundle.write(f"{self.plan.name}/before/{fname}", text)
        self._witness(armed.witness)
        w = self.record.witness
        witness = "kernel witness on" if w.state == "running" else f"no kernel witness: {w.reason or w.state}"
        self.sink(self.plan.name, "armed", f"{', '.join(self.plan.interfaces)}; {witness}")

    def _probe(self, phase: str, got: ProbeResult | None) -> None:
        if got is None:
            self.record.notes.append(f"clock probe at {phase}: no usable answer")
        else:
            # One probe per phase: a finish after a reconnect probes again, and its answer is the later.
            self.record.clock_probes = [p for p in self.record.clock_probes if p.phase != phase]
            self.record.clock_probes.append(ClockProbeRecord(phase=phase, **vars(got)))

    # ---- the end's clock probe, while the capture still runs ----------------------------------
    async def probe_late(self, start_at: float, latest: float, over: anyio.Event) -> None:
        """The end's clock probe near the window's end, while the session has nothing else to do:
        the finish, when every host wants the controller at once, then need not wait for eight
        round trips (0.9 s of a 100-host lab run's finish, measured). Starts at ``start_at``
        (anyio time) or once the host's arm is over, never after ``latest`` nor once the window
        is ``over`` (a Ctrl-C): then the finish probes instead. A probe once started runs to its
        end, past the window's if need be: this host's finish waits for it, no other host's does."""
        done = self.late_probe = anyio.Event()
        try:
            await self._probe_late(start_at, latest, over)
        finally:
            done.set()

    async def _probe_late(self, start_at: float, latest: float, over: anyio.Event) -> None:
        with anyio.move_on_after(max(0.0, start_at - anyio.current_time())):
            await over.wait()
        with anyio.move_on_after(max(0.0, latest - anyio.current_time())):
            async with anyio.create_task_group() as tg:  # the arm's end or the window's, the first

                async def arm_over() -> None:
                    await self.arm_done.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(arm_over)
                await over.wait()
                tg.cancel_scope.cancel()
        talk = self.talk
        if over.is_set() or not self.arm_done.is_set() or anyio.current_time() > latest:
            return  # the finish probes instead
        if not self.idle or talk is None or talk.ended is not None:
            return
        try:
            await talk.say("probe")
            header = await talk.until("@@probe", what="clock probe at end")
            if header is None:
                raise await talk.failure()
            got = await talk.probe(header, what="clock probe at end")
            await talk.say("snap")
            if await talk.until("@@armed", what="clock probe at end") is None:
                raise await talk.failure()
        except Exception as exc:
            # The capture runs on; the finish reconnects (a session whose answers are not where
            # they should be is closed: its shell reads EOF and stops there).
            self.record.notes.append(f"the clock probe near the window's end failed: {self._why('probe', exc)}")
            self.idle = False
            await self._end_talk()
            return
        self._probe("end", got)

    # ---- watch mode: the trigger session, while armed -----------------------------------------
    @property
    def start_probe(self) -> ClockProbeRecord | None:
        """The clock probe at the start: this host's clock minus the controller's, and its bound."""
        return next((p for p in self.record.clock_probes if p.phase == "start"), None)

    async def watch_log(self, path: str, pattern: str, fire: Callable[[HostRun, int | None, str, str], None]) -> None:
        """Watch mode's --trigger-on-log on this host: the first line of ``path`` matching
        ``pattern``; its time is its arrival (a log line has no clock of ours)."""
        await self.arm_done.wait()
        if not self.ok or self.armed is None or self.record.remote_dir is None or self.transport is None:
            return
        talk = None
        try:
            cmd = commands.log_trigger(self.record.remote_dir, path, pattern, limit_s=self.opts.limit_s, sudo=self.sudo)
            talk = await self._talk(cmd)
            if await talk.until("@@listening", what="log trigger") is None:
                raise await talk.failure()
            wait = self.opts.limit_s + self.opts.controller_slack
            line = await talk.until("@@log", what="waiting for the log", extra=wait)
            if line is not None:
                fire(self, None, f"{path}: {line.removeprefix('@@log ').strip()}", "log")
        except Exception as exc:
            why = self._why("log-trigger", exc)
            self.record.notes.append(f"its log trigger on {path} failed ({why})")
            self.sink(self.plan.name, "warning", f"log trigger: {why}")
        finally:
            if talk is not None:
                self.extra_talks.append(talk)  # closed at the end (on the host it ends with the job)

    async def watch_trigger(self, fire: Callable[[HostRun, int | None, str, str], None]) -> None:
        """Watch mode: once armed, a session of its own that says each RST of the flow the host's
        trigger captures see; ``fire(host, host_ns, line, "rst")`` for each. A host whose trigger session
        fails is still armed (its ring is kept all the same): the others' triggers, the manual
        trigger or the arming's end still end the wait; the manifest says so."""
        await self.arm_done.wait()
        if not self.ok or self.armed is None or self.record.remote_dir is None or self.transport is None:
            return
        for attempt in range(TRIGGER_RECONNECTS + 1):
            try:
                await self._trigger_session(fire)
                return
            except ConnectionLost as exc:
                lost = time.time_ns()
                if attempt == TRIGGER_RECONNECTS:
                    why = exc.message
                    break
                self.sink(self.plan.name, "reconnecting", "trigger session lost")
                try:
                    old, self.transport = self.transport, await self._connect()
                    if old is not None:
                        with anyio.CancelScope(shield=True):
                            await old.close()
                except Exception as again:
                    why = self._why("trigger", again)
                    break
                gap = (time.time_ns() - lost) / 1e9
                self.record.notes.append(
                    f"its trigger session was lost ({exc.message}) and re-established {gap:.1f} s later: an RST "
                    "there in that gap was not seen live (its ring kept the packets)"
                )
            except Exception as exc:
                why = self._why("trigger", exc)
                break
        self.record.notes.append(f"its RST trigger failed ({why}): its ring was kept, other triggers still counted")
        self.sink(self.plan.name, "warning", f"trigger: {why}")

    async def _trigger_session(self, fire: Callable[[HostRun, int | None, str, str], None]) -> None:
        o = self.opts
        assert self.record.remote_dir is not None
        await self.end_trigger_session()
        cmd = commands.trigger(self.record.remote_dir, limit_s=o.limit_s, sudo=self.sudo)
        self.trigger_talk = talk = await self._talk(cmd)
        if await talk.until("@@listening", what="trigger") is None:
            raise await talk.failure()
        while True:
            line = await talk.until("@@rst", what="waiting for a reset", extra=o.limit_s + o.controller_slack)
            if line is None:
                return
            fire(self, parse_rst_line(line), line.removeprefix("@@rst ").strip(), "rst")

    async def end_trigger_session(self) -> None:
        if self.trigger_talk is not None:
            await self.trigger_talk.end()
            self.trigger_talk = None

    async def end_trigger(self) -> None:
        await self.end_trigger_session()
        talks, self.extra_talks = self.extra_talks, []
        for talk in talks:
            # A log trigger ends on the host with the capture job (after "rm"): not waited for.
            await talk.end(wait_s=0.2)

    def _witness(self, status: WitnessStatus) -> None:
        w = self.record.witness
        if status.state == "unknown":
            return  # the host wrote no status (yet): keep what we knew
        w.state, w.reason = status.state, status.reason or None
        w.instance = status.instance or w.instance
        w.clock = status.clock or w.clock
        w.events = status.events or w.events
        w.error = status.error or None
        note = f"removed {status.swept} stale ftrace instance(s) of an earlier capture-all job"
        if status.swept and note not in self.record.notes:
            self.record.notes.append(note)

    # ---- finish: stop, list, probe, "after" snapshot, pull, rm --------------------------------
    async def finish(self) -> None:
        name = self.plan.name
        await self.arm_done.wait()
        if self.late_probe is not None:
            await self.late_probe.wait()  # its own probe, not the other hosts'
        self.sink(name, "stopping", "")
        await self._guard("finish", self._finish)
        await self.end_trigger()  # the capture stopped: the host's trigger session ends with it
        if self.listed and self.talk is not None and self.talk.ended is None:
            await self._guard("cleanup", self._rm)
        else:
            await self._end_talk()
            await self.cleanup()
        if self.record.status == "pending":
            self.record.status = "ok"
            total = sum(c.packets or 0 for c in self.record.captures)
            drops = sum(c.kernel_drops or 0 for c in self.record.captures)
            self.sink(name, "done", f"{total} packets, {drops} dropped by kernel")

    async def _listing(self) -> tuple[Talk, Finished]:
        """Finishing, in the capture session when it is still there, else in a session of its own."""
        assert self.record.remote_dir is not None
        talk = self.talk
        if talk is not None and talk.ended is None:
            talk.chapter()  # what follows is the finish's: its own sections
            said = "finish" if self.window is None else "finish " + " ".join(commands.window_words(self.window))
            await talk.say(said)
        else:
            cmd = commands.finish(self.record.remote_dir, list(self.plan.interfaces), wait_s=self.wait_s,
                                  sudo=self.sudo, ports=self.ports, conntrack=self.conntrack,
                                  window=self.window)  # fmt: skip
            self.talk = talk = await self._talk(cmd)
        header = await talk.until("@@probe", "@@listed", what="stopping the capture", extra=self.wait_s)
        if header is None:
            raise await talk.failure()
        fin, other = parse_finish(talk.parsed()).only(self.plan.interfaces)
        if other:
            self.record.notes.append("the host's finish named what the plan does not (ignored): "
                                     + ", ".join(repr(o) for o in other[:10]))  # fmt: skip
        if header.startswith("@@probe"):  # no probe while the capture ran (or a new session)
            self._probe("end", await talk.probe(header, what="clock probe at end"))
            await talk.say("snap")
            if await talk.until("@@listed", what="after snapshot") is None:
                raise await talk.failure()
        return talk, fin

    async def _finish(self) -> None:
        name = self.plan.name
        try:
            talk, fin = await self._listing()
        except ConnectionLost:
            # The capture stopped by itself on the host; its files wait there until `keep` runs
            # out. One fresh connection is worth a try.
            self.sink(name, "reconnecting", "connection lost while stopping the capture")
            await self.close()
            self.transport = await self._connect()
            talk, fin = await self._listing()
        self.listed = True
        self.record.stopped_ns = fin.done_ns
        self.record.stop_reason = _stop_reason(fin)
        if self.window is not None and self.record.stop_reason == "duration":
            self.record.stop_reason = "watch window"  # we stopped it: the trigger's `after` was over
        if self.window is not None:
            self.record.window = WindowRecord(
                from_ns=self.window[0], to_ns=self.window[1], reach_ns=fin.reach_ns,
                ring_files={i: list(kf) for i, kf in fin.ring.items()},
            )  # fmt: skip
        for fname, text in snapshot_files(talk.parsed()).items():
            self.bundle.write(f"{name}/after/{fname}", text)
        for iface, text in fin.tcpdump_stderr.items():
            self.bundle.write(f"{name}/{iface}.tcpdump.txt", text)
        self._witness(fin.witness)
        self.sink(name, "pulling", f"{len(fin.files) + len(fin.witness.files)} file(s)")
        inline = parse_inline(talk.parsed(), fin.files + fin.witness.files + fin.logs)
        with anyio.fail_after(commands.TRANSFER_S):
            await self._pull_all(fin, inline)
        talk.steps["pulls"] = time.time_ns() - talk.started
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

    async def _read_timeouts(self) -> None:
        """A proxy's or translating box's idle timeouts (its HAProxy config, nginx -T, the
        conntrack and keep-alive sysctls: read-only), read while its files come back: the
        report's idle-timeout chain. A failure is a note."""
        if self.plan.role not in ("proxy", *TRANSLATING_ROLES) or self.transport is None:
            return
        try:
            result, _ = await call(self.transport, commands.audit(sudo=self.sudo), self.log,
                                   slack=self.opts.controller_slack, sudo=self.sudo, check=False)  # fmt: skip
        except RemoteError as exc:
            self.record.notes.append(f"idle timeouts not read: {exc.message}")
            return
        rel = f"{self.plan.name}/timeouts.txt"
        self.bundle.write(rel, result.stdout)
        self.record.timeouts = rel

    async def _pull(self, f: RemoteFile, local_rel: str, inline: dict[str, bytes]) -> None:
        """One file into the bundle: from the finish output if it came inline and its digest is
        the host's, else over SFTP (or `cat`); either way its SHA-256 must be the host's."""
        assert self.transport is not None and self.record.remote_dir is not None
        data = inline.get(f.name)
        if data is not None and hashlib.sha256(data).hexdigest() == f.sha256:
            self.bundle.write(f"{self.plan.name}/{local_rel}", data)
            return
        sub, _, fname = local_rel.rpartition("/")
        local = self.bundle.folder(self.plan.name, *([sub] if sub else [])) / fname  # 0700 folders
        await self.transport.get(f"{self.record.remote_dir}/{f.name}", local, f.size)
        if sha256_file(local) != f.sha256:
            raise TransferError(self.plan.name, f"{f.name}: SHA-256 after transfer differs from the host's")
        self.bundle.transferred(local, f.sha256)

    async def _pull_all(self, fin: Finished, inline: dict[str, bytes]) -> None:
        """Every file at once (one SFTP session carries them all, the small ones came inline). A
        capture that does not come back fails the host; a witness file is only a note: it adds to
        the packets."""
        name = self.plan.name
        errors: list[RemoteError] = []

        async def capture(rf: RemoteFile) -> None:
            try:
                await self._pull(rf, rf.name, inline)
            except RemoteError as exc:
                errors.append(exc)

        async def witness(wf: RemoteFile) -> None:
            try:
                await self._pull(wf, f"witness/{wf.name}", inline)
            except RemoteError as exc:
                self.record.notes.append(f"kernel witness file {wf.name} not pulled: {exc.message}")
                self.record.witness.error = f"{wf.name} not pulled"

        async def log(lf: RemoteFile) -> None:
            try:
                await self._pull(lf, f"logs/{lf.name}", inline)
            except RemoteError as exc:
                self.record.notes.append(f"log file {lf.name} not pulled: {exc.message}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_timeouts)  # while the files come back; a failure is a note
            for rf in fin.files:
                tg.start_soon(capture, rf)
            for wf in fin.witness.files:
                tg.start_soon(witness, wf)
            for lf in fin.logs:
                tg.start_soon(log, lf)
        for rf in fin.files:
            if (self.bundle.root / name / rf.name).exists():
                iface = rf.name.removesuffix(".pcap")
                stats = fin.stats.get(iface)
                self.record.captures.append(CaptureFile(
                    interface=iface, path=f"{name}/{rf.name}", bytes=rf.size,
                    packets=stats.captured if stats else None, received_by_filter=stats.received if stats else None,
                    kernel_drops=stats.dropped if stats else None, tcpdump_exit=fin.exit_codes.get(iface),
                ))  # fmt: skip
        got = self.bundle.root / name / "logs"
        self.record.logs = sorted(f"{name}/logs/{lf.name}" for lf in fin.logs if (got / lf.name).exists())
        pulled = self.bundle.root / name / "witness"
        self.record.witness.files = sorted(
            f"{name}/witness/{wf.name}" for wf in fin.witness.files if (pulled / wf.name).exists()
        )
        if errors:
            raise errors[0]

    async def _rm(self) -> None:
        talk = self.talk
        assert talk is not None
        await talk.say("rm")
        await talk.until(what="removing the directory")
        result = await talk.end()
        if result.exit_status != 0:
            raise await talk.failure()
        self._removed(talk.parsed())

    def _removed(self, parsed: Parsed) -> None:
        done = parse_cleanup(parsed)
        self.record.remote_dir_removed = done.removed
        self.record.witness.removed = done.instance_removed
        inst = self.record.witness.instance
        if done.instance_pending:
            self.record.notes.append(
                f"its capture job was still removing its ftrace instance {inst} when the directory was removed "
                "(the job goes on; the next capture-all job on this host removes any left over)"
            )
        elif done.instance_removed is False:
            self.record.notes.append(
                f"the capture job could not remove its ftrace instance {inst}; the next capture-all job on this "
                "host removes it"
            )

    async def cleanup(self) -> None:
        """Remove the remote dir of a host whose finish session is gone; on failure the host's
        own reaper still does it after `keep`."""
        if self.transport is None or self.record.remote_dir is None or self.record.remote_dir_removed:
            return
        try:
            _, parsed = await call(self.transport, commands.cleanup(self.record.remote_dir, sudo=self.sudo), self.log,
                                   slack=self.opts.controller_slack, sudo=self.sudo)  # fmt: skip
            self._removed(parsed)
        except RemoteError as exc:
            self.record.notes.append(
                f"cleanup failed ({exc.message}); the host removes it {self.opts.keep} s after the capture"
            )

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.end_trigger()
            if self.talk is not None:
                await self.talk.end()
                self.talk = None
            if self.transport is not None:
                await self.transport.close()
