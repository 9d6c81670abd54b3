"""Errors raised while talking to one host.

    RemoteError                 anything that went wrong on or on the way to one host
    ├── ConnectError            the host could not be reached (refused, timeout, DNS, lost)
    │   └── ConnectionLost      an open connection dropped in the middle of a phase
    ├── AuthError               the host refused our credentials
    ├── HostKeyError            the host key is unknown or does not match known_hosts
    ├── CommandError            a remote command exited badly
    │   ├── PrivilegeError      ``sudo -n`` refused (a password would be needed) or no root
    │   └── PreflightError      the host cannot capture (no tcpdump, no interface, no disk, ...)
    ├── CommandTimeout          a remote command outlived its deadline on the controller side
    ├── TransferError           pulling a file back failed or its digest did not match
    ├── ProtocolError           the host said more than our scripts ever do (a line, a transcript)
    └── InternalError           a bug of ours (or output no parser foresaw) in one host's phase

Every error carries the host name; command errors also carry the command, its exit status,
the tail of its stderr and any partial output, so the one line the CLI prints is enough to act on.
"""

from __future__ import annotations


class RemoteError(Exception):
    """Base class. ``kind`` is a stable short name used in manifests and reports."""

    kind = "error"

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.message = message


class ConnectError(RemoteError):
    kind = "unreachable"


class ConnectionLost(ConnectError):
    kind = "connection_lost"


class AuthError(RemoteError):
    kind = "auth_refused"


class HostKeyError(RemoteError):
    kind = "host_key"


class CommandError(RemoteError):
    kind = "command_failed"

    def __init__(
        self,
        host: str,
        message: str,
        *,
        command: str = "",
        exit_status: int | None = None,
        stderr: str = "",
        stdout: str = "",
    ) -> None:
        super().__init__(host, message)
        self.command = command
        self.exit_status = exit_status
        self.stderr_tail = stderr[-2000:]
        self.partial_output = stdout[-2000:]


class PrivilegeError(CommandError):
    kind = "no_privilege"


class PreflightError(CommandError):
    """The host refused to capture; ``kind`` is then the remote script's own short reason
    (no_tcpdump, no_tool, no_interface, no_tmpdir, low_disk, not_armed, no_dir)."""

    kind = "preflight"


class CommandTimeout(RemoteError):
    kind = "timeout"


class TransferError(RemoteError):
    kind = "transfer"


class ProtocolError(RemoteError):
    """A host's output beyond what our scripts ever print: a compromised host must not exhaust the
    controller (its memory, its CPU) for the other hosts of the run."""

    kind = "protocol"


class InternalError(RemoteError):
    """Raised by no remote call: the orchestrator turns an unexpected exception in one host's
    phase into this, so that it is that host's outcome (with a debug log), never the run's."""

    kind = "internal"
