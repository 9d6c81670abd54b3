"""The one module that imports asyncssh. Its exceptions become ``remote.errors`` here.

Host keys are verified against known_hosts by default: the inventory's file, or the ones the user's
ssh config names for the host (``UserKnownHostsFile``, ``GlobalKnownHostsFile``; OpenSSH's defaults
where it names none). With ``accept_new_host_key`` a host that has *no* entry yet is trusted on
first use and its key appended to the first user file (OpenSSH's ``accept-new``); a host whose
entry exists but does not match is always refused.
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
    ProtocolError,
    RemoteError,
    TransferError,
)
from remote.sshconfig import KnownHosts, config_names_ciphers, known_hosts_for
from remote.transport import MAX_LINE, CommandResult, SshTarget

_known_hosts_lock = asyncio.Lock()
_NOTHING_TRUSTED = asyncssh.import_known_hosts("")
CAT_TIMEOUT_S = 3600  # one file over an exec channel (no SFTP on the host): at most an hour


def _known_hosts_name(target: SshTarget, kh: KnownHosts) -> str:
    host = kh.host or target.host
    return host if target.port == 22 else f"[{host}]:{target.port}"


def _read_known_hosts(files: tuple[Path, ...]) -> Any:
    present = [str(p) for p in files if p.is_file()]
    # A missing known_hosts file means "nothing is trusted", never "trust everything".
    return asyncssh.read_known_hosts(present) if present else _NOTHING_TRUSTED


async def _has_entry(target: SshTarget, kh: KnownHosts) -> bool:
    """Whether known_hosts says anything of this host: a key, a CA (``@cert-authority``) or a
    revoked key (``@revoked``), plain or hashed, under its name or any address it resolves to
    here. Any of them makes a key that did not verify a changed one, refused even with
    --accept-new-host-keys; so does a known_hosts that cannot be read."""
    try:
        known = _read_known_hosts(kh.files)
    except (OSError, ValueError):
        return True
    name = kh.host or target.host
    addrs = {""}
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(name, target.port, type=socket.SOCK_STREAM), 5
        )
        addrs |= {str(i[4][0]) for i in infos}
    except (OSError, asyncio.TimeoutError):
        pass  # unresolvable here (a name only a jump host knows): its name alone
    return any(entries for addr in sorted(addrs) for entries in known.match(name, addr, target.port))


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


# Sessions, commands and transfers open at once on one connection: below OpenSSH's default
# MaxSessions (10), so that a stock sshd never refuses one of ours.
MAX_SESSIONS = 8


class SshSession:
    def __init__(self, name: str, proc: Any, command: RemoteCommand, release: Any) -> None:
        self.name = name
        self._proc = proc
        self._command = command
        self._release = release
        self._started = time.time_ns()
        self._lines: list[str] = []  # complete lines read ahead, in reverse order
        self._partial: list[str] = []  # the chunks of a line not ended yet (joined once, at its end)
        self._partial_len = 0
        self._eof = False

    async def readline(self) -> str | None:
        # Read what has arrived and split it here: a snapshot is hundreds of lines, and asyncssh's
        # own readline costs far more per line than one read and a split.
        # A line without its end is kept as chunks (never re-joined per chunk: a host that sends
        # no newline cost quadratic time), and bounded (MAX_LINE: that host's protocol error).
        while not self._lines:
            if self._eof:
                if self._partial:
                    line, self._partial, self._partial_len = "".join(self._partial), [], 0
                    return line
                return None
            try:
                data = await self._proc.stdout.read(1 << 16)
            except (asyncssh.Error, OSError) as exc:
                raise ConnectionLost(self.name, f"connection lost during {self._command.phase}: {exc}") from exc
            if not data:
                self._eof = True
                continue
            if "\n" not in data:
                self._partial.append(data)
                self._partial_len += len(data)
                if self._partial_len > MAX_LINE:
                    raise ProtocolError(self.name, f"{self._command.phase}: a line of more than {MAX_LINE >> 20} MiB "
                                        "(no script of ours prints one)")  # fmt: skip
                continue
            head, *done, tail = data.split("\n")
            first = "".join([*self._partial, head])
            self._partial, self._partial_len = ([tail], len(tail)) if tail else ([], 0)
            if len(first) > MAX_LINE:
                raise ProtocolError(self.name, f"{self._command.phase}: a line of more than {MAX_LINE >> 20} MiB "
                                    "(no script of ours prints one)")  # fmt: skip
            self._lines = [first, *done][::-1]
        return self._lines.pop()

    async def send(self, line: str) -> None:
        try:
            self._proc.stdin.write(line + "\n")
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            raise ConnectionLost(self.name, f"connection lost during {self._command.phase}: {exc}") from exc

    async def close(self, wait_s: float) -> CommandResult:
        status: int | None = None
        stdout = stderr = ""
        try:
            try:
                self._proc.stdin.write_eof()
            except (asyncssh.Error, OSError):
                pass
            done = await self._proc.wait(check=False, timeout=wait_s)
            status, stdout, stderr = done.exit_status, str(done.stdout or ""), str(done.stderr or "")
        except asyncssh.ProcessError as exc:  # its TimeoutError: what the host wrote so far is kept
            kept = str(exc.stderr or "").rstrip("\n")
            stdout = str(exc.stdout or "")
            stderr = (kept + "\n" if kept else "") + f"session did not end within {wait_s:g} s"
        except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
            stderr = f"session did not end cleanly: {exc}"
        finally:
            self._proc.close()
            self._release()
        return CommandResult(self._command, status, stdout, stderr, self._started, time.time_ns())


class SshTransport:
    def __init__(self, name: str, conn: asyncssh.SSHClientConnection) -> None:
        self.name = name
        self._conn = conn
        self._slots = asyncio.Semaphore(MAX_SESSIONS)
        self._sftp: Any = None
        self._sftp_lock = asyncio.Lock()
        self.sftp: bool | None = None  # None: not tried yet; False: the host refused the subsystem

    async def run(self, command: RemoteCommand) -> CommandResult:
        started = time.time_ns()
        async with self._slots:
            try:
                proc = await self._conn.run(command.line, check=False, encoding="utf-8", errors="replace")
            except (asyncssh.Error, OSError) as exc:
                raise ConnectionLost(self.name, f"connection lost during {command.phase}: {exc}") from exc
        return CommandResult(command, proc.exit_status, str(proc.stdout or ""), str(proc.stderr or ""), started,
                             time.time_ns())  # fmt: skip

    async def open(self, command: RemoteCommand) -> SshSession:
        await self._slots.acquire()
        try:
            proc = await self._conn.create_process(command.line, encoding="utf-8", errors="replace")
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, (asyncssh.Error, OSError)):
                raise ConnectionLost(self.name, f"cannot start {command.phase}: {exc}") from exc
            raise
        return SshSession(self.name, proc, command, self._slots.release)

    async def _sftp_client(self) -> Any:
        """One SFTP session for all of this host's files (None where the host has none)."""
        async with self._sftp_lock:
            if self.sftp is None:
                try:
                    self._sftp = await self._conn.start_sftp_client()
                    self.sftp = True
                except (asyncssh.ChannelOpenError, asyncssh.SFTPError):
                    self.sftp = False  # the subsystem is refused: not asked again on this connection
            return self._sftp

    async def get(self, remote_path: str, local_path: Path, size: int) -> None:
        """SFTP first; where the host has no SFTP subsystem (hardened hosts remove it), the file
        comes over an exec channel (``cat``, Ansible's "smart" transfer does the same). The
        caller checks the SHA-256 the host computed either way."""
        tmp = local_path.with_name(local_path.name + ".part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            client = await self._sftp_client()
            async with self._slots:
                if client is not None:
                    # The file's size now, against the listed one: SFTP copies what it found then.
                    found = (await client.stat(remote_path)).size
                    if found is not None and found > size:
                        raise OSError(f"it is {found} bytes, the host listed {size}")
                    await client.get(remote_path, str(tmp))
                else:
                    await self._cat(remote_path, tmp, size)
            os.chmod(tmp, 0o600)
            os.replace(tmp, local_path)
        except (asyncssh.Error, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise TransferError(self.name, f"cannot pull {remote_path}: {exc}") from exc

    async def _cat(self, remote_path: str, local: Path, size: int) -> None:
        """The file's bytes over an exec channel, into ``local``, at most ``size`` of them (more is
        refused: the host listed that size); bounded on the host by ``timeout`` and here by
        CAT_TIMEOUT_S."""
        line = f"timeout {CAT_TIMEOUT_S} cat -- {shlex.quote(remote_path)}"
        proc = await self._conn.create_process(line, encoding=None)

        async def copy() -> Any:
            got = 0
            with open(local, "wb") as fh:  # noqa: ASYNC230 - the bastion's disk, as asyncssh's own stdout=FILE
                while data := await proc.stdout.read(1 << 18):
                    got += len(data)
                    if got > size:
                        raise OSError(f"more than the {size} bytes the host listed")
                    fh.write(data)
            return await proc.wait(check=False)

        try:
            done = await asyncio.wait_for(copy(), CAT_TIMEOUT_S + 10)
        except asyncio.TimeoutError:
            raise OSError(f"`cat` did not end within {CAT_TIMEOUT_S + 10} s") from None
        finally:
            proc.close()
        if done.exit_status != 0:
            err = done.stderr.decode(errors="replace").strip() if isinstance(done.stderr, bytes) else ""
            raise OSError(f"no SFTP subsystem, and `cat` exited {done.exit_status}: {err}")

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
        self._conn.close()


KEEPALIVE_S = 15


def _expand(paths: tuple[str, ...]) -> list[str]:
    return [os.path.expanduser(p) for p in paths]


# AES-GCM first (then asyncssh's defaults, chacha20-poly1305 first among them): asyncssh builds two
# ChaCha20 contexts a packet in Python, 24 us against AES-GCM's 3.6 us for a 96-byte packet
# (measured), and a hundred hosts' sessions are thousands of small packets; sshd has AES in
# hardware. A user's ssh config that names its Ciphers for the host is followed instead.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_DEFAULT_CIPHERS = [a.decode() for a in asyncssh.encryption.get_default_encryption_algs()]
OFFERED_CIPHERS = [a for a in PREFERRED_CIPHERS if a in _DEFAULT_CIPHERS] + [
    a for a in _DEFAULT_CIPHERS if a not in PREFERRED_CIPHERS
]


def _ciphers(target: SshTarget, host: str) -> Any:
    """The encryption algorithms to offer ``host``: () where the user's ssh config names its
    Ciphers (asyncssh then takes the config's), else ours first, then asyncssh's defaults."""
    return () if config_names_ciphers(target, host) else OFFERED_CIPHERS


def _common(target: SshTarget, known_hosts: Any, host: str) -> dict[str, Any]:
    # Both the jump host and the target get the same keys, known_hosts and client config.
    common: dict[str, Any] = {
        "encryption_algs": _ciphers(target, host),
        "known_hosts": known_hosts,
        "connect_timeout": target.connect_timeout,
        "login_timeout": target.connect_timeout,
        "config": _expand(target.config_files) or (),
        # A connection that stays open for hours (watch) stays alive through idle-timeout firewalls,
        # and one whose host went away is found out within a minute instead of never.
        "keepalive_interval": KEEPALIVE_S,
        "keepalive_count_max": 4,
        # Never, whatever the user's ssh config says (ForwardAgent yes): root on any host of a run
        # could sign with the operator's keys through the forwarded socket.
        "agent_forwarding": False,
    }
    if target.identity_files:
        common["client_keys"] = _expand(target.identity_files)
    return common


class SshConnector:
    """Opens one connection per host. Hosts behind the same jump host(s) share one connection to
    each hop (each host is a forwarded channel on it): a bastion's sshd sees one login, not one per
    host, so its MaxStartups (10:30:100 by default) never drops ours."""

    def __init__(self) -> None:
        self._jumps: dict[tuple[Any, ...], asyncio.Future[asyncssh.SSHClientConnection]] = {}
        self._known: dict[tuple[Path, ...], Any] = {}  # known_hosts files, read once per run, not once per host

    def _known_hosts(self, kh: KnownHosts, host: str) -> Any:
        if kh.files not in self._known:
            try:
                self._known[kh.files] = _read_known_hosts(kh.files)
            except (OSError, ValueError) as exc:
                raise ConnectError(host, f"cannot read known_hosts {kh.describe()}: {exc}") from exc
        return self._known[kh.files]

    async def _hop(self, target: SshTarget, n: int) -> asyncssh.SSHClientConnection:
        """The connection to jump host ``n`` of the target's chain (0 the first), through the hops
        before it; its key verified against the known_hosts files the user has for it."""
        chain = target.jumps[: n + 1]
        j = chain[-1]
        key = (chain, target.user, target.identity_files, target.config_files, target.known_hosts)
        fut = self._jumps.get(key)
        if fut is not None and not (fut.done() and fut.result().is_closed()):
            return await asyncio.shield(fut)  # the hosts behind one chain share its connections
        fut = asyncio.get_running_loop().create_future()
        self._jumps[key] = fut
        try:
            with _mapped(target.name, "connect", prefix=f"jump host {j.host}:{j.port}: "):
                common = _common(target, self._known_hosts(known_hosts_for(target, j.host), target.name), j.host)
                if n:
                    common["tunnel"] = await self._hop(target, n - 1)
                conn = await asyncssh.connect(j.host, port=j.port, username=j.user or target.user or (), **common)
        except BaseException as exc:
            del self._jumps[key]  # the next host tries again; the ones waiting get this error
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)
                fut.exception()  # retrieved
            raise
        fut.set_result(conn)
        return conn

    async def _open(self, target: SshTarget, known_hosts: Any) -> asyncssh.SSHClientConnection:
        common = _common(target, known_hosts, target.host)
        if target.jumps:
            # The jump hosts' keys are always verified, even when the target's is being learnt.
            common["tunnel"] = await self._hop(target, len(target.jumps) - 1)
        return await asyncssh.connect(target.host, port=target.port, username=target.user or (), **common)

    async def connect(self, target: SshTarget) -> SshTransport:
        with _mapped(target.name, "connect"):
            kh = known_hosts_for(target)
            known = self._known_hosts(kh, target.name)
            try:
                conn = await self._open(target, known)
            except asyncssh.HostKeyNotVerifiable as exc:
                if await _has_entry(target, kh):
                    raise HostKeyError(
                        target.name,
                        f"host key for {_known_hosts_name(target, kh)} does NOT match {kh.describe()}: "
                        "refusing (possible man-in-the-middle; fix known_hosts by hand if the key changed)",
                    ) from exc
                if not target.accept_new_host_key or kh.record_to is None:
                    why = (" (your ssh config sets UserKnownHostsFile none: there is nowhere to record it)"
                           if target.accept_new_host_key else "")  # fmt: skip
                    raise HostKeyError(
                        target.name,
                        f"unknown host key for {_known_hosts_name(target, kh)} (not in {kh.describe()}){why}; "
                        "verify it and add it with ssh-keyscan, or re-run with --accept-new-host-keys",
                    ) from exc
                conn = await self._open(target, None)
                await self._remember(target, conn, kh)
                self._known.pop(kh.files, None)  # read again: a reconnect must find the key just learnt
        return SshTransport(target.name, conn)

    async def close(self) -> None:
        for fut in self._jumps.values():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().close()
        self._jumps.clear()

    @staticmethod
    async def _remember(target: SshTarget, conn: asyncssh.SSHClientConnection, kh: KnownHosts) -> None:
        key = conn.get_server_host_key()
        path = kh.record_to
        if key is None or path is None:
            return
        line = f"{_known_hosts_name(target, kh)} {key.export_public_key('openssh').decode().strip()}\n"
        async with _known_hosts_lock:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(line)
