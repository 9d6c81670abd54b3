"""capture-all audit: the idle-timeout chain along a flow's path, without capturing.

Each host of the plan is read over SSH with one read-only command (remote.scripts.AUDIT_SCRIPT:
its running HAProxy's config files, nginx -T, the kernel's keep-alive and conntrack timeouts);
what cannot be read there comes from the inventory (``idle_timeout``: a client pool's, an
application server's keep-alive). The chain itself is analysis.timeouts.chain: the same one a
capture's report holds, from the same readings taken during the capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from analysis.timeouts import HopInput, Pair, Timeout, chain
from orchestrator.plan import Plan
from remote import commands
from remote.errors import RemoteError
from remote.parse import parse_sections
from remote.transport import Connector


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
    hops = []
    for h in plan.hosts:
        text = got.get(h.name)
        if isinstance(text, RemoteError):
            hops.append(HopInput(h.name, h.role, stated.get(h.name), None, text.message))
        else:
            body = {k: v.body for k, v in parse_sections(text or "").sections.items()}
            hops.append(HopInput(h.name, h.role, stated.get(h.name), body))
    c = chain(hops, plan.flow.server.port or 0)
    return Audit(c.pairs, c.timeouts, c.notes)
