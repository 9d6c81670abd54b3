"""Pure parsers for what the scripts in ``remote.commands`` print.

Each phase's stdout is a series of ``@@section NAME`` blocks; ``parse_sections`` splits them and
the phase parsers below turn the blocks into small dataclasses. Nothing here does IO.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

# The names of the snapshot blocks, in the order the script prints them; each becomes a file.
SNAPSHOT_SECTIONS = (
    "clock_ns",
    "uname",
    "ip_addr",
    "ip_link",  # bundles before 0.2 (ip -j addr has the links' index, name and MAC too)
    "ip_s_link",
    "ss_tanpi",  # connections and listeners, with their processes (bundles before 0.2: ss_tnpi, ss_tlnp)
    "ss_s",  # older bundles: ss -s (now sockstat)
    "sockstat",  # /proc/net/sockstat and sockstat6
    "nstat",  # /proc/net/snmp, netstat and snmp6 (older bundles: nstat -asz)
    "conntrack_count",
    "conntrack_max",
    "port_range",
    "utc_offset",  # date +%z: the host's local time zone (for logs written in local time)
    "conntrack_flow",  # finish only, on a translating box
)

_STATS = {
    "captured": re.compile(r"^(\d+) packets? captured", re.M),
    "received": re.compile(r"^(\d+) packets? received by filter", re.M),
    "dropped": re.compile(r"^(\d+) packets? dropped by kernel", re.M),
}


@dataclass
class Section:
    name: str
    body: str
    rc: int | None = None


@dataclass
class Failure:
    code: str
    text: str


@dataclass
class Parsed:
    sections: dict[str, Section] = field(default_factory=dict)
    failure: Failure | None = None
    ssh_connection: str = ""

    def kv(self, name: str) -> dict[str, str]:
        """``key=value`` lines of a section (first ``=`` splits)."""
        out: dict[str, str] = {}
        sec = self.sections.get(name)
        if sec is None:
            return out
        for line in sec.body.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def words(self, name: str, first: str) -> list[list[str]]:
        """Lines of a section that start with the word ``first``, split on spaces."""
        sec = self.sections.get(name)
        if sec is None:
            return []
        return [ln.split()[1:] for ln in sec.body.splitlines() if ln.split()[:1] == [first]]


class SectionReader:
    """Reads a host's output line by line into ``parsed`` as it comes (a session's transcript is
    parsed once, not once for each step that looks at it)."""

    def __init__(self) -> None:
        self.parsed = Parsed()
        self._current: Section | None = None
        self._body: list[str] = []
        self.ended = False  # a @@fail was read: it is final, whatever follows is not the host's script's
        self.after_fail = 0  # lines that came after it anyway (counted, never read)

    def feed(self, line: str) -> None:
        if self.ended:
            self.after_fail += 1
        elif not line.startswith("@@"):
            if self._current is not None:
                self._body.append(line)
        elif line.startswith("@@section "):
            self._close()
            self._current, self._body = Section(line[len("@@section ") :].strip(), ""), []
            self.parsed.sections[self._current.name] = self._current
        elif line.startswith("@@rc ") and self._current is not None:
            rc = line[5:].strip()
            self._current.rc = int(rc) if rc.lstrip("-").isdigit() else None
        elif line.startswith("@@fail "):
            code, _, text = line[len("@@fail ") :].partition(" ")
            self.parsed.failure = Failure(code, text.strip())
            self.ended = True
        elif line.startswith("@@ssh"):
            self.parsed.ssh_connection = line[len("@@ssh") :].strip()
        elif self._current is not None:
            self._body.append(line)

    def _close(self) -> None:
        if self._current is not None:
            self._current.body = "\n".join(self._body) + ("\n" if self._body else "")

    def result(self) -> Parsed:
        """What was read so far (the open section's body included)."""
        self._close()
        return self.parsed


def parse_sections(stdout: str) -> Parsed:
    reader = SectionReader()
    for line in stdout.splitlines():
        reader.feed(line)
    return reader.result()


@dataclass
class SshEndpoints:
    """The host's view of our SSH session: SSH_CONNECTION = 'client_ip client_port server_ip server_port'."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int


def parse_ssh_connection(value: str) -> SshEndpoints | None:
    parts = value.split()
    if len(parts) != 4:
        return None
    try:
        return SshEndpoints(parts[0], int(parts[1]), parts[2], int(parts[3]))
    except ValueError:
        return None


def _int(text: str | None, default: int) -> int:
    """A number the host printed; anything else is the default (parsers are total)."""
    t = (text or "").strip()
    return int(t) if re.fullmatch(r"-?[0-9]{1,20}", t) else default


@dataclass
class Preflight:
    uid: int
    owner: str
    tcpdump: str
    free_kb: int
    remote_dir: str
    ssh: SshEndpoints | None


def parse_preflight(parsed: Parsed) -> Preflight:
    kv = parsed.kv("preflight")
    return Preflight(
        uid=_int(kv.get("uid"), -1),
        owner=kv.get("owner", ""),
        tcpdump=kv.get("tcpdump", ""),
        free_kb=_int(kv.get("free_kb"), 0),
        remote_dir=kv.get("dir", ""),
        ssh=parse_ssh_connection(parsed.ssh_connection),
    )


@dataclass
class RemoteFile:
    name: str
    size: int
    sha256: str


_SHA_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")


def parse_files(parsed: Parsed) -> list[RemoteFile]:
    """The ``files`` section: ``size N PATH`` lines (one ``stat``) and ``SHA256  PATH`` lines (one
    ``sha256sum``), joined by file name. A file with only one of the two is left out."""
    sec = parsed.sections.get("files")
    sizes: dict[str, int] = {}
    digests: dict[str, str] = {}
    for line in sec.body.splitlines() if sec else []:
        words = line.split()
        if len(words) == 3 and words[0] == "size" and words[1].isdigit():
            sizes[words[2].rsplit("/", 1)[-1]] = int(words[1])
        elif m := _SHA_LINE.match(line):
            digests[m.group(2).rsplit("/", 1)[-1]] = m.group(1)
    return [RemoteFile(name, size, digests[name]) for name, size in sizes.items() if name in digests]


@dataclass
class WitnessStatus:
    """The kernel reset witness as the host's job reported it (``witness.status``)."""

    state: str = "unknown"  # off | unavailable | running | ran | unknown (the job wrote nothing)
    reason: str = ""  # why it is off or unavailable
    instance: str = ""  # the ftrace instance the job created
    clock: str = ""  # the instance's trace clock
    events: list[str] = field(default_factory=list)
    removed: bool | None = None  # the job removed its instance afterwards
    swept: int = 0  # stale instances of ours (whose job was gone) removed before starting
    error: str = ""
    files: list[RemoteFile] = field(default_factory=list)


_WITNESS_FILE = re.compile(r"witness\.[a-z_]+(\.format)?")


def parse_witness(parsed: Parsed) -> WitnessStatus:
    kv = parsed.kv("witness")
    removed = kv.get("removed")
    return WitnessStatus(
        state=kv.get("state", "unknown"),
        reason=kv.get("reason", ""),
        instance=kv.get("instance", ""),
        clock=kv.get("clock", ""),
        events=[e for e in kv.get("events", "").split(",") if e],
        removed=None if removed is None else removed == "1",
        swept=max(0, _int(kv.get("swept"), 0)),
        error=kv.get("error", ""),
        files=[f for f in parse_files(parsed) if _WITNESS_FILE.fullmatch(f.name)],
    )


@dataclass
class Armed:
    armed_ns: int
    job_pid: int | None
    pids: dict[str, int]
    witness: WitnessStatus = field(default_factory=WitnessStatus)
    tcpdump: str = ""  # path and version of the tcpdump that captured


def parse_arm(parsed: Parsed) -> Armed:
    kv = parsed.kv("arm")
    pids = {w[0]: int(w[1]) for w in parsed.words("arm", "pid") if len(w) == 2 and w[1].isdigit()}
    # The host's clock as the capture listened: the first words of its clock probe.
    job, armed = _int(kv.get("job_pid"), -1), _int(parsed.kv("probe").get("now_ns"), 0)
    td = parsed.kv("tcpdump")
    tcpdump = " ".join(x for x in (td.get("path", ""), td.get("version", "")) if x)
    return Armed(max(armed, 0), job if job > 0 else None, pids, parse_witness(parsed), tcpdump)


@dataclass
class TcpdumpStats:
    captured: int | None = None
    received: int | None = None
    dropped: int | None = None


def parse_tcpdump_stats(stderr: str) -> TcpdumpStats:
    """tcpdump prints 'N packets captured / received by filter / dropped by kernel' on exit."""
    values: dict[str, int | None] = {}
    for key, rx in _STATS.items():
        m = rx.search(stderr)
        values[key] = int(m.group(1)) if m else None
    return TcpdumpStats(**values)


@dataclass
class Finished:
    already_done: bool
    done_ns: int | None
    stop_reason: str
    exit_codes: dict[str, int | None]
    files: list[RemoteFile]
    tcpdump_stderr: dict[str, str]
    stats: dict[str, TcpdumpStats]
    witness: WitnessStatus = field(default_factory=WitnessStatus)
    # Watch mode: per interface, the ring's files kept for the window and how many there were,
    # and the first packet of the kept ones (host clock, ns): how far back the window reaches.
    ring: dict[str, tuple[int, int]] = field(default_factory=dict)
    reach_ns: dict[str, int] = field(default_factory=dict)
    logs: list[RemoteFile] = field(default_factory=list)  # log.N.txt and log.N.meta: the window's log lines

    def only(self, interfaces: Sequence[str]) -> tuple[Finished, list[str]]:
        """What the host said of the plan's interfaces alone, and the other names it gave (a host
        chooses none of the bundle's file names: ``X.tcpdump.txt`` with X =
        ``../../../etc/cron.d/planted`` was written outside the bundle)."""
        want = set(interfaces)
        pcaps = {f"{i}.pcap" for i in want}
        said = set(self.exit_codes) | set(self.tcpdump_stderr) | set(self.ring) | set(self.reach_ns)
        other = sorted(said - want) + sorted(f.name for f in self.files if f.name not in pcaps)
        kept = replace(
            self,
            exit_codes={i: c for i, c in self.exit_codes.items() if i in want},
            files=[f for f in self.files if f.name in pcaps],
            tcpdump_stderr={i: s for i, s in self.tcpdump_stderr.items() if i in want},
            stats={i: s for i, s in self.stats.items() if i in want},
            ring={i: r for i, r in self.ring.items() if i in want},
            reach_ns={i: r for i, r in self.reach_ns.items() if i in want},
        )
        return kept, other


_LOG_FILE = re.compile(r"log\.\d{1,3}\.(txt|meta)")


def parse_finish(parsed: Parsed) -> Finished:
    kv = parsed.kv("finish")
    codes: dict[str, int | None] = {}
    for w in parsed.words("finish", "rc"):
        if w:
            codes[w[0]] = int(w[1]) if len(w) > 1 and w[1].lstrip("-").isdigit() else None
    files = [f for f in parse_files(parsed) if f.name.endswith(".pcap")]
    errs = {
        name[len("tcpdump_err ") :]: sec.body
        for name, sec in parsed.sections.items()
        if name.startswith("tcpdump_err ")
    }
    done = _int(kv.get("done_ns"), -1)
    return Finished(
        already_done=kv.get("already_done") == "1",
        done_ns=done if done > 0 else None,
        stop_reason=kv.get("stop_reason", ""),
        exit_codes=codes,
        files=files,
        tcpdump_stderr=errs,
        stats={iface: parse_tcpdump_stats(text) for iface, text in errs.items()},
        witness=parse_witness(parsed),
        ring={w[0]: (_int(w[1], 0), _int(w[2], 0)) for w in parsed.words("finish", "ring") if len(w) == 3},
        reach_ns={w[0]: _int(w[1], 0) for w in parsed.words("finish", "reach") if len(w) == 2 and _int(w[1], 0) > 0},
        logs=[f for f in parse_files(parsed) if _LOG_FILE.fullmatch(f.name)],
    )


def parse_rst_line(line: str) -> int | None:
    """The time (host clock, ns) of a trigger line, ``@@rst SECONDS.FRACTION ...`` as tcpdump -tt
    prints it (nanoseconds with --time-stamp-precision=nano); None if it is not one."""
    words = line.split()
    if len(words) < 2 or words[0] != "@@rst":
        return None
    sec, dot, frac = words[1].partition(".")
    if not sec.isdigit() or (dot and not frac.isdigit()) or len(frac) > 9:
        return None
    return int(sec) * 10**9 + int((frac or "0").ljust(9, "0"))


def parse_inline(parsed: Parsed, files: list[RemoteFile]) -> dict[str, bytes]:
    """The files the host sent inside its finish output (section ``inline``: their names, then
    their bytes one after the other, base64), cut by the sizes the host listed. A file whose
    bytes do not add up is left out (it comes over SFTP instead); digests are the caller's."""
    sec = parsed.sections.get("inline")
    if sec is None or sec.rc != 0:
        return {}
    names = [w[0] for w in parsed.words("inline", "name") if w]
    text = "".join(ln for ln in sec.body.splitlines() if not ln.startswith("name "))
    try:
        blob = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return {}
    sizes = {f.name: f.size for f in files}
    out: dict[str, bytes] = {}
    at = 0
    for name in names:
        size = sizes.get(name)
        if size is None or at + size > len(blob):
            return out
        out[name] = blob[at : at + size]
        at += size
    return out


@dataclass
class Cleaned:
    removed: bool  # the directory is gone
    instance_removed: bool | None  # the witness's ftrace instance is gone (None: none, or not yet)
    instance_pending: bool = False  # it was still there, its job still removing it


def parse_cleanup(parsed: Parsed) -> Cleaned:
    kv = parsed.kv("cleanup")
    inst = kv.get("instance_removed")
    if inst == "pending":
        return Cleaned(bool(kv.get("removed")), None, True)
    return Cleaned(bool(kv.get("removed")), None if inst is None else inst == "1")


def snapshot_files(parsed: Parsed) -> dict[str, str]:
    """The snapshot blocks of a phase's output, as file name -> text (with the exit status
    appended when a command failed, so a missing tool is visible in the bundle)."""
    out: dict[str, str] = {}
    for name in SNAPSHOT_SECTIONS:
        sec = parsed.sections.get(name)
        if sec is None:
            continue
        body = sec.body
        if sec.rc not in (0, None):
            body += f"# exit status {sec.rc}\n"
        out[f"{name}.txt"] = body
    return out


@dataclass
class ProbeResult:
    at_ns: int  # controller clock, middle of the best sample
    offset_ns: int  # host clock minus controller clock
    bound_ns: int  # half the best round trip, plus the host clock's resolution
    rtt_ns: int
    samples: int
    resolution_ns: int


def parse_probe(header: str, samples: list[tuple[int, str, int]]) -> ProbeResult | None:
    """NTP-style: the host read its clock somewhere between our send and our receive, so with
    the shortest round trip, offset = host - (send + receive) / 2 within +- round trip / 2.
    ``header`` is the host's ``@@probe us`` or ``@@probe ns``. None when no answer was a number
    (the first sample, which pays for the shell, is dropped)."""
    unit = 1000 if header.split()[-1:] == ["us"] else 1
    good = []
    for sent, text, received in samples[1:] if len(samples) > 1 else samples:
        if text.isdigit() and received >= sent:
            good.append((received - sent, sent, int(text) * unit, received))
    if not good:
        return None
    rtt, sent, remote, received = min(good)
    mid = (sent + received) // 2
    return ProbeResult(mid, remote - mid, (rtt + 1) // 2 + unit, rtt, len(good), unit)
