"""The manifest's model: what was run, each host's outcome, and (filled by Bundle) file digests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

SCHEMA = "capture-all/manifest/1"


class CaptureFile(BaseModel):
    interface: str
    path: str
    bytes: int
    packets: int | None = None
    received_by_filter: int | None = None
    kernel_drops: int | None = None
    tcpdump_exit: int | None = None


class ClockProbeRecord(BaseModel):
    """The host's clock against the controller's (SSH probe, best of several round trips)."""

    phase: str  # start | end of the run
    at_ns: int  # controller clock
    offset_ns: int  # host clock minus controller clock
    bound_ns: int  # offset within +- this
    rtt_ns: int
    samples: int
    resolution_ns: int


class WitnessRecord(BaseModel):
    """The kernel reset witness on a host: whether it ran, why not, and its files in the bundle."""

    state: str = "not started"  # off | unavailable | ran | running (never stopped) | not started
    reason: str | None = None
    instance: str | None = None  # the ftrace instance the host's job created (and removed)
    removed: bool | None = None
    clock: str | None = None
    events: list[str] = []
    files: list[str] = []  # bundle paths
    error: str | None = None


class WindowRecord(BaseModel):
    """Watch mode: what a host kept of its ring around the trigger (host clock, ns)."""

    from_ns: int
    to_ns: int
    reach_ns: dict[str, int] = {}  # per interface, the first packet kept
    ring_files: dict[str, list[int]] = {}  # per interface, [files kept, files in the ring]


class TriggerRecord(BaseModel):
    """Watch mode: what ended the wait, when (controller clock) and where."""

    kind: str  # rst | manual | interrupt | max-armed
    host: str | None = None
    line: str | None = None  # the host's trigger capture's line (the RST)
    at_ns: int  # controller clock
    host_ns: int | None = None  # the RST's time on that host's clock
    armed_s: float | None = None  # how long the hosts had been armed
    note: str | None = None


class HostRecord(BaseModel):
    name: str
    role: str
    ssh_address: str
    status: str = "pending"  # ok | failed | partial
    error: str | None = None
    error_kind: str | None = None
    failed_phase: str | None = None
    interfaces: list[str] = []
    addresses: list[str] = []  # data-plane addresses from the inventory (addresses + listen)
    bpf_filter: str | None = None
    remote_dir: str | None = None
    remote_dir_removed: bool = False
    connected_ns: int | None = None
    armed_ns: int | None = None  # controller clock, when the host reported "listening"
    remote_armed_ns: int | None = None  # the host's own clock at that moment
    tcpdump: str | None = None  # path and version of the tcpdump that captured
    stopped_ns: int | None = None
    stop_reason: str | None = None
    captures: list[CaptureFile] = []
    clock_probes: list[ClockProbeRecord] = []
    witness: WitnessRecord = WitnessRecord()
    window: WindowRecord | None = None
    logs: list[str] = []  # the window's log lines and what was read (log.N.txt, log.N.meta)
    idle_timeout: str | None = None  # the inventory's, for the idle-timeout chain
    timeouts: str | None = None  # its idle-timeout readings (proxies, NAT/firewall/router hosts)
    notes: list[str] = []


class Manifest(BaseModel):
    schema_: str = Field(default=SCHEMA, serialization_alias="schema")
    tool: str = "capture-all"
    version: str
    created_utc: str
    command: list[str] = []  # the command line that made this bundle
    inventory: str
    inventory_sha256: str
    flow: str
    legs: list[str]
    options: dict[str, Any]
    # How far apart the captures started (each host's clock at its start, on the controller's clock
    # by its start probe; the controller's hearing of it where a host has no probe).
    start_skew_ms: float | None = None
    trigger: TriggerRecord | None = None
    hosts: list[HostRecord]
    exit_status: int | None = None
    files: dict[str, str] = {}
