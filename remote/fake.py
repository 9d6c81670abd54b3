"""A scripted transport for tests of the orchestrator: no network, no asyncssh.

A ``FakeHost`` plays a healthy host by default: its capture session (and the finish session of a
reconnect) follow the conversation of ``remote.scripts`` (``@@ready``, ``go FILTER``, the clock
probe, ``@@armed``, ``probe`` while the capture runs, ``finish``, ``@@listed``, ``rm``), and
``cleanup``/``reproduce`` answer at once. A test overrides a phase with:

- a ``CommandResult``: the whole stdout at once, whatever the controller says, then that exit;
- an exception: raised when the phase starts (``open`` or ``run``);
- a callable ``(command) -> CommandResult``, for commands that are run rather than talked to;
- a ``Dialogue``: a generator function ``(host, command)`` that yields each chunk of stdout and
  receives the controller's next line, and returns ``(last chunk, exit status)``;

and can delay a phase (``delays``) or make ``connect`` fail. Model: httpx ``MockTransport``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import anyio
import anyio.lowlevel

from remote.commands import RemoteCommand
from remote.errors import ConnectionLost, TransferError
from remote.transport import CommandResult, SshTarget

# An empty pcap (nanosecond magic, Ethernet): what a quiet capture looks like.
EMPTY_PCAP = bytes.fromhex("4d3cb2a10200040000000000000000000000040001000000")

Conversation = Generator[str, str, tuple[str, int]]
Dialogue = Callable[["FakeHost", RemoteCommand], Conversation]
Answer = CommandResult | BaseException | Callable[[RemoteCommand], CommandResult] | Dialogue


def snapshot() -> str:
    return (
        f"@@section clock_ns\n{time.time_ns()}\n@@rc 0\n"
        "@@section uname\n6.1.0-fake\n@@rc 0\n"
        '@@section ip_addr\n[{"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.0.9"}]}]\n@@rc 0\n'
        "@@section nstat\n#kernel\nTcpOutRsts 0 0.0\n@@rc 0\n"
    )


def probe(host: FakeHost, said: str) -> Generator[str, str, str]:
    """Answers "t" lines with the host's clock until another line comes; returns that line."""
    while said == "t":
        said = yield f"{time.time_ns() + host.clock_offset_ns}\n"
    return said


