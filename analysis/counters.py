"""What a host's counters did during the capture: the before/after snapshot deltas that tell of
capacity trouble (listen queue overflows, conntrack near its max, interface drops), and which
process owned a connection (``ss -tanpi``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from analysis.model import HostFacts

# nstat counters reported per host (deltas over the capture), DOMAIN.md's capacity cause first.
COUNTERS = (
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpEstabResets",
    "TcpOutRsts",
    "TcpAttemptFails",
    "TcpExtTCPAbortOnData",
    "TcpExtTCPAbortOnClose",
    "TcpExtTCPAbortOnMemory",
    "TcpExtTCPAbortOnTimeout",
    "TcpExtTCPAbortOnLinger",
)
LISTEN = ("TcpExtListenOverflows", "TcpExtListenDrops")
LINK_DROPS = ("rx_dropped", "rx_missed", "rx_errors", "tx_dropped", "tx_errors")
CONNTRACK_NEAR = 0.9  # conntrack count at or above this share of its max counts as "near full"


@dataclass
class Deltas:
    counters: dict[str, int] = field(default_factory=dict)  # name -> after - before (both present)
    links: dict[str, dict[str, int]] = field(default_factory=dict)  # iface -> nonzero drop deltas
    conntrack: tuple[int | None, int | None, int | None] = (None, None, None)  # before, after, max

    @property
    def listen_overflow(self) -> dict[str, int]:
        return {k: v for k, v in self.counters.items() if k in LISTEN and v > 0}

    @property
    def conntrack_near_full(self) -> str | None:
        before, after, top = self.conntrack
        peak = max((x for x in (before, after) if x is not None), default=None)
        if peak is None or not top or peak < CONNTRACK_NEAR * top:
            return None
        return f"conntrack table {peak} of {top} entries"

    def nonzero(self) -> list[str]:
        out = [f"{k} {v:+d}" for k, v in self.counters.items() if v]
        out += [f"{i} {k} {v:+d}" for i, d in self.links.items() for k, v in d.items()]
        full = self.conntrack_near_full
        if full:
            out.append(full)
        return out


def deltas(f: HostFacts) -> Deltas:
    d = Deltas()
    for k in COUNTERS:
        if k in f.counters_before and k in f.counters_after:
            d.counters[k] = f.counters_after[k] - f.counters_before[k]
    for iface, after in f.links_after.items():
        before = f.links_before.get(iface)
        if before is None:
            continue
        drops = {k: after[k] - before[k] for k in LINK_DROPS if k in after and k in before and after[k] != before[k]}
        if drops:
            d.links[iface] = drops
    d.conntrack = (f.conntrack_before, f.conntrack_after, f.conntrack_max)
    return d


def owner(f: HostFacts, local: tuple[str, int], peer: tuple[str, int]) -> str | None:
    """The process that owned this host's end of a connection, from the snapshots: the
    connection itself in ``ss -tanpi`` (before, then after), else the listener on its port."""
    key = (*local, *peer)
    for when, table in (("before", f.sockets_before), ("after", f.sockets_after)):
        procs = table.get(key)
        if procs:
            return f"belonged to {_procs(procs)} (ss -tanpi {when} the capture)"
    listeners = f.listener_names.get(local[1])
    if listeners:
        return f"is served by the listener on port {local[1]}: {_procs(listeners)} (ss -tanpi)"
    return None


def _procs(procs: list[tuple[str, int]]) -> str:
    seen = list(dict.fromkeys(procs))
    return ", ".join(f"{name} pid {pid}" for name, pid in seen)
