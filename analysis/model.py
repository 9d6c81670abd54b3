"""Inputs and intermediate data of the analysis (plain dataclasses: they sit in hot loops)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from analysis.decode import Segment
from analysis.logs import LogLine
from analysis.witness import Witness


@dataclass
class HostFacts:
    """What a host's own snapshot says about it. Every field may be empty (hand-taken pcaps)."""

    own_ips: set[str] = field(default_factory=set)
    own_macs: set[bytes] = field(default_factory=set)
    if_names: dict[int, str] = field(default_factory=dict)  # SLL2 interface index -> name
    listeners_before: dict[int, set[int]] = field(default_factory=dict)  # port -> PIDs
    listeners_after: dict[int, set[int]] = field(default_factory=dict)
    counters_before: dict[str, int] = field(default_factory=dict)  # nstat
    counters_after: dict[str, int] = field(default_factory=dict)
    # (local ip, port, peer ip, port) -> [(command, pid)] from `ss -tanpi`
    sockets_before: dict[tuple[str, int, str, int], list[tuple[str, int]]] = field(default_factory=dict)
    sockets_after: dict[tuple[str, int, str, int], list[tuple[str, int]]] = field(default_factory=dict)
    listener_names: dict[int, list[tuple[str, int]]] = field(default_factory=dict)  # port -> [(command, pid)]
    conntrack_before: int | None = None
    conntrack_after: int | None = None
    conntrack_max: int | None = None
    # A translating box's conntrack entries for the flow: (as the initiator named it, as it left the box)
    translations: list[tuple[tuple[str, int, str, int], tuple[str, int, str, int]]] = field(default_factory=list)
    links_before: dict[str, dict[str, int]] = field(default_factory=dict)  # `ip -s link`: iface -> counters
    links_after: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class ClockProbe:
    """One SSH clock probe of a host (the best of several samples: the shortest round trip)."""

    phase: str  # start | end
    at_ns: int  # controller's clock, mid-sample
    offset_ns: int  # host clock minus controller clock
    bound_ns: int  # the offset is within +- this (half the round trip, plus the host's resolution)


@dataclass
class VantageInput:
    name: str
    role: str = "other"
    status: str = "ok"  # ok | partial | failed
    error: str | None = None
    captures: list[tuple[str, BinaryIO]] = field(default_factory=list)  # (interface, file handle)
    kernel_drops: int | None = None
    facts: HostFacts = field(default_factory=HostFacts)
    clock_offset_ns: int = 0  # added to every timestamp of this vantage to align it
    probes: list[ClockProbe] = field(default_factory=list)
    witness: Witness = field(default_factory=Witness)  # the host kernel's own account of its resets
    problems: list[str] = field(default_factory=list)  # what could not be read (a capture file)
    logs: list[LogLine] = field(default_factory=list)  # its log lines of the window (host clock)


@dataclass(slots=True)
class Seen:
    """One TCP segment as one vantage saw it."""

    vantage: str
    iface: str
    ts_ns: int  # aligned time
    direction: str  # "out" | "in"
    seg: Segment


@dataclass
class VantageData:
    name: str
    role: str
    status: str
    error: str | None
    kernel_drops: int | None
    facts: HostFacts
    packets: int = 0
    segments: list[Seen] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    clock_offset_ns: int = 0  # VantageInput.clock_offset_ns: already in every time below
    first_ns: int | None = None  # its captures' earliest and latest packet (aligned once the clocks are)
    last_ns: int | None = None
    inferred_macs: bool = False
    directions_unknown: bool = False  # no snapshot, no addresses, and two MACs in every frame
    clock_method: str = "none"  # how its clock was aligned: reference, packets, probe, none (not aligned)
    probes: list[ClockProbe] = field(default_factory=list)
    witness: Witness = field(default_factory=Witness)
    logs: list[LogLine] = field(default_factory=list)
    # Around each RST this vantage saw (aligned time): connection hash -> last data time (-1: none).
    activity: dict[int, dict[int, int]] = field(default_factory=dict)

    @property
    def captured(self) -> bool:
        return self.status in ("ok", "partial")