def capture_dialogue(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    ifaces = cmd.interfaces
    said = yield (
        "@@ssh 198.19.0.1 40000 198.19.0.20 22\n@@section preflight\nuid=0\nowner=root\ntcpdump=/usr/sbin/tcpdump\n"
        f"free_kb=1000000\ndir={host.remote_dir}\n@@ready\n"
    )
    if not said.startswith("go "):
        return "", 0
    host.filters.append(said[3:])
    pids = "".join(f"pid {i} {5000 + n}\n" for n, i in enumerate(ifaces))
    now = time.time_ns() + host.clock_offset_ns  # the host's own clock
    said = yield f"@@section arm\njob_pid=4242\n{pids}@@section probe\nnow_ns={now}\n@@probe ns\n"
    said = yield from probe(host, said)
    said = yield "@@section tcpdump\npath=/usr/sbin/tcpdump\n" + snapshot() + "@@armed\n"
    probed = False
    while said == "probe":  # the end's clock probe while the capture runs
        said = yield f"@@section probe\nnow_ns={time.time_ns() + host.clock_offset_ns}\n@@probe ns\n"
        said = yield from probe(host, said)
        said = yield "@@armed\n"
        probed = True
    if said != "finish" and not said.startswith("finish "):  # watch mode: "finish FROM TO"
        return "", 0
    return (yield from finish_steps(host, ifaces, probed))


def trigger_dialogue(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    """Watch mode's trigger session: listening, then the host's ``rst_line`` (if any) at once;
    then it waits, as the host's does, until the controller closes it."""
    yield "@@listening\n" + (f"@@rst {host.rst_line}\n" if host.rst_line else "")
    while True:
        yield ""


def finish_dialogue(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    return (yield from finish_steps(host, cmd.interfaces))


def finish_steps(host: FakeHost, ifaces: tuple[str, ...], probed: bool = False) -> Conversation:
    digest = hashlib.sha256(host.pcap).hexdigest()
    d = host.remote_dir
    out = f"@@section finish\nalready_done=0\ndone_ns={time.time_ns()}\nstop_reason=\n"
    out += "".join(f"rc {i} 0\n" for i in ifaces) + "@@section files\n"
    out += "".join(f"size {len(host.pcap)} {d}/{i}.pcap\n" for i in ifaces)
    out += "".join(f"{digest}  {d}/{i}.pcap\n" for i in ifaces)
    out += "".join(
        f"@@section tcpdump_err {i}\nlistening on {i}\n3 packets captured\n"
        "3 packets received by filter\n0 packets dropped by kernel\n"
        for i in ifaces
    )
    if probed:
        said = yield out + snapshot() + "@@listed\n"
    else:
        said = yield out + "@@probe ns\n"
        said = yield from probe(host, said)
        said = yield snapshot() + "@@listed\n"
    if said != "rm":
        return "", 0
    return f"@@section cleanup\nremoved={d}\n", 0


@dataclass
class FakeHost:
    name: str
    pcap: bytes = EMPTY_PCAP
    connect_error: BaseException | None = None
    connect_delay: float = 0.0
    answers: dict[str, Answer] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, str] = field(default_factory=dict)  # what a phase's session writes on stderr
    log: list[RemoteCommand] = field(default_factory=list)
    said: list[str] = field(default_factory=list)  # every line the controller sent, in order
    filters: list[str] = field(default_factory=list)  # the capture filters it was given
    remote_dir: str = "/tmp/capture-all.FAKEFAKE"
    sessions_open: int = 0  # sessions and commands open on its connection now, and at most
    sessions_max: int = 0
    clock_offset_ns: int = 0  # this host's clock minus the controller's, as its probe reports it
    rst_line: str | None = None  # watch mode: what its trigger session says once armed
    dialogues: dict[str, Dialogue] = field(
        default_factory=lambda: {"capture": capture_dialogue, "finish": finish_dialogue, "trigger": trigger_dialogue}
    )

    def default(self, cmd: RemoteCommand) -> CommandResult:
        now = time.time_ns()
        out = f"@@section cleanup\nremoved={self.remote_dir}\n" if cmd.phase == "cleanup" else ""
        return CommandResult(cmd, 0, out, "", now, time.time_ns())


class FakeSession:
    def __init__(self, host: FakeHost, cmd: RemoteCommand, answer: Answer | None) -> None:
        self.host = host
        self.cmd = cmd
        self.lines: deque[str] = deque()
        self.conversation: Conversation | None = None
        self.exit_status: int | None = None
        self.stderr = host.stderr.get(cmd.phase, "")
        self.more = anyio.Event()
        self.started = time.time_ns()
        self.closed = False
        if isinstance(answer, CommandResult):
            self._out(answer.stdout)
            self.exit_status, self.stderr = answer.exit_status, answer.stderr
        else:
            dialogue = answer if answer is not None else host.dialogues.get(cmd.phase)
            if dialogue is None:
                self.exit_status = 0
                return
            self.conversation = cast(Dialogue, dialogue)(host, cmd)
            self._step(None)

    def _out(self, text: str) -> None:
        self.lines.extend(text.splitlines())

    def _step(self, said: str | None) -> None:
        assert self.conversation is not None
        try:
            self._out(next(self.conversation) if said is None else self.conversation.send(said))
        except StopIteration as stop:
            last, self.exit_status = stop.value
            self._out(last)
            self.conversation = None
        self.more.set()

    async def readline(self) -> str | None:
        while not self.lines:
            if self.conversation is None:
                return None
            self.more = anyio.Event()
            await self.more.wait()  # the host waits for the controller: so does this read
        return self.lines.popleft()

    async def send(self, line: str) -> None:
        self.host.said.append(line)
        if self.conversation is not None:
            self._step(line)

    async def close(self, wait_s: float) -> CommandResult:
        if not self.closed:
            self.closed = True
            self.host.sessions_open -= 1
        if self.conversation is not None:
            self.conversation.close()  # stdin closed: the host's script reads EOF and exits
            self.conversation, self.exit_status = None, 0
        return CommandResult(self.cmd, self.exit_status, "\n".join(self.lines), self.stderr, self.started,
                             time.time_ns())  # fmt: skip


class FakeTransport:
    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.name = host.name
        self.closed = False

    async def _start(self, command: RemoteCommand) -> Answer | None:
        if self.closed:
            raise ConnectionLost(self.name, "connection closed")
        self.host.log.append(command)
        self.host.sessions_open += 1
        self.host.sessions_max = max(self.host.sessions_max, self.host.sessions_open)
        delay = self.host.delays.get(command.phase, 0.0)
        if delay:
            await anyio.sleep(delay)
        answer = self.host.answers.get(command.phase)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def run(self, command: RemoteCommand) -> CommandResult:
        try:
            answer = await self._start(command)
            if answer is None:
                return self.host.default(command)
            if isinstance(answer, CommandResult):
                return CommandResult(command, answer.exit_status, answer.stdout, answer.stderr)
            return cast(Callable[[RemoteCommand], CommandResult], answer)(command)
        finally:
            self.host.sessions_open -= 1

    async def open(self, command: RemoteCommand) -> FakeSession:
        try:
            return FakeSession(self.host, command, await self._start(command))
        except BaseException:
            self.host.sessions_open -= 1
            raise

    async def get(self, remote_path: str, local_path: Path, size: int) -> None:
        if not remote_path.startswith(self.host.remote_dir + "/"):
            raise TransferError(self.name, f"no such file {remote_path}")
        if len(self.host.pcap) > size:  # as the SSH transport: never more than the listed size
            raise TransferError(self.name, f"cannot pull {remote_path}: more than the {size} bytes the host listed")
        self.host.sessions_open += 1  # a transfer session while it lasts
        self.host.sessions_max = max(self.host.sessions_max, self.host.sessions_open)
        try:
            await anyio.lowlevel.checkpoint()
            fd = os.open(local_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.host.pcap)
        finally:
            self.host.sessions_open -= 1

    async def close(self) -> None:
        self.closed = True


class FakeConnector:
    def __init__(self, hosts: dict[str, FakeHost]) -> None:
        self.hosts = hosts

    async def connect(self, target: SshTarget) -> FakeTransport:
        host = self.hosts[target.name]
        if host.connect_delay:
            await anyio.sleep(host.connect_delay)
        if host.connect_error is not None:
            raise host.connect_error
        return FakeTransport(host)

    async def close(self) -> None:
        return None
