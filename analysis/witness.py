"""The kernel reset witness: what a host's own kernel logged about the resets it sent and received.

Each host's job ran an ftrace instance with ``tcp:tcp_send_reset`` and ``tcp:tcp_receive_reset``
and brought back its text ``trace``, the events' ``format`` files, the wall-clock brackets of its
``trace_marker`` writes (``witness.sync``) and the per-CPU buffer stats. This module turns them
into ``KernelEvent``s on the host's capture clock. No IO here.

- The format file of each event says which keys its lines carry (kernels differ: 4.15 prints
  ``sport= dport= saddr= daddr=``, 6.x ``src=ip:port dest=ip:port state=``, 6.10+ adds
  ``reason=``); a line is read by those keys, so a kernel without ``reason`` still works.
- Direction: a send event's source is the reset's sender (the local socket, or on 6.10+ the
  reversed tuple of the packet that provoked it); a receive event is about the local socket, so
  the reset came from its remote end. Every event is stored as the reset *packet's* tuple.
- Every namespace of a machine shares one kernel, and so one trace: an event is the host's only
  when its local address is one of the host's own.
- Clock: the trace clock (``mono``, microseconds in the text) is mapped onto the wall clock that
  tcpdump stamps packets with by the ``trace_marker`` writes, each bracketed by two wall-clock
  reads; the narrowest bracket at the start and at the end define a line (NTP may slew the wall
  clock against the monotonic one during a long capture).
- The ftrace flags column's ``s`` (softirq) means the event ran while the CPU was serving an
  incoming packet (likewise ``h``/``H``, a hard irq): its pid/comm are whoever was on that CPU, not
  the sender.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

_FIELD_RE = re.compile(r"^\s*field:(.+?);\s*offset:")
_KEY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=%")
_LINE_RE = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?P<flags>\S{4,5})\s+"
    r"(?P<ts>\d+\.\d+):\s+(?P<event>[a-z_]+):\s?(?P<rest>.*)$"
)
_SYNC_MARK = "capture-all-sync"


@dataclass
class EventFormat:
    """One tracepoint's ``format`` file: its fields and the keys its print format writes."""

    name: str
    fields: list[str]
    keys: list[str]

    @property
    def has_reason(self) -> bool:
        return "reason" in self.keys


def parse_format(text: str) -> EventFormat:
    name = ""
    fields = []
    keys: list[str] = []
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip()
        m = _FIELD_RE.match(line)
        if m:
            fields.append(m.group(1).split()[-1].split("[")[0])
        if line.startswith("print fmt:"):
            fmt = line.split('"', 2)[1] if line.count('"') >= 2 else ""
            keys = _KEY_RE.findall(fmt)
    return EventFormat(name, fields, keys)


@dataclass(slots=True)
class KernelEvent:
    """One witness event, as the reset packet's tuple (src = the side that sent the RST)."""

    kind: str  # send | receive
    ts_ns: int  # the host's capture clock until aligned, then the reference clock
    src: str
    sport: int
    dst: str
    dport: int
    state: str | None  # the socket's TCP state (send events), None if not in this kernel's format
    reason: str | None  # the kernel's reason (send events, kernels >= 6.10), None if not logged
    pid: int
    comm: str
    softirq: bool  # ran in interrupt context (softirq, or a hard irq): pid/comm are not the sender's

    @property
    def local(self) -> str:
        return self.src if self.kind == "send" else self.dst

    def tuple4(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.dst, self.dport)

    def describe(self, host: str) -> str:
        if self.kind == "send":
            text = f"{host} kernel sent RST to {self.dst}:{self.dport}"
            if self.reason:
                text += f", reason {self.reason}"
            if self.state and self.state != "UNKNOWN":
                text += f", socket state {self.state.removeprefix('TCP_')}"
            elif self.state == "UNKNOWN":
                text += ", no socket"
        else:
            text = f"{host} kernel received RST on {self.dst}:{self.dport} from {self.src}:{self.sport}"
        return text + ", " + self.who()

    def who(self) -> str:
        if self.softirq:
            return f"in softirq (answering a packet; pid {self.pid} ({self.comm}) just happened to be on the CPU)"
        return f"pid {self.pid} ({self.comm})"


