"""What a remote command's failure means: its exit status, stderr and the scripts' own ``@@fail``
lines, turned into one ``remote.errors`` exception with a line a person can act on."""

from __future__ import annotations

from remote import commands
from remote.errors import CommandError, CommandTimeout, PreflightError, PrivilegeError, RemoteError
from remote.parse import Parsed
from remote.transport import CommandResult

# The scripts' own refusals that are about privileges rather than the host's capabilities.
_PRIVILEGE_CODES = {"no_root"}


def classify(host: str, sudo: bool, result: CommandResult, parsed: Parsed) -> RemoteError:
    """The error for a command that exited non-zero (or was cut short). ``sudo``: the command ran
    under ``sudo -n``, so sudo's own refusals are recognised."""
    status, stderr = result.exit_status, result.stderr
    # What the host said last: its stderr, else its last words on stdout that are not ours (a
    # restricted account's ForceCommand, a login banner).
    said = stderr.strip().splitlines() or [ln for ln in result.stdout.strip().splitlines() if not ln.startswith("@@")]
    last = (said or [""])[-1].strip()[:300]

    def error(cls: type[CommandError], message: str) -> CommandError:
        return cls(host, message, command=result.command.line, exit_status=status, stderr=stderr, stdout=result.stdout)

    if parsed.failure is not None:
        cls = PrivilegeError if parsed.failure.code in _PRIVILEGE_CODES else PreflightError
        err = error(cls, parsed.failure.text)
        if cls is PreflightError:
            err.kind = parsed.failure.code  # the script's own reason: no_tcpdump, no_interface, low_disk...
        return err
    if sudo and status == 1 and "sudo" in stderr:
        return error(
            PrivilegeError,
            f"sudo -n refused ({last}): allow passwordless sudo for these commands, "
            "or set sudo = false and connect as root",
        )
    if sudo and status == 127 and "sudo" in stderr:
        return error(PrivilegeError, "sudo is not installed on the host")
    if status == commands.EXIT_TIMEOUT:
        return CommandTimeout(host, f"{result.command.phase} hit its {result.command.timeout:.0f} s limit on the host")
    if status is None:
        return error(CommandError, f"{result.command.phase} ended without an exit status: {last or 'no message'}")
    if status == 0:  # a session that stopped talking before its next step
        return error(CommandError, f"{result.command.phase} ended early: {last or 'no message'}")
    return error(CommandError, f"{result.command.phase} exited {status}: {last or 'no message'}")
