"""The transport interface the orchestrator talks to, and what it returns.

``remote.ssh`` implements it with asyncssh; ``remote.fake`` implements it from a script, for
fast tests of the orchestrator's fan-out, failures and deadlines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from remote.commands import RemoteCommand


@dataclass(frozen=True)
class JumpHost:
    host: str
    port: int = 22
    user: str | None = None


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to open one SSH connection (built from the inventory)."""

    name: str
    host: str
    port: int = 22
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    known_hosts: str | None = None  # None: the known_hosts files of the user's ssh config (OpenSSH's)
    config_files: tuple[str, ...] = ()  # empty: the user's ~/.ssh/config, if any
    jumps: tuple[JumpHost, ...] = ()  # jump hosts, first to last (ssh -J a,b)
    connect_timeout: float = 10.0
    accept_new_host_key: bool = False


@dataclass
class CommandResult:
    command: RemoteCommand
    exit_status: int | None
    stdout: str
    stderr: str
    started_ns: int = 0
    ended_ns: int = 0


# What a host may send before that is its protocol error (remote.errors.ProtocolError): our scripts'
# longest line is the base64 of the inline files (one line of base64's 76 columns each) or a socket of
# ss; a transcript (one chapter of a session: up to a step of the finish) is the inline files'
# base64 (4 MiB of files), the conntrack entries (5000 lines) and the snapshots.
MAX_LINE = 1 << 20
MAX_TRANSCRIPT = 64 << 20


class Session(Protocol):
    """One remote command the controller talks to line by line over its stdin and stdout (the
    arm and finish sessions of ``remote.scripts``)."""

    async def readline(self) -> str | None:
        """The next line of its stdout, without the newline; None once it closed its stdout.
        Raises ConnectionLost."""
        ...

    async def send(self, line: str) -> None:
        """Write one line to its stdin. Raises ConnectionLost."""
        ...

    async def close(self, wait_s: float) -> CommandResult:
        """Close its stdin and wait (at most ``wait_s``) for it to exit: its exit status (None
        if it did not exit within wait_s, or the connection went), its stderr, and any stdout not read."""
        ...


class Transport(Protocol):
    """One open connection to one host. Sessions, commands and transfers on it count against the
    host's sshd ``MaxSessions`` (10 by default): an implementation keeps to fewer at once."""

    name: str

    async def run(self, command: RemoteCommand) -> CommandResult:
        """Run one command. Raises ConnectionLost, CommandTimeout (see ``remote.errors``)."""
        ...

    async def open(self, command: RemoteCommand) -> Session:
        """Start a command to talk to (``Session``); the caller closes it. Raises ConnectionLost."""
        ...

    async def get(self, remote_path: str, local_path: Path, size: int) -> None:
        """Copy one remote file to ``local_path`` (created 0600), at most ``size`` bytes (the size
        the host listed: a file that turns out longer is a TransferError, not a full disk).
        Raises TransferError."""
        ...

    async def close(self) -> None: ...


class Connector(Protocol):
    async def connect(self, target: SshTarget) -> Transport:
        """Open a connection. Raises ConnectError, AuthError, HostKeyError."""
        ...

    async def close(self) -> None:
        """Close what the connector shares between connections (jump-host connections)."""
        ...
