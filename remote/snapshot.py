"""Pure parsers for what a host's snapshot files hold (``ss``, ``nstat``, ``ip``, conntrack): the
facts the analysis reads from ``before/`` and ``after/``. Nothing here does IO."""

from __future__ import annotations

import json
import re


def host_addresses(ip_addr_json: str, ip_link_json: str = "") -> tuple[set[str], set[bytes]]:
    """The host's own IPs (from ``ip -j addr``) and MACs (from ``ip -j link`` or addr)."""
    ips: set[str] = set()
    macs: set[bytes] = set()
    for text in (ip_addr_json, ip_link_json):
        try:
            data = json.loads(text) if text.strip() else []
        except ValueError:
            continue
        for link in data if isinstance(data, list) else []:
            mac = link.get("address") if isinstance(link, dict) else None
            if (
                isinstance(mac, str)
                and re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac)
                and mac != "00:00:00:00:00:00"
            ):
                macs.add(bytes.fromhex(mac.replace(":", "")))
            for a in link.get("addr_info", []) if isinstance(link, dict) else []:
                if isinstance(a, dict) and isinstance(a.get("local"), str):
                    ips.add(a["local"])
    return ips, macs


def parse_listeners(ss_tlnp: str) -> dict[int, set[int]]:
    """``ss -tlnp`` -> {port: PIDs of the processes listening there}. A changed PID set between
    the before and after snapshots means the listener restarted during the capture."""
    return {port: {pid for _, pid in procs} for port, procs in parse_listener_names(ss_tlnp).items()}


def _is_int(word: str) -> bool:
    return word.lstrip("-").isdigit()


def parse_nstat(text: str) -> dict[str, int]:
    """The kernel's counters -> {counter: absolute value}, named as ``nstat`` names them
    (``TcpOutRsts``, ``TcpExtTCPAbortOnData``, ``Ip6InReceives``), from what the snapshot reads:
    /proc/net/snmp and netstat (a line of names, then one of values, each after its ``Prefix:``)
    and snmp6 (a name and a value a line); or from ``nstat -asz`` (older bundles)."""
    out: dict[str, int] = {}
    names: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        parts = line.split()
        if not parts or line.startswith("#"):
            continue
        if parts[0].endswith(":"):
            prefix = parts[0][:-1]
            if names is not None and names[0] == prefix and all(_is_int(p) for p in parts[1:]):
                out.update({prefix + n: int(v) for n, v in zip(names[1], parts[1:], strict=False)})
                names = None
            else:
                names = (prefix, parts[1:])
        elif len(parts) >= 2 and _is_int(parts[1]):
            out[parts[0]] = int(parts[1])
    return out


_IFLINE_RE = re.compile(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:")


def parse_ip_s_link(text: str) -> dict[str, dict[str, int]]:
    """``ip -s link`` -> {interface: {"rx_dropped": N, "tx_dropped": N, "rx_missed": N, ...}}.
    The column names come from the header lines, so older and newer iproute2 both read."""
    out: dict[str, dict[str, int]] = {}
    iface = None
    header: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        m = _IFLINE_RE.match(line)
        if m:
            iface, header = m.group(1), None
            out[iface] = {}
            continue
        words = line.split()
        if iface is None or not words:
            continue
        if words[0] in ("RX:", "TX:"):
            header = (words[0][:2].lower(), words[1:])
            continue
        if header is not None and all(w.isdigit() for w in words):
            direction, names = header
            for name, value in zip(names, words, strict=False):
                out[iface][f"{direction}_{name}"] = int(value)
            header = None
    return out


def _endpoint(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]").split("%")[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, int(port)


_USER_RE = re.compile(r'\("([^"]*)",pid=(\d+)')


def parse_sockets(ss_text: str) -> dict[tuple[str, int, str, int], list[tuple[str, int]]]:
    """``ss -tnpi`` (or ``ss -tnp``) -> {(local ip, port, peer ip, port): [(command, pid), ...]}:
    which process owned each connection at snapshot time."""
    out: dict[tuple[str, int, str, int], list[tuple[str, int]]] = {}
    for line in ss_text.splitlines():
        if not line or line[0].isspace():
            continue  # the -i info line of the socket above
        parts = line.split()
        if len(parts) < 5 or parts[0] in ("State", "LISTEN"):
            continue
        local, peer = _endpoint(parts[3]), _endpoint(parts[4])
        if local is None or peer is None:
            continue
        out[(*local, *peer)] = [(name, int(pid)) for name, pid in _USER_RE.findall(line)]
    return out


def parse_listener_names(ss_tlnp: str) -> dict[int, list[tuple[str, int]]]:
    """``ss -tlnp`` -> {port: [(command, pid), ...]} of the listening processes."""
    out: dict[int, list[tuple[str, int]]] = {}
    for line in ss_tlnp.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "LISTEN":
            continue
        ep = _endpoint(parts[3])
        if ep is not None:
            out.setdefault(ep[1], []).extend((n, int(p)) for n, p in _USER_RE.findall(line))
    return out


_CT_TUPLE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def parse_conntrack(text: str) -> list[tuple[tuple[str, int, str, int], tuple[str, int, str, int]]]:
    """``conntrack -L`` or ``/proc/net/nf_conntrack`` lines -> [(the connection as its initiator
    named it, the same direction as it left the box)]: the original tuple, and the reply tuple
    reversed. They differ where the box translated (SNAT/masquerade, DNAT)."""
    out = []
    for line in text.splitlines():
        found = _CT_TUPLE.findall(line)
        if len(found) < 2:
            continue
        (a, b, ap, bp), (c, d, cp, dp) = found[0], found[1]
        out.append(((a, int(ap), b, int(bp)), (d, int(dp), c, int(cp))))
    return out


def parse_int(text: str) -> int | None:
    """A /proc value such as nf_conntrack_count (None when the file was missing)."""
    first = text.strip().split("\n", 1)[0].strip()
    return int(first) if first.isdigit() else None
