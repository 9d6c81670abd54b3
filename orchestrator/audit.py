"""capture-all audit: the idle-timeout chain along a flow's path, without capturing.

Each host of the plan is read over SSH with one read-only command (remote.scripts.AUDIT_SCRIPT:
its running HAProxy's config files, nginx -T, the kernel's keep-alive and conntrack timeouts);
what cannot be read there comes from the inventory (``idle_timeout``: a client pool's, an
application server's keep-alive). Then, hop by hop in path order (client, proxies, backends),
the side that reuses idle connections must give up on them before the side that closes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from analysis.timeouts import Pair, Timeout, duration_ms, haproxy_keepalive, nginx_timeouts, pairs
from orchestrator.plan import Plan
from remote import commands
from remote.errors import RemoteError
from remote.parse import parse_sections
from remote.transport import Connector

ROLE_ORDER = {"client": 0, "proxy": 2, "backend": 3}
_UNITS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class Audit:
    pairs: list[Pair] = field(default_factory=list)
    timeouts: list[Timeout] = field(default_factory=list)  # every value read or stated
    notes: list[str] = field(default_factory=list)  # hosts that could not be read, values not found


async def _read(plan: Plan, connector: Connector) -> dict[str, str | RemoteError]:
    out: dict[str, str | RemoteError] = {}

    async def one(h) -> None:  # type: ignore[no-untyped-def]
        try:
            with anyio.fail_after(h.target.connect_timeout + 40):
                t = await connector.connect(h.target)
                try:
                    res = await t.run(commands.audit(sudo=h.sudo))
                finally:
                    await t.close()
            out[h.name] = res.stdout
        except RemoteError as exc:
            out[h.name] = exc
        except TimeoutError:
            out[h.name] = RemoteError(h.name, "no answer within the audit's time")

    async with anyio.create_task_group() as tg:
        for h in plan.hosts:
            tg.start_soon(one, h)
    return out


async def audit(plan: Plan, connector: Connector, stated: dict[str, str | None]) -> Audit:
    """``stated``: each host's inventory idle_timeout."""
    got = await _read(plan, connector)
    result = Audit()
    port = plan.flow.server.port or 0
    chain: list[tuple[Timeout | None, Timeout | None]] = []
    hops = sorted((h for h in plan.hosts if h.role in ROLE_ORDER), key=lambda h: ROLE_ORDER[h.role])
    for h in hops:
        text = got.get(h.name)
        if isinstance(text, RemoteError):
            result.notes.append(f"{h.name}: not read ({text.message})")
            text = ""
        sections = parse_sections(text or "").sections
        mine = stated.get(h.name)
        ms = duration_ms(mine, _UNITS, "s") if mine else None
        inv = Timeout(h.name, "idle timeout", ms, f"inventory idle_timeout {mine}") if ms is not None else None
        reuse: Timeout | None = None
        close: Timeout | None = None
        if h.role == "client":
            reuse = Timeout(h.name, "connection pool idle timeout", inv.ms, inv.source) if inv else None
            if reuse is None:
                result.notes.append(f"{h.name}: no idle_timeout in the inventory: its pool's timeout cannot be read")
        elif h.role == "proxy":
            hap = sections.get("haproxy")
            ngx = sections.get("nginx")
            if hap is not None and hap.body.strip():
                ka = haproxy_keepalive(hap.body, port)
                if ka:
                    close = Timeout(h.name, "client-side keep-alive (HAProxy)", ka[0], ka[1])
                else:
                    result.notes.append(f"{h.name}: HAProxy's config has no frontend binding port {port}")
            elif ngx is not None and ngx.body.strip():
                t = nginx_timeouts(ngx.body)
                close = Timeout(h.name, "client-side keep-alive (nginx)", *t["keepalive_timeout"])
                reuse = Timeout(h.name, "upstream keep-alive (nginx)", *t["upstream keepalive_timeout"])
            else:
                result.notes.append(f"{h.name}: no running HAProxy or nginx found")
        else:  # backend
            close = Timeout(h.name, "keep-alive idle timeout", inv.ms, inv.source) if inv else None
            if close is None:
                result.notes.append(f"{h.name}: no idle_timeout in the inventory: the application's is not read")
        result.timeouts += [t for t in (reuse, close) if t is not None]
        chain.append((reuse, close))
    result.pairs = pairs(chain)
    return result