@dataclass
class Witness:
    """A host's witness: whether it ran, its window (capture clock) and its events."""

    state: str = "none"  # ran | running | off | unavailable | none (no witness in this bundle)
    reason: str = ""  # why not
    events: list[KernelEvent] = field(default_factory=list)
    start_ns: int | None = None  # the window it covered, on the same clock as the events
    end_ns: int | None = None
    clock_bound_ns: int = 0  # the trace-to-capture clock mapping is within +- this
    lost: int = 0  # events the kernel could not store (buffer full)
    has_reason: bool = False  # this kernel's send event carries a reason
    foreign: int = 0  # events of other hosts sharing the kernel (filtered out)
    problems: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return self.state in ("ran", "running") and self.start_ns is not None

    def covers(self, ts_ns: int) -> bool:
        if not self.ran or self.start_ns is None:
            return False
        # No end marker: the trace was still read when the job stopped, after the capture.
        end = self.end_ns if self.end_ns is not None else ts_ns
        return self.start_ns <= ts_ns <= end

    def sends(self, tuple4: tuple[str, int, str, int]) -> list[KernelEvent]:
        return [e for e in self.events if e.kind == "send" and e.tuple4() == tuple4]


def _sockaddr(text: str) -> tuple[str, int] | None:
    """``1.2.3.4:80`` or ``[::1]:80`` (``%pISpc``)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _plain(ip: str) -> str:
    """v4-mapped v6 addresses (``::ffff:1.2.3.4``) as the v4 address the packets carry."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)


def _addresses(kv: dict[str, str]) -> tuple[str, int, str, int] | None:
    """(local-or-source, port, remote-or-dest, port) as the event prints it."""
    if "src" in kv and "dest" in kv:
        a, b = _sockaddr(kv["src"]), _sockaddr(kv["dest"])
        if a is None or b is None:
            return None
        return _plain(a[0]), a[1], _plain(b[0]), b[1]
    if "sport" in kv and "dport" in kv and kv["sport"].isdigit() and kv["dport"].isdigit():
        v6 = kv.get("family") == "AF_INET6" or kv.get("saddr") in (None, "0.0.0.0")
        s, d = (kv.get("saddrv6", ""), kv.get("daddrv6", "")) if v6 else (kv.get("saddr", ""), kv.get("daddr", ""))
        if s and d:
            return _plain(s), int(kv["sport"]), _plain(d), int(kv["dport"])
    return None


@dataclass
class _Sync:
    mono_us: int
    lo_ns: int  # wall clock read before the marker write
    hi_ns: int  # and after


def _mapping(syncs: list[_Sync]) -> tuple[int, int, float, int] | None:
    """(anchor mono ns, offset at anchor, slope, bound): wall = mono + offset + slope*(mono-anchor)."""
    if not syncs:
        return None
    # The offset is wall - mono; mono is truncated to the microsecond in the text (true mono in
    # [m, m + 1 us)), so each bracket gives wall - mono in [lo - m - 1000, hi - m].
    spans = [(s.mono_us * 1000, s.lo_ns - s.mono_us * 1000 - 1000, s.hi_ns - s.mono_us * 1000) for s in syncs]
    spans.sort()
    first_t = spans[0][0]
    early = [x for x in spans if x[0] - first_t < 10**9] or spans
    late = [x for x in spans if spans[-1][0] - x[0] < 10**9] or spans
    a = min(early, key=lambda x: x[2] - x[1])
    b = min(late, key=lambda x: x[2] - x[1])
    ta, oa = a[0], (a[1] + a[2]) // 2
    tb, ob = b[0], (b[1] + b[2]) // 2
    slope = (ob - oa) / (tb - ta) if tb - ta > 10**9 else 0.0
    bound = int(max(a[2] - a[1], b[2] - b[1]) / 2) + 1
    return ta, oa, slope, bound


def parse_stats(text: str) -> int:
    """Events the kernel lost, over every CPU of the instance (``overrun`` + ``dropped events``)."""
    lost = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("overrun", "dropped events") and value.strip().isdigit():
            lost += int(value.strip())
    return lost


