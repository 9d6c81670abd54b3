"""The idle-timeout chain: each hop's idle timeouts, read from where they can be read without side
effects (HAProxy's and nginx's configs, the kernel's sysctls) or stated in the inventory, and the
inequality along the path: whoever reuses an idle connection must give up on it before the side
that may close it does. A client pool that keeps idle connections 5 s toward a proxy that closes
them after 2 s reuses closed connections: the reset that follows is the idle-reuse reset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HAPROXY_UNITS: dict[str, float] = {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_NGINX_UNITS: dict[str, float] = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
NGINX_DEFAULTS_MS = {"keepalive_timeout": 75_000, "upstream keepalive_timeout": 60_000}


@dataclass
class Timeout:
    host: str
    what: str  # e.g. "client-side keep-alive"
    ms: float
    source: str  # where the value came from (a config file and its line, a sysctl, the inventory)


def duration_ms(text: str, units: dict[str, float], default_unit: str) -> float | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", text.strip())
    if not m:
        return None
    unit = m[2] or default_unit
    return float(m[1]) * units[unit] if unit in units else None


def haproxy_keepalive(config: str, port: int) -> tuple[float, str] | None:
    """The client-side keep-alive timeout of the HAProxy frontend (or listen) that binds ``port``:
    its ``timeout http-keep-alive``, else its ``timeout http-request`` (HAProxy's fallback), each
    the section's own or else from the defaults section before it. (ms, where it came from)."""

    @dataclass
    class Section:
        kind: str
        own: dict[str, tuple[float, str]]
        inherited: dict[str, tuple[float, str]]
        ports: set[int]

    sections: list[Section] = []
    defaults: dict[str, tuple[float, str]] = {}
    current: dict[str, tuple[float, str]] | None = None
    path, n = "haproxy config", 0
    for raw in config.splitlines():
        n += 1  # the line's number in its own file
        if raw.startswith("# capture-all file: "):
            path, n = raw[len("# capture-all file: ") :].strip(), 0
            continue
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "defaults":
            defaults = {}
            current = defaults
        elif words[0] in ("global", "frontend", "listen", "backend", "resolvers", "peers", "userlist", "cache"):
            sections.append(Section(words[0], {}, dict(defaults), set()))
            current = sections[-1].own
        elif current is not None and words[0] == "timeout" and len(words) >= 3:
            ms = duration_ms(words[2], _HAPROXY_UNITS, "ms")
            if ms is not None:
                current[words[1]] = (ms, f"{path}:{n} (timeout {words[1]} {words[2]})")
        elif words[0] == "bind" and len(words) >= 2 and sections and current is sections[-1].own:
            m = re.search(r":(\d+)$", words[1])
            if m:
                sections[-1].ports.add(int(m[1]))
    for sec in sections:
        if sec.kind in ("frontend", "listen") and port in sec.ports:
            for key in ("http-keep-alive", "http-request"):
                for values in (sec.own, sec.inherited):
                    if key in values:
                        return values[key]
    return None


def nginx_timeouts(config: str) -> dict[str, tuple[float, str]]:
    """nginx -T: keepalive_timeout (client side) and the upstream blocks' keepalive_timeout, with
    nginx's defaults where the config sets none."""
    out: dict[str, tuple[float, str]] = {}
    path, depth, upstream_depth, n = "nginx -T", 0, None, 0
    for raw in config.splitlines():
        n += 1
        if raw.startswith("# configuration file "):
            path, n = raw[len("# configuration file ") :].rstrip(":"), 0
            continue
        line = raw.split("#", 1)[0].strip()
        if re.match(r"upstream\s+\S+\s*\{", line):
            upstream_depth = depth
        m = re.match(r"keepalive_timeout\s+([^\s;]+)(?:\s+[^\s;]+)?\s*;", line)
        if m:
            ms = duration_ms(m[1], _NGINX_UNITS, "s")
            key = "upstream keepalive_timeout" if upstream_depth is not None else "keepalive_timeout"
            if ms is not None:
                out[key] = (ms, f"{path}:{n} ({line})")
        depth += line.count("{") - line.count("}")
        if upstream_depth is not None and depth <= upstream_depth:
            upstream_depth = None
    for key, ms in NGINX_DEFAULTS_MS.items():
        out.setdefault(key, (float(ms), f"nginx's default {key} ({ms // 1000:d}s)"))
    return out


@dataclass
class Pair:
    reuser: Timeout  # the side that keeps idle connections and reuses them
    closer: Timeout  # the side that may close them when idle
    ok: bool

    def text(self) -> str:
        rel = "<" if self.ok else ">="
        verdict = "in order" if self.ok else "VIOLATED: idle connections are reused after the other side closed them"
        r, c = self.reuser, self.closer
        return (f"{r.host} {r.what} {r.ms / 1000:g} s ({r.source}) {rel} {c.host} {c.what} {c.ms / 1000:g} s "
                f"({c.source}): {verdict}")  # fmt: skip


def pairs(chain: list[tuple[Timeout | None, Timeout | None]]) -> list[Pair]:
    """``chain``: per hop along the path, (its idle timeout toward the next hop as the reuser, its
    idle timeout toward the previous hop as the closer). Each hop's reuser side must be shorter
    than the next hop's closer side."""
    out = []
    for (reuse, _), (_, close) in zip(chain, chain[1:], strict=False):
        if reuse is not None and close is not None:
            out.append(Pair(reuse, close, reuse.ms < close.ms))
    return out


ROLE_ORDER = {"client": 0, "proxy": 2, "backend": 3}
TRANSLATING = ("router", "nat", "firewall")
_UNITS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class HopInput:
    """One host as the chain needs it: its role, the inventory's idle_timeout, and what the
    host's read-only readings said (sections ``sysctl``, ``haproxy``, ``nginx``; empty where it
    was not read)."""

    name: str
    role: str
    stated: str | None = None
    sections: dict[str, str] | None = None
    unread: str | None = None  # why it could not be read


@dataclass
class Chain:
    pairs: list[Pair]
    timeouts: list[Timeout]
    notes: list[str]


def _sysctl(text: str, key: str) -> float | None:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().isdigit():
            return float(v.strip()) * 1000
    return None


def chain(hops: list[HopInput], port: int) -> Chain:
    """The idle-timeout chain along the path (client, proxies, backends), hop by hop: each hop's
    reuser side must give up before the next hop's closer side; and the client's pool before any
    NAT, firewall or router on the path forgets the connection (its conntrack established
    timeout)."""
    notes: list[str] = []
    timeouts: list[Timeout] = []
    links: list[tuple[Timeout | None, Timeout | None]] = []
    client_pool: Timeout | None = None
    for h in sorted((h for h in hops if h.role in ROLE_ORDER), key=lambda h: ROLE_ORDER[h.role]):
        if h.unread:
            notes.append(f"{h.name}: not read ({h.unread})")
        sections = h.sections or {}
        ms = duration_ms(h.stated, _UNITS, "s") if h.stated else None
        inv = Timeout(h.name, "idle timeout", ms, f"inventory idle_timeout {h.stated}") if ms is not None else None
        reuse: Timeout | None = None
        close: Timeout | None = None
        if h.role == "client":
            reuse = Timeout(h.name, "connection pool idle timeout", inv.ms, inv.source) if inv else None
            if reuse is None:
                notes.append(f"{h.name}: no idle_timeout in the inventory: its pool's timeout cannot be read")
            client_pool = client_pool or reuse
        elif h.role == "proxy":
            hap, ngx = sections.get("haproxy", ""), sections.get("nginx", "")
            if hap.strip():
                ka = haproxy_keepalive(hap, port)
                if ka:
                    close = Timeout(h.name, "client-side keep-alive (HAProxy)", ka[0], ka[1])
                else:
                    notes.append(f"{h.name}: HAProxy's config has no frontend binding port {port}")
            elif ngx.strip():
                t = nginx_timeouts(ngx)
                close = Timeout(h.name, "client-side keep-alive (nginx)", *t["keepalive_timeout"])
                reuse = Timeout(h.name, "upstream keep-alive (nginx)", *t["upstream keepalive_timeout"])
            elif not h.unread:
                notes.append(f"{h.name}: no running HAProxy or nginx found")
        else:  # backend
            close = Timeout(h.name, "keep-alive idle timeout", inv.ms, inv.source) if inv else None
            if close is None:
                notes.append(f"{h.name}: no idle_timeout in the inventory: the application's is not read")
        timeouts += [t for t in (reuse, close) if t is not None]
        links.append((reuse, close))
    found = pairs(links)
    for h in hops:
        if h.role not in TRANSLATING:
            continue
        key = "net/netfilter/nf_conntrack_tcp_timeout_established"
        ms = _sysctl((h.sections or {}).get("sysctl", ""), key)
        if ms is None:
            if not h.unread:
                notes.append(f"{h.name}: no conntrack established timeout (no nf_conntrack loaded there)")
            continue
        ct = Timeout(h.name, "conntrack established timeout", ms, f"sysctl {key.replace('/', '.')}")
        timeouts.append(ct)
        if client_pool is not None:
            found.append(Pair(client_pool, ct, client_pool.ms < ct.ms))
    return Chain(found, timeouts, notes)


def explains(pair: Pair, idle_ns: int) -> bool:
    """An idle reuse after ``idle_ns`` of silence falls in the pair's violating window: the
    closer had given up on the connection (silence at least its timeout) while the reuser still
    kept it (silence below the reuser's)."""
    return not pair.ok and pair.closer.ms * 1e6 <= idle_ns < pair.reuser.ms * 1e6
