"""What runs on a host, as data: one shell line per phase.

Rules of this module (everything that reaches a remote shell is built here):

- The scripts below are constants. No user-supplied text is ever spliced into a script; values
  travel as positional parameters (``sh -c SCRIPT capture-all ARG...``) and every word of the
  final line is ``shlex.quote``d. Values are also validated before they get here
  (``validate_interface``, ``validate_remote_dir``), so a hostile name fails early and loudly.
- Every line runs under ``timeout`` on the host, so it dies even if the controller vanishes.
- The capture itself runs detached (``setsid``) under its own ``timeout``: it stops at
  duration + grace whatever happens to SSH or the controller, and a reaper deletes its private
  directory if nobody collected it within ``keep`` seconds of the end.
- One round trip per phase: a shell start costs ~100 ms on real hosts, so phases are batched.

Output is line-oriented: ``@@section NAME`` opens a block, ``@@rc N`` closes a snapshot command,
``@@fail CODE TEXT`` explains a refusal. ``remote.parse`` reads it back.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from remote.scripts import (
    AUDIT_SCRIPT,
    CAPTURE_SCRIPT,
    CLEANUP_SCRIPT,
    FINISH_SCRIPT,
    JOB_SCRIPT,
    LOG_TRIGGER_SCRIPT,
    TRIGGER_SCRIPT,
)

# Linux IFNAMSIZ is 16 including the NUL; allow what `ip link` accepts in practice.
_IFACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")
_DIR_RE = re.compile(r"^/[A-Za-z0-9_./-]*/capture-all\.[A-Za-z0-9]{8}$")
_TMPBASE_RE = re.compile(r"^/[A-Za-z0-9_./-]{0,200}$")

# Exit statuses our scripts use for their own refusals (>= 10 so they never look like sudo's 1).
EXIT_NO_TOOL = 11
EXIT_NO_INTERFACE = 12
EXIT_LOW_DISK = 13
EXIT_NO_DIR = 14
EXIT_NOT_ARMED = 15
EXIT_NO_ROOT = 16
EXIT_BUSY = 17  # another capture-all run holds the host's lock
EXIT_TIMEOUT = 124  # GNU timeout's own status when it had to stop the command


class UnsafeValue(ValueError):
    """A value that must not reach a remote shell (raised before anything is sent)."""


def validate_interface(name: str) -> str:
    if name == "any" or (_IFACE_RE.match(name) and name not in (".", "..")):
        return name
    raise UnsafeValue(f"interface name {name!r} is not a valid Linux interface name")


def _port(p: int) -> int:
    if not isinstance(p, int) or not 0 < p < 65536:
        raise UnsafeValue(f"port {p!r} is not a number from 1 to 65535")
    return p


def validate_tmpbase(path: str) -> str:
    if _TMPBASE_RE.match(path) and ".." not in path.split("/"):
        return path.rstrip("/") or "/"
    raise UnsafeValue(f"remote temp directory {path!r} must be an absolute plain path")


_HOLDER_RE = re.compile(r"^[A-Za-z0-9_.:@/+=-]{0,200}$")


def validate_holder(text: str) -> str:
    """Who runs this capture, as the host's lock says to a second run (a run id, the controller)."""
    if _HOLDER_RE.match(text):
        return text
    raise UnsafeValue(f"run label {text!r}: letters, digits and _.:@/+=- only")


# The run lock and the runs' records (remote.scripts): a directory root makes 0700 and trusts only
# while it is root's alone. A tmpfs on every systemd and busybox host: gone at a reboot with the runs.
RUN_DIR = "/run/capture-all"


def validate_remote_dir(path: str) -> str:
    """Only ever act on a directory our own ``mktemp`` made (``.../capture-all.XXXXXXXX``)."""
    if _DIR_RE.match(path) and ".." not in path.split("/"):
        return path
    raise UnsafeValue(f"refusing to touch remote path {path!r}: not a capture-all directory")


@dataclass(frozen=True)
class RemoteCommand:
    """One remote invocation: ``phase`` names it (tests and the fake dispatch on it),
    ``args`` are the validated values, ``line`` is exactly what the SSH server is given."""

    phase: str
    args: tuple[str, ...]
    line: str
    timeout: float  # seconds, enforced on the host by `timeout` and on the controller
    privileged: bool = field(default=True)
    interfaces: tuple[str, ...] = ()  # the interfaces it acts on (the last of ``args``)


# The scripts' exit codes come from the constants above (the parsers and the orchestrator read the
# same ones): each script starts by defining them.
_EXIT_CODES = (
    f"E_NO_TOOL={EXIT_NO_TOOL} E_NO_INTERFACE={EXIT_NO_INTERFACE} E_LOW_DISK={EXIT_LOW_DISK} "
    f"E_NO_DIR={EXIT_NO_DIR} E_NOT_ARMED={EXIT_NOT_ARMED} E_NO_ROOT={EXIT_NO_ROOT} E_BUSY={EXIT_BUSY}"
)
# The files of one host come back within this long (SFTP, or `cat` where there is none); the
# finish session waits that long at most for the controller's "rm".
TRANSFER_S = 3600
# Files come back inside the finish session (base64) up to this much in all; larger ones over
# SFTP (or `cat`): a transfer session per host costs more than the bytes of a small capture.
INLINE_KB = 4096
# How long a staged host waits for "go" (the other hosts connecting): then it removes its dir.
GO_WAIT_S = 120