def parse_witness(
    status: dict[str, str],
    trace: str,
    formats: dict[str, str],
    sync: str,
    stats: str,
    own_ips: set[str],
) -> Witness:
    """A host's witness files (already read) into a ``Witness`` on its capture clock."""
    state = status.get("state", "none")
    w = Witness(state=state, reason=status.get("reason", ""))
    if state not in ("ran", "running"):
        return w
    if not trace.strip():
        w.state, w.reason = "unusable", "its trace is not in the bundle (not pulled back)"
        return w
    fmts = {name: parse_format(text) for name, text in formats.items()}
    send = fmts.get("tcp_send_reset")
    w.has_reason = bool(send and send.has_reason)
    brackets: dict[tuple[str, str], tuple[int, int]] = {}
    for line in sync.splitlines():
        p = line.split()
        if len(p) == 4 and p[2].isdigit() and p[3].isdigit():
            brackets[(p[0], p[1])] = (int(p[2]), int(p[3]))
    syncs: list[_Sync] = []
    raw: list[tuple[int, str, str, dict[str, str], bool, int]] = []
    for line in trace.splitlines():
        if line.startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if m is None:
            continue
        sec, _, frac = m.group("ts").partition(".")
        mono_us = int(sec) * 1_000_000 + int(frac[:6].ljust(6, "0"))
        event, rest = m.group("event"), m.group("rest")
        if event == "tracing_mark_write":
            words = rest.split()
            if len(words) == 3 and words[0] == _SYNC_MARK and (words[1], words[2]) in brackets:
                lo, hi = brackets[(words[1], words[2])]
                syncs.append(_Sync(mono_us, lo, hi))
            continue
        if event not in ("tcp_send_reset", "tcp_receive_reset"):
            continue
        kv = dict(x.split("=", 1) for x in rest.split() if "=" in x)
        fmt = fmts.get(event)
        if fmt is not None and fmt.keys and not set(fmt.keys) & set(kv):
            w.problems.append(f"{event} lines do not match the host's format file; skipped")
            continue
        flags = m.group("flags")
        softirq = len(flags) > 2 and flags[2] != "."  # s softirq, h/H hard irq, z/Z NMI
        raw.append((mono_us, event, m.group("comm").strip(), kv, softirq, int(m.group("pid"))))
    mapping = _mapping(syncs)
    if mapping is None:
        w.state = "unusable"
        w.reason = "its trace has no clock markers (cannot place its events on the capture's clock)"
        return w
    anchor, offset, slope, w.clock_bound_ns = mapping

    def wall(mono_ns: int) -> int:
        return mono_ns + offset + round(slope * (mono_ns - anchor))

    marks = sorted(s.mono_us * 1000 for s in syncs)
    w.start_ns = wall(marks[0])
    # Without the end markers the job never reached its end: the window's end is unknown.
    w.end_ns = wall(marks[-1]) if any(k[0] == "end" for k in brackets) else None
    w.lost = parse_stats(stats)
    for mono_us, event, comm, kv, softirq, pid in raw:
        addrs = _addresses(kv)
        if addrs is None:
            continue
        a_ip, a_port, b_ip, b_port = addrs
        kind = "send" if event == "tcp_send_reset" else "receive"
        if kind == "send":
            src, sport, dst, dport = a_ip, a_port, b_ip, b_port  # src is the sender
        else:
            src, sport, dst, dport = b_ip, b_port, a_ip, a_port  # the local socket received it
        ev = KernelEvent(
            kind=kind,
            ts_ns=wall(mono_us * 1000),
            src=src,
            sport=sport,
            dst=dst,
            dport=dport,
            state=kv.get("state") if kind == "send" else None,
            reason=kv.get("reason") if kind == "send" else None,
            pid=pid,
            comm=comm,
            softirq=softirq,
        )
        if own_ips and ev.local not in own_ips:
            w.foreign += 1
            continue
        w.events.append(ev)
    w.events.sort(key=lambda e: e.ts_ns)
    return w
