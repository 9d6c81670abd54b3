"""A run's options, and the one command a host runs for a capture: what ``capture-all plan``
shows without loading the run itself (no pydantic models, no asyncssh)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.plan import TRANSLATING_ROLES, HostPlan
from remote import commands


@dataclass
class WatchOptions:
    """Watch mode (``capture-all watch``): armed rings and a trigger instead of a fixed window."""

    before: float = 10.0  # seconds kept before the trigger
    after: float = 3.0  # and after it
    ring_bytes: int = 100 * 1024 * 1024  # per host, over all its interfaces
    ring_files: int = 10  # per interface (fewer when the ring is small)
    max_armed: float = 4 * 3600.0  # this arming's limit, enforced by the host itself
    logs: tuple[tuple[str, str, str], ...] = ()  # (host, file, extended regex): --trigger-on-log

    def ring(self, interfaces: int, snaplen: int) -> tuple[int, int]:
        """(files, million bytes each) of one interface's ring: within ring_bytes over all the
        host's interfaces, each file at least 1 MB (tcpdump -C's unit); a file may pass its size
        by one packet (``snaplen``), which the bound counts."""
        per_if = self.ring_bytes // max(1, interfaces)
        files = max(2, min(self.ring_files, per_if // (1_000_000 + snaplen)))
        return files, max(1, (per_if // files - snaplen) // 1_000_000)


def reproduce_label(command: str) -> str:
    """``--reproduce``'s command as everything but the host's commands.jsonl shows it: a command
    line often holds a credential (``curl -u user:secret``), and it is written once, where the
    exact line of every remote command is (issue 29.9)."""
    import hashlib

    digest = hashlib.sha256(command.encode()).hexdigest()[:12]
    return f"<the --reproduce command: {len(command)} characters, sha256 {digest}...; as run: in commands.jsonl>"


@dataclass
class RunOptions:
    duration: float = 30.0
    grace: int = 10  # the host stops by itself at duration + grace
    max_packets: int = 1_000_000
    max_bytes: int = 200 * 1024 * 1024
    snaplen: int = 262144
    keep: int = 600  # the host deletes uncollected evidence this long after the capture ended
    concurrency: int = 100  # SSH handshakes at once
    reproduce: str | None = None
    reproduce_on: str | None = None
    reproduce_timeout: int = 60
    controller_slack: float = 10.0  # the controller gives up on a command this long after the host's own limit
    step_timeout: float = 60.0  # the controller waits this long for each step of a session
    witness_kb: int = 256  # per-CPU buffer of the kernel reset witness; 0 turns it off (--no-witness)
    holder: str = ""  # who runs this (user@controller:bundle), as a host's lock tells a second run
    watch: WatchOptions | None = None  # watch mode: duration is then the arming's limit

    @property
    def limit_s(self) -> int:
        return int(self.duration + 0.999) + self.grace

    @property
    def min_free_kb(self) -> int:
        # Room for the capture cap twice over (in watch mode the window is joined into one file
        # beside the ring's), plus the snapshots.
        return (2 * self.max_bytes) // 1024 + 10 * 1024


def flow_ports(plan: HostPlan) -> tuple[int, ...]:
    """The flow's server ports on this host: its snapshots list their sockets."""
    return tuple(sorted({leg.server.port for leg in plan.legs if leg.server.port}))


def finish_wait_s(opts: RunOptions) -> int:
    """How long finishing waits for the host's capture to stop."""
    return opts.grace + 5


def capture_command(plan: HostPlan, opts: RunOptions) -> commands.RemoteCommand:
    """The one session a host runs for the whole capture (``remote.scripts``), exactly as the run
    sends it and ``capture-all plan`` shows it. Raises UnsafeValue."""
    o = opts
    return commands.capture(
        plan.tmpdir, list(plan.interfaces), min_free_kb=o.min_free_kb, limit_s=o.limit_s,
        max_packets=o.max_packets, max_bytes=o.max_bytes, snaplen=o.snaplen, keep_s=o.keep,
        witness_kb=o.witness_kb, ports=flow_ports(plan), wait_s=finish_wait_s(o),
        conntrack=plan.role in TRANSLATING_ROLES, sudo=plan.sudo, holder=o.holder,
        ring=o.watch.ring(len(plan.interfaces), o.snaplen) if o.watch else None, logs=plan.logs,
    )  # fmt: skip
