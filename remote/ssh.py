"""The one module that imports asyncssh. Its exceptions become ``remote.errors`` here.

Host keys are verified against known_hosts by default. With ``accept_new_host_key`` a host that
has *no* entry yet is trusted on first use and its key appended (OpenSSH's ``accept-new``); a host
whose entry exists but does not match is always refused.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncssh

from remote.commands import RemoteCommand
from remote.errors import (
    AuthError,
    ConnectError,
    ConnectionLost,
    HostKeyError,
    RemoteError,
    TransferError,
)
from remote.transport import CommandResult, SshTarget

_known_hosts_lock = asyncio.Lock()
CAT_TIMEOUT_S = 3600  # one file over an exec channel (no SFTP on the host): at most an hour


def _known_hosts_path(target: SshTarget) -> Path:
    return Path(os.path.expanduser(target.known_hosts or "~/.ssh/known_hosts"))


def _known_hosts_name(target: SshTarget) -> str:
    return target.host if target.port == 22 else f"[{target.host}]:{target.port}"


def _has_entry(target: SshTarget) -> bool:
    path = _known_hosts_path(target)
    if not path.exists():
        return False
    try:
        known = asyncssh.read_known_hosts(str(path))
    except (OSError, ValueError):
        return False
    trusted, _revoked, *_ = known.match(target.host, "", target.port)
    return bool(trusted)


@contextmanager
def _mapped(name: str, what: str, prefix: str = "") -> Iterator[None]:
    """Translate asyncssh/OS exceptions raised while connecting into ours."""
    try:
        yield
    except RemoteError:
        raise
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyError(name, f"{prefix}host key not verified ({exc.reason})") from exc
    except asyncssh.PermissionDenied as exc:
        raise AuthError(name, f"{prefix}authentication refused ({exc.reason})") from exc
    except asyncssh.ConnectionLost as exc:
        raise ConnectionLost(name, f"{prefix}connection lost during {what}: {exc.reason}") from exc
    except asyncssh.DisconnectError as exc:
        raise ConnectError(name, f"{prefix}disconnected during {what}: {exc.reason}") from exc
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise ConnectError(name, f"{prefix}timed out during {what}") from exc
    except socket.gaierror as exc:
        raise ConnectError(name, f"{prefix}cannot resolve address ({exc.strerror})") from exc
    except ConnectionRefusedError as exc:
        raise ConnectError(name, f"{prefix}connection refused (is sshd running on that port?)") from exc
    except OSError as exc:
        raise ConnectError(name, f"{prefix}{what} failed: {exc.strerror or exc}") from exc
    except asyncssh.Error as exc:
        raise ConnectError(name, f"{prefix}{what} failed: {exc.reason}") from exc


class SshTransport:
    def __init__(self, name: str, conn: asyncssh.SSHClientConnection, jump: Any = None) -> None:
        self.name = name
        self._conn = conn
        self._jump = jump
        self.sftp: bool | None = None  # None: not tried yet; False: the host refused the subsystem

    async def run(self, command: RemoteCommand) -> CommandResult:
        started = time.time_ns()
        try:
            proc = await self._conn.run(command.line, check=False, encoding="utf-8", errors="replace")
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionLost(self.name, f"connection lost during {command.phase}: {exc}") from exc
        return CommandResult(
            command,
            proc.exit_status,
            str(proc.stdout or ""),
            str(proc.stderr or ""),
            started,
            time.time_ns(),
        )

    async def exchange(self, command: RemoteCommand, count: int) -> tuple[str, list[tuple[int, str, int]]]:
        samples = []
        try:
            async with self._conn.create_process(command.line, encoding="utf-8", errors="replace") as proc:
                header = (await proc.stdout.readline()).strip()
                for _ in range(count):
                    sent = time.time_ns()
                    proc.stdin.write("t\n")
                    answer = await proc.stdout.readline()
                    samples.append((sent, answer.strip(), time.time_ns()))
                proc.stdin.write_eof()
                await proc.wait(check=False, timeout=5)
        except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
            raise ConnectionLost(self.name, f"clock probe failed: {exc}") from exc
        return header, samples

    async def get(self, remote_path: str, local_path: Path) -> None:
        """SFTP first; where the host has no SFTP subsystem (hardened hosts remove it), the file
        comes over an exec channel (``cat``, Ansible's "smart" transfer does the same). The
        caller checks the SHA-256 the host computed either way."""
        tmp = local_path.with_name(local_path.name + ".part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            if self.sftp is not False:
                try:
                    client = await self._conn.start_sftp_client()
                except (asyncssh.ChannelOpenError, asyncssh.SFTPError):
                    self.sftp = False  # the subsystem is refused: not asked again on this connection
                else:
                    self.sftp = True
                    async with client:
                        await client.get(remote_path, str(tmp))
            if self.sftp is False:
                await self._cat(remote_path, tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, local_path)
        except (asyncssh.Error, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise TransferError(self.name, f"cannot pull {remote_path}: {exc}") from exc

    async def _cat(self, remote_path: str, local: Path) -> None:
        """The file's bytes over an exec channel, into ``local``; bounded on the host by
        ``timeout`` and here by asyncssh's own timeout."""
        line = f"timeout {CAT_TIMEOUT_S} cat -- {shlex.quote(remote_path)}"
        result = await self._conn.run(line, stdout=local, encoding=None, check=False, timeout=CAT_TIMEOUT_S + 10)
        if result.exit_status != 0:
            err = result.stderr.decode(errors="replace").strip() if isinstance(result.stderr, bytes) else ""
            raise OSError(f"no SFTP subsystem, and `cat` exited {result.exit_status}: {err}")

    async def close(self) -> None:
        self._conn.close()
        if self._jump is not None:
            self._jump.close()


def _expand(paths: tuple[str, ...]) -> list[str]:
    return [os.path.expanduser(p) for p in paths]


async def _open(target: SshTarget, known_hosts: Any) -> tuple[asyncssh.SSHClientConnection, Any]:
    # Both the jump host and the target get the same keys, known_hosts and client config.
    common: dict[str, Any] = {
        "known_hosts": known_hosts,
        "connect_timeout": target.connect_timeout,
        "login_timeout": target.connect_timeout,
        "config": _expand(target.config_files) or (),
    }
    if target.identity_files:
        common["client_keys"] = _expand(target.identity_files)
    jump = None
    if target.jump is not None:
        j = target.jump
        with _mapped(target.name, "connect", prefix=f"jump host {j.host}:{j.port}: "):
            jump = await asyncssh.connect(j.host, port=j.port, username=j.user or target.user or (), **common)
        common["tunnel"] = jump
    try:
        conn = await asyncssh.connect(target.host, port=target.port, username=target.user or (), **common)
    except BaseException:
        if jump is not None:
            jump.close()
        raise
    return conn, jump


class SshConnector:
    async def connect(self, target: SshTarget) -> SshTransport:
        path = _known_hosts_path(target)
        # A missing known_hosts file means "nothing is trusted", never "trust everything".
        known: Any = str(path) if path.exists() else asyncssh.import_known_hosts("")
        with _mapped(target.name, "connect"):
            try:
                conn, jump = await _open(target, known)
            except asyncssh.HostKeyNotVerifiable as exc:
                if _has_entry(target):
                    raise HostKeyError(
                        target.name,
                        f"host key for {_known_hosts_name(target)} does NOT match {path}: "
                        "refusing (possible man-in-the-middle; fix known_hosts by hand if the key changed)",
                    ) from exc
                if not target.accept_new_host_key:
                    raise HostKeyError(
                        target.name,
                        f"unknown host key for {_known_hosts_name(target)} (not in {path}); "
                        "verify it and add it with ssh-keyscan, or re-run with --accept-new-host-keys",
                    ) from exc
                conn, jump = await _open(target, None)
                await self._remember(target, conn, path)
        return SshTransport(target.name, conn, jump)

    @staticmethod
    async def _remember(target: SshTarget, conn: asyncssh.SSHClientConnection, path: Path) -> None:
        key = conn.get_server_host_key()
        if key is None:
            return
        line = f"{_known_hosts_name(target)} {key.export_public_key('openssh').decode().strip()}\n"
        async with _known_hosts_lock:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(line)
