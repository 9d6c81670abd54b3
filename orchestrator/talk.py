"""One remote call, as the orchestrator makes it: a deadline on both ends and a line in the host's
``commands.jsonl``, whether the call is a command run to its end (``call``) or a session talked
to line by line (``Talk``: the arm and finish conversations of ``remote.scripts``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from orchestrator.bundle import Bundle
from remote.classify import classify
from remote.commands import RemoteCommand
from remote.errors import CommandTimeout, ProtocolError, RemoteError
from remote.parse import Parsed, ProbeResult, SectionReader, parse_probe, parse_sections
from remote.transport import MAX_LINE, MAX_TRANSCRIPT, CommandResult, Session, Transport

PROBE_SAMPLES = 8  # clock probe round trips per host, at the start and at the end


class Log:
    """The host's ``commands.jsonl``: every remote command, its exact line, exit status, stderr,
    times, and for a session what the controller said to it."""

    def __init__(self, bundle: Bundle, host: str) -> None:
        self.bundle, self.host = bundle, host

    def write(self, command: RemoteCommand, exit_status: int | None, started: int, ended: int, stderr: str,
              said: list[str] | None = None, steps: dict[str, int] | None = None) -> None:  # fmt: skip
        record: dict[str, object] = {
            "phase": command.phase, "line": command.line, "exit_status": exit_status, "started_ns": started,
            "ended_ns": ended, "stderr": stderr[-4000:],
        }  # fmt: skip
        if said is not None:
            record["said"] = said
        if steps:
            record["steps_ns"] = steps
        self.bundle.append_jsonl(f"{self.host}/commands.jsonl", record)


@contextmanager
def _bounded(log: Log, command: RemoteCommand, limit: float, late: str) -> Iterator[None]:
    """The controller's end of a call's deadline. A call that times out or fails still gets its
    line in commands.jsonl."""
    started = time.time_ns()
    try:
        with anyio.fail_after(limit):
            yield
    except TimeoutError:
        log.write(command, None, started, time.time_ns(), f"{late} within {limit:.0f} s")
        raise CommandTimeout(log.host, f"{command.phase} {late} within {limit:.0f} s") from None
    except RemoteError as exc:
        log.write(command, None, started, time.time_ns(), exc.message)
        raise


async def call(transport: Transport, command: RemoteCommand, log: Log, *, slack: float, sudo: bool,
               check: bool = True) -> tuple[CommandResult, Parsed]:  # fmt: skip
    """Run one command to its end. The host enforces ``command.timeout`` itself (``timeout``);
    this is the controller's end, ``slack`` later, so that the host's own exit status normally
    wins. ``check``: a non-zero exit raises the classified RemoteError."""
    with _bounded(log, command, command.timeout + slack, "did not answer"):
        result = await transport.run(command)
    log.write(command, result.exit_status, result.started_ns, result.ended_ns, result.stderr)
    parsed = parse_sections(result.stdout)
    if check and result.exit_status != 0:
        raise classify(log.host, sudo and command.privileged, result, parsed)
    return result, parsed


class Talk:
    """A session and its transcript. Each step waits at most ``step_s`` for the host (the host's
    own ``timeout`` bounds the whole session on its side); ``end`` closes it and logs it."""

    def __init__(self, session: Session, command: RemoteCommand, log: Log, step_s: float, sudo: bool) -> None:
        self.session, self.command, self.log, self.step_s, self.sudo = session, command, log, step_s, sudo
        self.lines: list[str] = []
        self.said: list[str] = []
        self.started = time.time_ns()
        self.steps: dict[str, int] = {}  # each step's end, ns after the start: where a slow host's time went
        self.ended: CommandResult | None = None
        self._reader = SectionReader()
        self._size = 0  # characters of the transcript since the last chapter (bounded: MAX_TRANSCRIPT)

    @classmethod
    async def open(cls, transport: Transport, command: RemoteCommand, log: Log, step_s: float, sudo: bool) -> Talk:
        with _bounded(log, command, step_s, "could not start"):
            session = await transport.open(command)
        return cls(session, command, log, step_s, sudo)

    @contextmanager
    def _deadline(self, what: str, extra: float = 0.0) -> Iterator[None]:
        limit = self.step_s + extra
        try:
            with anyio.fail_after(limit):
                yield
        except TimeoutError:
            why = f"{self.command.phase}: no answer within {limit:g} s ({what})"
            raise CommandTimeout(self.log.host, why) from None

    async def until(self, *markers: str, what: str, extra: float = 0.0) -> str | None:
        """Read the host's lines into the transcript until one that starts with one of
        ``markers`` (returned, not kept) or the end of its output or a ``@@fail`` (None). A
        ``@@fail`` is final: our scripts exit after it, so no marker after it is believed."""
        try:
            with self._deadline(what, extra):
                while not self._reader.ended:
                    line = await self.session.readline()
                    if line is None:
                        return None
                    if markers and line.startswith(markers):
                        return line
                    self._keep(line)
                return None
        finally:
            self.steps[what] = time.time_ns() - self.started

    def _keep(self, line: str) -> None:
        """One line into the transcript; a host that says more than our scripts ever do (a line
        past MAX_LINE, a chapter past MAX_TRANSCRIPT) is that host's protocol error."""
        self._size += len(line) + 1
        if len(line) > MAX_LINE or self._size > MAX_TRANSCRIPT:
            what = f"a line of {MAX_LINE >> 20} MiB" if len(line) > MAX_LINE else f"{MAX_TRANSCRIPT >> 20} MiB"
            raise ProtocolError(self.log.host, f"{self.command.phase}: more than {what} from the host in one step "
                                "(no script of ours says that much)")  # fmt: skip
        self.lines.append(line)
        self._reader.feed(line)

    async def say(self, line: str) -> None:
        if self.said and self.said[-1].split(" (x")[0] == line == "t":
            n = int(self.said[-1].partition("(x")[2].rstrip(")") or 1)
            self.said[-1] = f"t (x{n + 1})"
        else:
            self.said.append(line)
        await self.session.send(line)

    async def probe(self, header: str, what: str = "clock probe") -> ProbeResult | None:
        """The clock probe, once the host printed ``@@probe UNIT`` (``header``): PROBE_SAMPLES
        round trips, each a line out and the host's clock back."""
        samples = []
        with self._deadline(what):
            for _ in range(PROBE_SAMPLES):
                sent = time.time_ns()
                await self.say("t")
                answer = await self.session.readline()
                samples.append((sent, (answer or "").strip(), time.time_ns()))
                if answer is None:
                    break
        self.steps[what] = time.time_ns() - self.started
        return parse_probe(header, samples)

    def chapter(self) -> None:
        """What the host prints from now on is a new transcript (the finish after the capture):
        ``parsed`` reads only that, and the window before it is a step of its own."""
        self.steps["window"] = time.time_ns() - self.started
        self.lines = []
        self._reader = SectionReader()
        self._size = 0

    def parsed(self) -> Parsed:
        """The transcript since the last chapter, as sections (read as it came)."""
        return self._reader.result()

    async def end(self, wait_s: float | None = None) -> CommandResult:
        """Close the session (its stdin: the host's script reads EOF and stops where it is),
        log it, and return how it ended (waiting at most ``wait_s`` for its exit status, by
        default the step's time up to 10 s). Safe to call twice."""
        if self.ended is None:
            with anyio.CancelScope(shield=True):
                result = await self.session.close(wait_s=min(self.step_s, 10.0) if wait_s is None else wait_s)
            rest = result.stdout
            if len(rest) + self._size > MAX_TRANSCRIPT:  # what came after the last step read: bounded too
                rest = rest[: max(0, MAX_TRANSCRIPT - self._size)]
                result.stderr += f"\n(its output after {MAX_TRANSCRIPT >> 20} MiB was not read)"
            for line in rest.splitlines():
                if len(line) <= MAX_LINE:
                    self.lines.append(line)
                    self._reader.feed(line)
            self.log.write(self.command, result.exit_status, self.started, result.ended_ns or time.time_ns(),
                           result.stderr, self.said, self.steps)  # fmt: skip
            self.ended = result
        return self.ended

    async def stalled(self, exc: CommandTimeout) -> CommandTimeout:
        """A step the host never answered: the session is ended (the host's script reads EOF and
        stops) and the host's last words on stderr go into the one line, since what stalls a
        session before our script runs is the login: a ~/.bashrc waiting on a lock, a prompt, a
        home directory on a dead NFS server."""
        result = await self.end(wait_s=1.0)  # what it wrote while we waited is here already
        words = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        words = [w for w in words if not w.startswith("session did not end")][-2:]
        if words:
            said = " / ".join(words)
            exc.message += f"; its stderr: {said if len(said) <= 300 else said[:299] + '…'}"
        return exc

    async def failure(self) -> RemoteError:
        """The session ended before its next marker: why, from its exit status and output."""
        result = await self.end()
        result.stdout = "\n".join(self.lines)
        return classify(self.log.host, self.sudo and self.command.privileged, result, self.parsed())