def _line(script: str, args: tuple[str, ...], *, timeout: float, sudo: bool, prefix: str = "") -> str:
    argv = ["timeout", "-k", "5", str(int(timeout)), "sh", "-c", _EXIT_CODES + "\n" + script, "capture-all", *args]
    if sudo:
        argv = ["sudo", "-n", "--", *argv]
    return prefix + " ".join(shlex.quote(a) for a in argv)


_SCRIPTS = {
    "CAPTURE_SCRIPT": CAPTURE_SCRIPT, "JOB_SCRIPT": JOB_SCRIPT, "FINISH_SCRIPT": FINISH_SCRIPT,
    "TRIGGER_SCRIPT": TRIGGER_SCRIPT, "LOG_TRIGGER_SCRIPT": LOG_TRIGGER_SCRIPT, "AUDIT_SCRIPT": AUDIT_SCRIPT,
    "CLEANUP_SCRIPT": CLEANUP_SCRIPT,
}  # fmt: skip


def shown(command: RemoteCommand) -> str:
    """``command.line`` exactly as the SSH server is given it, except that each of our scripts in
    it is replaced by its name and size (``capture-all plan``: the scripts are in remote/scripts.py)."""
    line = command.line
    for name, script in _SCRIPTS.items():
        for body in (_EXIT_CODES + "\n" + script, script):
            quoted = shlex.quote(body)
            if quoted in line:
                line = line.replace(quoted, f"<{name}: {body.count(chr(10)) + 1} lines of sh>")
    return line


def _ports(ports: tuple[int, ...]) -> str:
    return ",".join(str(_port(p)) for p in ports)


def capture(
    tmpbase: str,
    interfaces: list[str],
    *,
    min_free_kb: int,
    limit_s: int,
    max_packets: int,
    max_bytes: int,
    snaplen: int,
    keep_s: int,
    witness_kb: int,
    ports: tuple[int, ...],
    wait_s: int,
    sudo: bool,
    conntrack: bool = False,
    inline_kb: int = INLINE_KB,
    go_wait_s: int = GO_WAIT_S,
    holder: str = "",
    ring: tuple[int, int] | None = None,
    logs: tuple[str, ...] = (),
    rundir: str = RUN_DIR,
) -> RemoteCommand:
    """The capture session (see ``remote.scripts``): preflight, the private dir and the detached
    job, ``@@ready``; on ``go FILTER`` the capture, the clock probe, the witness and the "before"
    snapshot, ``@@armed``; on ``finish`` what ``finish`` does. ``witness_kb`` is the witness's
    per-CPU trace buffer (0 turns it off); ``ports`` the flow's server ports on this host, whose
    sockets the snapshots list (and, with ``conntrack``, its conntrack entries); ``wait_s`` how
    long finishing waits for the capture to stop; ``holder`` names this run to a second run that
    finds the host's lock taken (``busy``). ``ring`` (watch mode): (files, million bytes per
    file) of each interface's ring, and the RST trigger (``trigger``). ``logs``: files and
    journal=UNIT sources whose lines of the window come back with the finish."""
    if ring is not None and not (2 <= ring[0] <= 1000 and 1 <= ring[1] <= 100_000):
        raise UnsafeValue(f"ring of {ring[0]} files of {ring[1]} MB: 2-1000 files of 1-100000 MB")
    args = (
        validate_tmpbase(tmpbase),
        validate_tmpbase(rundir),
        str(int(min_free_kb)),
        str(int(go_wait_s)),
        JOB_SCRIPT,
        str(int(limit_s)),
        str(int(max_packets)),
        str(int(max_bytes)),
        str(int(snaplen)),
        str(int(keep_s)),
        str(int(witness_kb)),
        _ports(ports),
        str(int(wait_s)),
        "1" if conntrack else "0",
        str(int(inline_kb)),
        validate_holder(holder),
        f"{int(ring[0])},{int(ring[1])}" if ring else "0",
        ",".join(validate_log_path(x) for x in logs),
        *map(validate_interface, interfaces),
    )
    # SSH_CONNECTION is read before sudo (which clears it): it is how the host sees our session,
    # and the capture filter excludes exactly that 4-tuple.
    prefix = 'echo "@@ssh $SSH_CONNECTION"; '
    # The session lives as long as the run: it waits for "go", then for "finish", then for "rm".
    timeout = go_wait_s + limit_s + wait_s + TRANSFER_S + 120
    line = _line(CAPTURE_SCRIPT, args, timeout=timeout, sudo=sudo, prefix=prefix)
    return RemoteCommand("capture", args, line, timeout, interfaces=tuple(interfaces))


