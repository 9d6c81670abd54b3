"""Turn a bundle on disk (or hand-taken pcaps) into analysis inputs, and write the reports.

The analysis package does no IO: this module opens the files and reads the snapshots.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.extract import extract_all
from analysis.model import ClockProbe, HostFacts, VantageData, VantageInput
from analysis.report import markdown, to_json
from analysis.verdict import Analysis, analyze
from orchestrator import __version__
from orchestrator.errors import UsageError
from remote.parse import host_addresses, parse_listeners, parse_nstat

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


def host_facts(host_dir: Path, addresses: list[str]) -> HostFacts:
    b, a = host_dir / "before", host_dir / "after"
    ips, macs = host_addresses(_read(b / "ip_addr.txt"), _read(b / "ip_link.txt"))
    return HostFacts(
        own_ips=ips | set(addresses),
        own_macs=macs,
        if_names=_if_names(_read(b / "ip_link.txt")),
        listeners_before=parse_listeners(_read(b / "ss_tlnp.txt")),
        listeners_after=parse_listeners(_read(a / "ss_tlnp.txt")),
        counters_before=parse_nstat(_read(b / "nstat.txt")),
        counters_after=parse_nstat(_read(a / "nstat.txt")),
    )


def _probes(host: dict[str, Any]) -> list[ClockProbe]:
    out = []
    for p in host.get("clock_probes") or []:
        try:
            out.append(ClockProbe(str(p["phase"]), int(p["at_ns"]), int(p["offset_ns"]), int(p["bound_ns"])))
        except (KeyError, TypeError, ValueError):
            continue  # a hand-edited manifest: that probe is ignored, the packets still count
    return out


def analyze_bundle(root: Path) -> tuple[Analysis, dict[str, Any]]:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{root}: not a capture-all bundle ({exc})") from None
    with ExitStack() as stack:
        inputs = []
        for h in manifest.get("hosts", []):
            caps = h.get("captures", [])
            drops = [c.get("kernel_drops") for c in caps]
            files = []
            for c in caps:
                try:
                    files.append((c["interface"], stack.enter_context((root / c["path"]).open("rb"))))
                except OSError:
                    pass
            inputs.append(
                VantageInput(
                    name=h["name"],
                    role=h.get("role", "other"),
                    status="failed" if h.get("status") == "failed" else "ok",
                    error=h.get("error"),
                    captures=files,
                    kernel_drops=sum(d for d in drops if d) if any(d is not None for d in drops) else None,
                    facts=host_facts(root / h["name"], h.get("addresses", [])),
                    probes=_probes(h),
                )
            )
        result = analyze(_extract(inputs))
    report = to_json(result, manifest.get("flow", ""), f"capture-all {__version__}")
    return result, report


def analyze_pcaps(specs: list[str], inventory: Inventory | None) -> tuple[Analysis, dict[str, Any]]:
    """``HOST=FILE`` pairs: captures taken by hand. Roles and addresses come from the inventory
    when one is given; otherwise directions are inferred from the captures themselves."""
    hosts = {h.name: h for h in inventory.hosts} if inventory else {}
    with ExitStack() as stack:
        by_host: dict[str, VantageInput] = {}
        for spec in specs:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise UsageError(f"--pcap {spec!r}: expected HOST=FILE")
            try:
                fh = stack.enter_context(Path(path).open("rb"))
            except OSError as exc:
                raise UsageError(f"--pcap {spec!r}: {exc.strerror}") from None
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
        result = analyze(_extract(list(by_host.values())))
    return result, to_json(result, "", f"capture-all {__version__}")


def write_reports(root: Path, result: Analysis, report: dict[str, Any], flow: str) -> None:
    from orchestrator.bundle import Bundle

    b = Bundle(root)
    b.write("report.json", json.dumps(report, indent=2) + "\n")
    b.write("report.md", markdown(result, flow) + "\n")
