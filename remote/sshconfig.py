"""The user's OpenSSH client config, as it bears on us: which known_hosts files hold a host's key.

Read through asyncssh's own config reader (Host and Match blocks, ``none``), loaded only where a
config file exists: ``capture-all plan`` shows the files without loading the SSH stack otherwise.
"""

from __future__ import annotations

import functools
import getpass
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote.errors import ConnectError
from remote.transport import SshTarget

# OpenSSH's own defaults, where the user's ssh config names no known_hosts files.
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


def config_paths(target: SshTarget) -> list[str]:
    """The OpenSSH client config files read for this target: the inventory's, else ~/.ssh/config
    where it exists (asyncssh's own rule)."""
    if target.config_files:
        return [os.path.expanduser(p) for p in target.config_files]
    default = os.path.expanduser("~/.ssh/config")
    return [default] if os.access(default, os.R_OK) else []


def read_config(paths: list[str], host: str, *, user: str | None = None, name: str = "") -> Any:
    """asyncssh's reader of the OpenSSH client config, evaluated for one host (Host and Match
    blocks): ``.get("Hostname")``, ``"User"``, ``"Port"``, ``"ProxyJump"``... Raises ConnectError.
    Once per host and config per process: asyncssh parses the whole file for each host (7 ms for a
    config of 200 Host entries here), and the plan, its display and the connection all ask."""
    import asyncssh  # here: `capture-all plan` loads it only where there is a config to read

    try:
        stamps = tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in map(os.stat, paths))
        return _evaluated(tuple(paths), stamps, host, user)
    except (OSError, asyncssh.ConfigParseError) as exc:
        raise ConnectError(name or host, f"cannot read ssh config {', '.join(paths)}: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _evaluated(paths: tuple[str, ...], _stamps: tuple[tuple[int, int, int], ...], host: str, user: str | None) -> Any:
    from asyncssh.config import SSHClientConfig

    try:
        local = getpass.getuser()
    except (KeyError, OSError):
        local = str(os.getuid())
    return SSHClientConfig.load(None, list(paths), False, False, False, local, user or (), host, ())


def _ssh_config(target: SshTarget, host: str) -> Any:
    return read_config(config_paths(target), host, user=target.user, name=target.name)


@dataclass(frozen=True)
class KnownHosts:
    """Where a host's key is looked up, and where a key learnt on first use is recorded."""

    files: tuple[Path, ...]  # every key in them is trusted (missing files hold none)
    record_to: Path | None  # None: the user's config says UserKnownHostsFile none
    host: str = ""  # the name its key is filed under: HostKeyAlias, else HostName, else the address

    def describe(self) -> str:
        return ", ".join(map(str, self.files)) or "no file"


def known_hosts_for(target: SshTarget, host: str | None = None) -> KnownHosts:
    """The inventory's known_hosts alone where it names one; otherwise the files the user's ssh
    config gives for this host (UserKnownHostsFile, then GlobalKnownHostsFile, as OpenSSH reads
    them), OpenSSH's defaults where it gives none. Keys are verified either way: a config that
    turns checking off (StrictHostKeyChecking no) is not followed. ``host`` may be a Host alias of
    the config (its HostName is what the key is filed under)."""
    name = host or target.host
    cfg = _ssh_config(target, name) if config_paths(target) else None
    keyed = str((cfg.get("HostKeyAlias") or cfg.get("Hostname") or name) if cfg is not None else name)
    if target.known_hosts:
        p = Path(os.path.expanduser(target.known_hosts))
        return KnownHosts((p,), p, keyed)
    user: list[str] = list(USER_KNOWN_HOSTS)
    glob: list[str] = list(GLOBAL_KNOWN_HOSTS)
    if cfg is not None:
        given_user, given_global = cfg.get("UserKnownHostsFile"), cfg.get("GlobalKnownHostsFile")
        if given_user is not None:
            user = list(given_user)
        if given_global is not None:
            glob = list(given_global)
    paths = [Path(os.path.expanduser(p)) for p in user + glob]
    return KnownHosts(tuple(dict.fromkeys(paths)), Path(os.path.expanduser(user[0])) if user else None, keyed)


def config_port(target: SshTarget) -> int | None:
    """The Port the user's ssh config gives this host (an alias's, a Host pattern's), or None:
    an inventory that gives no port connects where `ssh HOST` would. Reads nothing where there
    is no config file."""
    if not config_paths(target):
        return None
    port = _ssh_config(target, target.host).get("Port")
    return int(str(port)) if port else None


def config_names_ciphers(target: SshTarget, host: str) -> bool:
    """Whether the user's ssh config gives ``host`` a Ciphers line (then asyncssh follows it).
    Reads nothing where there is no config file."""
    return bool(config_paths(target)) and _ssh_config(target, host).get("Ciphers") is not None