def finish(
    remote_dir: str,
    interfaces: list[str],
    *,
    wait_s: int,
    sudo: bool,
    ports: tuple[int, ...] = (),
    conntrack: bool = False,
    inline_kb: int = INLINE_KB,
    window: tuple[int, int] | None = None,
    rundir: str = RUN_DIR,
) -> RemoteCommand:
    """Finishing in a session of its own, after the capture session was lost: stop, list, probe,
    "after" snapshot, the small files inline, ``@@listed``; then ``rm``. ``ports``: the flow's
    server ports on this host (the snapshot's sockets; with ``conntrack``, on a translating box,
    its conntrack entries for them too); ``window`` (watch mode): the ring's files to keep,
    (from, to) in host-clock ns."""
    wfrom, wto = window_words(window)
    args = (validate_remote_dir(remote_dir), validate_tmpbase(rundir), str(int(wait_s)), _ports(ports),  # fmt: skip
            "1" if conntrack else "0", str(int(inline_kb)), wfrom, wto, *map(validate_interface, interfaces))
    timeout = wait_s + 60 + TRANSFER_S
    line = _line(FINISH_SCRIPT, args, timeout=timeout, sudo=sudo)
    return RemoteCommand("finish", args, line, timeout, interfaces=tuple(interfaces))


def window_words(window: tuple[int, int] | None) -> tuple[str, str]:
    """A watch window as the host's ``finish FROM TO`` takes it: two non-negative integers."""
    if window is None:
        return "0", "0"
    a, b = (int(x) for x in window)
    if not 0 <= a <= b:
        raise UnsafeValue(f"window {window!r}: from and to must be 0 <= from <= to")
    return str(a), str(b)


def trigger(remote_dir: str, *, limit_s: int, sudo: bool) -> RemoteCommand:
    """Watch mode's trigger session: the RSTs the job's trigger captures see, as ``@@rst LINE``."""
    args = (validate_remote_dir(remote_dir),)
    t = int(limit_s) + 30
    return RemoteCommand("trigger", args, _line(TRIGGER_SCRIPT, args, timeout=t, sudo=sudo), t)


_LOG_PATH_RE = re.compile(r"^/[A-Za-z0-9_./@+-]{1,250}$")


def validate_log_pattern(pattern: str) -> str:
    """An extended regex for grep -E: one line, no NUL, at most 500 characters."""
    if not pattern or len(pattern) > 500 or any(c in pattern for c in "\x00\n\r"):
        raise UnsafeValue("log pattern: one line of 1 to 500 characters")
    return pattern


_UNIT_RE = re.compile(r"^journal=[A-Za-z0-9][A-Za-z0-9@._:-]{0,200}$")


def validate_log_path(path: str) -> str:
    """An absolute plain file path, or ``journal=UNIT`` (a systemd unit's journal)."""
    if path.startswith("journal="):
        if _UNIT_RE.match(path):
            return path
        raise UnsafeValue(f"log source {path!r}: journal=UNIT with a systemd unit name")
    if _LOG_PATH_RE.match(path) and ".." not in path.split("/"):
        return path
    raise UnsafeValue(f"log file {path!r} must be an absolute plain path")


def log_trigger(remote_dir: str, path: str, pattern: str, *, limit_s: int, sudo: bool) -> RemoteCommand:
    """Watch mode's log trigger: the first line of ``path`` that matches ``pattern`` (grep -E)."""
    args = (validate_remote_dir(remote_dir), validate_log_path(path), validate_log_pattern(pattern))
    t = int(limit_s) + 30
    return RemoteCommand("log-trigger", args, _line(LOG_TRIGGER_SCRIPT, args, timeout=t, sudo=sudo), t)


def audit(*, sudo: bool) -> RemoteCommand:
    """The idle-timeout audit's readings of one host (read-only; see remote.scripts)."""
    return RemoteCommand("audit", (), _line(AUDIT_SCRIPT, (), timeout=30, sudo=sudo), 30)


def ip_addresses() -> RemoteCommand:
    """``capture-all init --probe``: the host's interfaces and addresses (read-only, no sudo)."""
    return RemoteCommand("ip-addr", (), "timeout 10 ip -j addr", 10, privileged=False)


def cleanup(remote_dir: str, *, sudo: bool, rundir: str = RUN_DIR) -> RemoteCommand:
    args = (validate_remote_dir(remote_dir), validate_tmpbase(rundir))
    return RemoteCommand("cleanup", args, _line(CLEANUP_SCRIPT, args, timeout=30, sudo=sudo), 30)


def reproduce(command: str, *, timeout_s: int) -> RemoteCommand:
    """The user's own reproduction command, run on purpose by a shell on the client host.

    It is the one place a user string is meant to be a shell command: it is passed as a single
    quoted argument to ``sh -c`` (never spliced into our scripts), bounded by ``timeout``, and
    run without sudo."""
    if "\x00" in command or not command.strip():
        raise UnsafeValue("--reproduce needs a non-empty command without NUL bytes")
    args = (command,)
    argv = ["timeout", "-k", "2", str(int(timeout_s)), "sh", "-c", command]
    line = " ".join(shlex.quote(a) for a in argv)
    return RemoteCommand("reproduce", args, line, timeout_s + 5, privileged=False)
