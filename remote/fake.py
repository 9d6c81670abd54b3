"""A scripted transport for tests of the orchestrator: no network, no asyncssh.

A ``FakeHost`` answers each phase (``RemoteCommand.phase``) with a healthy host's output by
default; a test overrides a phase with a ``CommandResult``, an exception to raise, or a delay,
and can make ``connect`` fail. Model: httpx ``MockTransport``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from remote.commands import RemoteCommand
from remote.errors import ConnectionLost, TransferError
from remote.transport import CommandResult, SshTarget

# An empty pcap (nanosecond magic, Ethernet): what a quiet capture looks like.
EMPTY_PCAP = bytes.fromhex("4d3cb2a10200040000000000000000000000040001000000")

Answer = CommandResult | BaseException | Callable[[RemoteCommand], CommandResult]


def _snapshot() -> str:
    return (
        f"@@section clock_ns\n{time.time_ns()}\n@@rc 0\n"
        "@@section uname\n6.1.0-fake\n@@rc 0\n"
        '@@section ip_addr\n[{"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.0.9"}]}]\n@@rc 0\n'
        "@@section nstat\n#kernel\nTcpOutRsts 0 0.0\n@@rc 0\n"
    )


@dataclass
class FakeHost:
    name: str
    pcap: bytes = EMPTY_PCAP
    connect_error: BaseException | None = None
    connect_delay: float = 0.0
    answers: dict[str, Answer] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    log: list[RemoteCommand] = field(default_factory=list)
    remote_dir: str = "/tmp/capture-all.FAKEFAKE"
    clock_offset_ns: int = 0  # this host's clock minus the controller's, as its probe reports it

    def default(self, cmd: RemoteCommand) -> CommandResult:
        now = time.time_ns()
        if cmd.phase == "prepare":
            out = (
                "@@ssh 198.19.0.1 40000 198.19.0.20 22\n@@section preflight\nuid=0\nowner=root\n"
                "tcpdump=/usr/sbin/tcpdump\ntcpdump_version=tcpdump version 4.99.3\n"
                f"free_kb=1000000\ndir={self.remote_dir}\n" + _snapshot()
            )
        elif cmd.phase == "arm":
            ifaces = cmd.args[10:]  # job, dir, limit, maxpk, maxbytes, snaplen, keep, filter, tcpdump, witness
            out = f"@@section arm\narmed_ns={now}\njob_pid=4242\n" + "".join(
                f"pid {i} {5000 + n}\n" for n, i in enumerate(ifaces)
            )
        elif cmd.phase == "finish":
            ifaces = cmd.args[3:]  # dir, wait_s, conntrack ports, then the interfaces
            digest = hashlib.sha256(self.pcap).hexdigest()
            out = f"@@section finish\nalready_done=0\ndone_ns={now}\nstop_reason=duration\n"
            out += "".join(f"rc {i} 0\nfile {i}.pcap {len(self.pcap)} {digest}\n" for i in ifaces)
            out += "".join(
                f"@@section tcpdump_err {i}\nlistening on {i}\n3 packets captured\n"
                "3 packets received by filter\n0 packets dropped by kernel\n"
                for i in ifaces
            )
            out += _snapshot()
        elif cmd.phase == "cleanup":
            out = f"@@section cleanup\nremoved={self.remote_dir}\n"
        else:
            out = ""
        return CommandResult(cmd, 0, out, "", now, time.time_ns())


class FakeTransport:
    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.name = host.name
        self.closed = False

    async def run(self, command: RemoteCommand) -> CommandResult:
        if self.closed:
            raise ConnectionLost(self.name, "connection closed")
        self.host.log.append(command)
        delay = self.host.delays.get(command.phase, 0.0)
        if delay:
            await anyio.sleep(delay)
        answer = self.host.answers.get(command.phase)
        if answer is None:
            return self.host.default(command)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, CommandResult):
            return CommandResult(
                answer.command if answer.command else command, answer.exit_status, answer.stdout, answer.stderr
            )
        return answer(command)

    async def exchange(self, command: RemoteCommand, count: int) -> tuple[str, list[tuple[int, str, int]]]:
        if self.closed:
            raise ConnectionLost(self.name, "connection closed")
        self.host.log.append(command)
        answer = self.host.answers.get(command.phase)
        if isinstance(answer, BaseException):
            raise answer
        samples = []
        for _ in range(count):
            sent = time.time_ns()
            remote = time.time_ns() + self.host.clock_offset_ns
            samples.append((sent, str(remote), time.time_ns()))
        return "@@clock ns", samples

    async def get(self, remote_path: str, local_path: Path) -> None:
        if not remote_path.startswith(self.host.remote_dir + "/"):
            raise TransferError(self.name, f"no such file {remote_path}")
        fd = os.open(local_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.host.pcap)

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
