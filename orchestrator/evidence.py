"""Turn a bundle on disk (or hand-taken pcaps) into analysis inputs, and write the reports.

The analysis package does no IO: this module opens the files and reads the snapshots.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import mmap
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis import html, schema
from analysis.evidence import Cause
from analysis.extract import extract_all
from analysis.logs import LogLine
from analysis.logs import parse as parse_log
from analysis.model import ClockProbe, HostFacts, VantageData, VantageInput
from analysis.pcap import is_capture
from analysis.report import About, markdown, to_json
from analysis.verdict import Analysis, analyze
from analysis.witness import Witness, parse_witness
from orchestrator import __version__
from orchestrator.bundle import sha256_file
from orchestrator.errors import UsageError
from orchestrator.inventory import NAME_RE
from remote.snapshot import (
    host_addresses,
    parse_conntrack,
    parse_int,
    parse_ip_s_link,
    parse_listener_names,
    parse_listeners,
    parse_nstat,
    parse_sockets,
)

if TYPE_CHECKING:
    from orchestrator.inventory import Inventory


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _if_names(ip_link_json: str) -> dict[int, str]:
    try:
        links = json.loads(ip_link_json) if ip_link_json.strip() else []
    except ValueError:
        return {}
    return {int(x["ifindex"]): str(x["ifname"]) for x in links if isinstance(x, dict) and "ifindex" in x}


def _extract(inputs: list[VantageInput]) -> list[VantageData]:
    """Files of different vantages are scanned on all cores (the compiled walk frees the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return extract_all(inputs, pool_map=pool.map)


def _sockets(snap: Path) -> tuple[str, str]:
    """The snapshot's connections and listeners: one ``ss -tanpi`` (both), or, in bundles before
    0.2, ``ss -tnpi`` and ``ss -tlnp``."""
    both = _read(snap / "ss_tanpi.txt")
    return (both, both) if both else (_read(snap / "ss_tnpi.txt"), _read(snap / "ss_tlnp.txt"))


def host_facts(host_dir: Path, addresses: list[str]) -> HostFacts:
    b, a = host_dir / "before", host_dir / "after"
    ips, macs = host_addresses(_read(b / "ip_addr.txt"), _read(b / "ip_link.txt"))
    (conns_b, listen_b), (conns_a, listen_a) = _sockets(b), _sockets(a)
    return HostFacts(
        own_ips=ips | set(addresses),
        own_macs=macs,
        if_names=_if_names(_read(b / "ip_link.txt") or _read(b / "ip_addr.txt")),
        listeners_before=parse_listeners(listen_b),
        listeners_after=parse_listeners(listen_a),
        counters_before=parse_nstat(_read(b / "nstat.txt")),
        counters_after=parse_nstat(_read(a / "nstat.txt")),
        sockets_before=parse_sockets(conns_b),
        sockets_after=parse_sockets(conns_a),
        listener_names=parse_listener_names(listen_b + listen_a),
        conntrack_before=parse_int(_read(b / "conntrack_count.txt")),
        conntrack_after=parse_int(_read(a / "conntrack_count.txt")),
        conntrack_max=parse_int(_read(a / "conntrack_max.txt")) or parse_int(_read(b / "conntrack_max.txt")),
        links_before=parse_ip_s_link(_read(b / "ip_s_link.txt")),
        links_after=parse_ip_s_link(_read(a / "ip_s_link.txt")),
        translations=parse_conntrack(_read(a / "conntrack_flow.txt")),
    )


def _utc_offset(host_dir: Path) -> int:
    """The host's local time minus UTC, in seconds (date +%z in its "before" snapshot; 0 if absent)."""
    text = _read(host_dir / "before" / "utc_offset.txt").strip().splitlines()
    z = text[0] if text else ""
    if len(z) == 5 and z[0] in "+-" and z[1:].isdigit():
        return (-1 if z[0] == "-" else 1) * (int(z[1:3]) * 3600 + int(z[3:5]) * 60)
    return 0


def host_logs(host_dir: Path, name: str) -> tuple[list[LogLine], list[str]]:
    """The log lines a host returned (logs/log.N.txt, what was read in log.N.meta), parsed, and
    notes on the sources that could not be read."""
    lines: list[LogLine] = []
    notes: list[str] = []
    offset = _utc_offset(host_dir)
    for meta in sorted((host_dir / "logs").glob("log.*.meta")):
        kv = dict(x.split("=", 1) for x in _read(meta).splitlines() if "=" in x)
        src = kv.get("source", meta.stem)
        if "error" in kv:
            notes.append(f"{name}: log {src}: {kv['error']}")
        if kv.get("truncated"):
            notes.append(f"{name}: log {src}: more was written in the window than is kept; the latest part is read")
        lines += parse_log(name, src, _read(meta.with_suffix(".txt")), offset)
    return lines, notes


def _probes(host: dict[str, Any]) -> list[ClockProbe]:
    out = []
    for p in host.get("clock_probes") or []:
        try:
            out.append(ClockProbe(str(p["phase"]), int(p["at_ns"]), int(p["offset_ns"]), int(p["bound_ns"])))
        except (KeyError, TypeError, ValueError):
            continue  # a hand-edited manifest: that probe is ignored, the packets still count
    return out


def witness(host_dir: Path, record: dict[str, Any] | None, own_ips: set[str]) -> Witness:
    """The host's witness files (``HOST/witness/``) as analysis input; state and reason from the
    manifest (a bundle from before the witness existed has neither: state "none")."""
    rec = record if isinstance(record, dict) else {}
    state = str(rec.get("state") or "none")
    if state == "not started":
        state = "none"
    d = host_dir / "witness"
    formats = {ev: _read(d / f"witness.{ev}.format") for ev in ("tcp_send_reset", "tcp_receive_reset")}
    return parse_witness(
        {"state": state, "reason": str(rec.get("reason") or "")},
        _read(d / "witness.trace"),
        {k: v for k, v in formats.items() if v},
        _read(d / "witness.sync"),
        _read(d / "witness.stats"),
        own_ips,
    )


def load_manifest(root: Path) -> dict[str, Any]:
    """The bundle's manifest, checked as far as the analysis relies on it. Raises UsageError
    naming the field: a bundle is evidence from elsewhere, and a bad one is one line, never a
    traceback, and never a path outside the bundle."""
    where = f"{root / 'manifest.json'}"
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{root}: not a capture-all bundle ({exc})") from None

    def bad(field: str, why: str) -> UsageError:
        return UsageError(f"{where}: {field}: {why}")

    if not isinstance(manifest, dict):
        raise bad("(top level)", "not a JSON object")
    hosts = manifest.get("hosts")
    if not isinstance(hosts, list):
        raise bad("hosts", "missing or not a list")
    for i, h in enumerate(hosts):
        if not isinstance(h, dict) or not isinstance(h.get("name"), str) or not NAME_RE.match(h["name"]):
            raise bad(f"hosts[{i}].name", "missing, or not a folder name (letters, digits, . _ -)")
        for key, kind in (("role", str), ("status", str), ("captures", list), ("addresses", list)):
            if key in h and not isinstance(h[key], kind):
                raise bad(f"hosts[{i}] ({h['name']}).{key}", f"not a {kind.__name__}")
        for j, c in enumerate(h.get("captures", [])):
            path = c.get("path") if isinstance(c, dict) else None
            if not isinstance(path, str) or not isinstance(c.get("interface"), str) or not _inside(root, path):
                raise bad(f"hosts[{i}] ({h['name']}).captures[{j}]", "needs an interface and a path inside the bundle")
    return manifest


def _inside(root: Path, rel: str) -> bool:
    return not Path(rel).is_absolute() and ".." not in Path(rel).parts


def _run_window(manifest: dict[str, Any]) -> tuple[int, int] | None:
    armed = [h["armed_ns"] for h in manifest["hosts"] if isinstance(h.get("armed_ns"), int)]
    stopped = [h["stopped_ns"] for h in manifest["hosts"] if isinstance(h.get("stopped_ns"), int)]
    return (min(armed), max(stopped)) if armed and stopped and max(stopped) >= min(armed) else None


def _about(analyzed_by: list[str] | None, **kw: Any) -> About:
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return About(tool=f"capture-all {__version__}", generated_utc=now, analyzed_by=analyzed_by, **kw)


def idle_chain(root: Path, manifest: dict[str, Any], result: Analysis) -> dict[str, Any] | None:
    """The idle-timeout chain from the readings the proxies and translating hosts returned during
    the capture (``timeouts.txt``) and the inventory's idle_timeouts; None where none was read."""
    from analysis.idlechain import link
    from analysis.timeouts import HopInput, chain
    from orchestrator.errors import FlowError
    from orchestrator.flow import parse_flow
    from remote.parse import parse_sections

    hosts = manifest["hosts"]
    if not any(h.get("timeouts") for h in hosts):
        return None
    hops = []
    for h in hosts:
        rel = h.get("timeouts")
        try:
            text = (root / rel).read_text(errors="replace") if rel else ""
        except OSError as exc:
            hops.append(HopInput(h["name"], h.get("role", "other"), h.get("idle_timeout"), None, exc.strerror))
            continue
        body = {k: v.body for k, v in parse_sections(text).sections.items()}
        hops.append(HopInput(h["name"], h.get("role", "other"), h.get("idle_timeout"), body))
    try:
        port = parse_flow(manifest.get("flow", "")).server.port or 0
    except FlowError:  # a flow the manifest mangled: the chain is a bonus, never the analysis's end
        port = 0
    return link(result.resets, chain(hops, port))


def analyze_bundle(root: Path, analyzed_by: list[str] | None = None) -> tuple[Analysis, dict[str, Any]]:
    """Raises UsageError for a bundle that is not one (one line naming the field). ``analyzed_by``:
    the command line of a re-analysis (None: the capture's own)."""
    manifest = load_manifest(root)
    with ExitStack() as stack:
        inputs = []
        for h in manifest["hosts"]:
            caps = h.get("captures", [])
            drops = [c.get("kernel_drops") for c in caps]
            files, problems = [], []
            for c in caps:
                try:
                    files.append((c["interface"], stack.enter_context((root / c["path"]).open("rb"))))
                except OSError as exc:
                    problems.append(f"{h['name']}/{c['interface']}: {c['path']} cannot be read ({exc.strerror})")
            facts = host_facts(root / h["name"], h.get("addresses", []))
            logs, log_notes = host_logs(root / h["name"], h["name"])
            inputs.append(
                VantageInput(
                    name=h["name"],
                    role=h.get("role", "other"),
                    status="failed" if h.get("status") == "failed" else "ok",
                    error=h.get("error"),
                    captures=files,
                    kernel_drops=sum(d for d in drops if d) if any(d is not None for d in drops) else None,
                    facts=facts,
                    probes=_probes(h),
                    witness=witness(root / h["name"], h.get("witness"), facts.own_ips),
                    problems=problems + log_notes,
                    logs=logs,
                )
            )
        result = analyze(_extract(inputs))
    result.idle_chain = idle_chain(root, manifest, result)
    if result.first is not None and result.first.cause == Cause.IDLE_EXPIRY:
        # The chain named the forger's expiry: the ticket's sentence says it too, with both values.
        said = next(e.text for e in result.first.evidence if e.data.get("cause") == str(Cause.IDLE_EXPIRY))
        result.verdict += f" {said}"
    caps = [(h["name"], c["interface"], root / c["path"]) for h in manifest["hosts"] for c in h.get("captures", [])]
    result.sources = [(name, iface, str(path.resolve())) for name, iface, path in caps if path.is_file()]
    about = _about(analyzed_by, command=list(manifest.get("command") or []), bundle=str(root.resolve()),
                   manifest_sha256=sha256_file(root / "manifest.json"),
                   captured_utc=manifest.get("created_utc"), run_ns=_run_window(manifest))  # fmt: skip
    report = to_json(result, manifest.get("flow", ""), f"capture-all {__version__}", about)
    return result, report


def analyze_pcaps(specs: list[str], inventory: Inventory | None,
                  analyzed_by: list[str] | None = None) -> tuple[Analysis, dict[str, Any]]:  # fmt: skip
    """``HOST=FILE`` pairs: captures taken by hand. Roles and addresses come from the inventory
    when one is given; otherwise directions are inferred from the captures themselves."""
    hosts = {h.name: h for h in inventory.hosts} if inventory else {}
    sources: list[tuple[str, str, str]] = []
    with ExitStack() as stack:
        by_host: dict[str, VantageInput] = {}
        for spec in specs:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise UsageError(f"--pcap {spec!r}: expected HOST=FILE")
            try:
                fh = stack.enter_context(Path(path).open("rb"))
                head = fh.read(4)
                fh.seek(0)
            except OSError as exc:
                raise UsageError(f"--pcap {spec!r}: {exc.strerror}") from None
            if not is_capture(head):
                raise UsageError(f"--pcap {spec!r}: not a pcap or pcapng file (first bytes {head.hex() or 'none'})")
            h = hosts.get(name)
            v = by_host.setdefault(
                name,
                VantageInput(
                    name=name,
                    role=h.role if h else "other",
                    facts=HostFacts(
                        own_ips={str(a) for a in h.addresses} | {str(e.ip) for e in h.listen} if h else set()
                    ),
                ),
            )
            v.captures.append((Path(path).name, fh))
            sources.append((name, Path(path).name, str(Path(path).resolve())))
        result = analyze(_extract(list(by_host.values())))
    result.sources = sources
    return result, to_json(result, "", f"capture-all {__version__}", _about(analyzed_by))


def write_reports(root: Path, result: Analysis, report: dict[str, Any], flow: str,
                  modified: list[str] | None = None) -> None:  # fmt: skip
    """report.json, report.md, report.html and merged.pcapng; ``modified``: the bundle's files that are not what was
    collected (verify), said first in both."""
    from orchestrator.bundle import Bundle

    b = Bundle(root)
    head = ""
    if modified:
        head = (f"> **Integrity: {len(modified)} file(s) of the bundle are not what was collected:** "
                + "; ".join(modified) + "\n\n")  # fmt: skip
    b.write("report.md", head + markdown(result, flow, report.get("about")) + "\n")
    report["merged"] = write_merged(root / MERGED, result, flow)
    b.write("report.json", schema.dump(report))  # validated against the published schema
    b.write("report.html", html.render(report))


MERGED = "merged.pcapng"
WIRESHARK_FILTER = 'frame.comment contains "R"'


class DirectFile:
    """A new file written front to back past the page cache (O_DIRECT: page-aligned chunks from a
    buffer of its own, or whole blocks straight from the caller's aligned memory through
    ``write_blocks``; the tail without it), where the filesystem allows; plain writes otherwise.
    merged.pcapng is as large as the captures and nobody reads it back at once: filling the page
    cache with it cost this machine more than the merge itself (1.9 GB: 4.96-5.85 s through the
    cache, 1.06-1.25 s past it, fresh files, measured)."""

    CHUNK = 4 << 20

    def __init__(self, path: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.direct = hasattr(os, "O_DIRECT")
        try:
            self.fd = os.open(path, flags | (os.O_DIRECT if self.direct else 0), 0o600)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.fd, self.direct = os.open(path, flags, 0o600), False  # tmpfs and the like
        self.buf = mmap.mmap(-1, self.CHUNK)  # page-aligned, as O_DIRECT needs
        self.fill = 0

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _plain(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    @property
    def block(self) -> int:
        """The size that ``write_blocks`` takes multiples of (0: plain writes)."""
        return mmap.PAGESIZE if self.direct and not self.fill else 0

    def write_blocks(self, data: Any) -> None:
        """Whole blocks from page-aligned memory, written as they are (no copy), after everything
        before (which was whole blocks too)."""
        self._out_direct(memoryview(data).cast("B"))

    def _out_direct(self, view: memoryview) -> None:
        try:
            self._out(view)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._plain()  # the filesystem took the flag but not the write
            self._out(view)

    def _out(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if not self.direct:
            self._out(view)
            return len(view)
        off = 0
        while off < len(view):
            take = min(self.CHUNK - self.fill, len(view) - off)
            self.buf[self.fill : self.fill + take] = view[off : off + take]
            self.fill, off = self.fill + take, off + take
            if self.fill == self.CHUNK:
                self._flush()
        return len(view)

    def _flush(self) -> None:
        chunk = memoryview(self.buf)[: self.fill]
        try:
            self._out_direct(chunk)
        finally:
            chunk.release()
        self.fill = 0

    def close(self) -> None:
        try:
            if self.fill:
                if self.direct:
                    self._plain()  # the tail is not a whole number of blocks
                self._flush()
        finally:
            os.close(self.fd)
            self.buf.close()


def merged_line(root: Path, merged: dict[str, Any]) -> str:
    """The terminal's line about merged.pcapng."""
    if not merged.get("file"):
        return f"  {MERGED}: " + "; ".join(merged.get("problems", []))
    line = (f"  {root / MERGED}: {merged['packets']} packets of {len(merged['interfaces'])} interfaces on one clock, "
            f"{merged['reset_comments']} reset observations commented (Wireshark: {WIRESHARK_FILTER})")  # fmt: skip
    return line + ("; " + "; ".join(merged["problems"]) if merged.get("problems") else "")


def _not_written(why: str) -> dict[str, Any]:
    problem = f"not written: {why} (the captures themselves are in the bundle)"
    return {"file": None, "packets": 0, "reset_comments": 0, "interfaces": [], "problems": [problem]}


def write_merged(path: Path, result: Analysis, flow: str) -> dict[str, Any]:
    """merged.pcapng from the captures the analysis read (``result.sources``); what it holds, for
    report.json. A capture that cannot be read again is named, never fatal."""
    from analysis import merged

    problems: list[str] = []
    need = sum(Path(src).stat().st_size for _, _, src in result.sources if Path(src).is_file())
    need = need * 21 // 20 + (64 << 20)  # each packet's block is 16 bytes longer; a margin for the rest
    free = shutil.disk_usage(path.parent).free
    if free < need:
        return _not_written(f"it needs about {need >> 20} MiB and {path.parent} has {free >> 20} MiB free")
    with ExitStack() as stack:
        sources = []
        for vantage, iface, src in result.sources:
            try:
                sources.append(merged.Source(vantage, iface, stack.enter_context(Path(src).open("rb"))))
            except OSError as exc:
                problems.append(f"{vantage}/{iface}: {src} cannot be read ({exc.strerror})")
        ref = result.clocks.reference if result.clocks else None
        whose = f"{ref}'s" if ref else "each host's own"
        comment = (f"capture-all {__version__}: every capture of {flow}, one interface per host/interface, "
                   f"times on {whose} clock; each reset has a packet comment (Wireshark: frame.comment)")  # fmt: skip
        try:
            with DirectFile(path) as out:
                info = merged.write(out, sources, result, f"capture-all {__version__}", comment)  # type: ignore[arg-type]
        except OSError as exc:  # the disk filled up after all, or went away: the rest stands
            path.unlink(missing_ok=True)
            return _not_written(str(exc.strerror or exc))
    return {
        "file": MERGED,
        "packets": info.packets,
        "reset_comments": info.comments,
        "interfaces": [{"name": i.name, "link_type": i.link, "aligned_minus_captured_ns": i.offset_ns,
                        "description": i.description} for i in info.interfaces],  # fmt: skip
        "problems": problems + info.problems,
    }
