"""From inventory + flow to what each host will do: its legs, its filter, how to reach it."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.errors import UsageError
from orchestrator.flow import Endpoint, Flow, Leg, combine
from orchestrator.inventory import Host, Inventory, SshSettings
from remote.transport import JumpHost, SshTarget

# Roles that forward other boxes' packets: which legs cross them is topology the inventory does
# not describe, so they capture every leg of the flow (and report their conntrack translations).
TRANSLATING_ROLES = frozenset({"router", "nat", "firewall"})


@dataclass(frozen=True)
class HostPlan:
    name: str
    role: str
    target: SshTarget
    interfaces: tuple[str, ...]
    legs: tuple[Leg, ...]
    sudo: bool
    tmpdir: str
    notes: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    logs: tuple[str, ...] = ()  # files and journal=UNIT: their lines of the window come back
    idle_timeout: str | None = None  # the inventory's (a client pool's, an application's keep-alive)

    def bpf(self, exclusion: str | None) -> str:
        return combine(list(self.legs), exclusion)


@dataclass(frozen=True)
class Plan:
    flow: Flow
    legs: tuple[Leg, ...]
    hosts: tuple[HostPlan, ...]
    inventory_sha256: str = ""
    warnings: tuple[str, ...] = field(default=())


def _serves(host: Host, server: Endpoint) -> bool:
    return any(e == server or (e.port == server.port and e.ip.is_unspecified) for e in host.listen) or (
        server.ip in host.addresses and any(e.port == server.port for e in host.listen)
    )


def derive_legs(flow: Flow, inv: Inventory) -> list[Leg]:
    """The client leg, then every upstream leg opened by a host that serves a leg's server."""
    legs = [Leg("client leg", flow.server, flow.client)]
    queue = [flow.server]
    seen = {flow.server}
    while queue:
        server = queue.pop(0)
        for host in inv.hosts:
            if not _serves(host, server):
                continue
            for up in host.upstream:
                if up in seen:
                    continue
                seen.add(up)
                legs.append(Leg(f"upstream leg {len(legs)} ({host.name} -> {up})", up, None, host.name))
                queue.append(up)
    return legs


def _legs_for(host: Host, legs: list[Leg]) -> list[Leg]:
    if host.role in TRANSLATING_ROLES or not (host.addresses or host.listen or host.upstream):
        return legs
    mine = [
        leg
        for leg in legs
        if leg.opened_by == host.name
        or host.owns(leg.server.ip)
        or _serves(host, leg.server)
        or (leg.client is not None and host.owns(leg.client.ip))
    ]
    return mine


def _beyond_the_client(host: Host, legs: list[Leg]) -> list[Leg]:
    """Only the client itself pins the client's address and port: anywhere else a NAT (declared or
    not: a masquerading gateway, a pod's node, a cloud NAT) may have rewritten both, and a filter
    pinning them would capture nothing. Beyond the client a leg is captured by its server end, the
    one that survives source translation; the size and packet bounds still hold."""
    return [
        leg if leg.client is None or host.owns(leg.client.ip) else Leg(leg.name, leg.server, None, leg.opened_by)
        for leg in legs
    ]


def _config_port(name: str, address: str, ssh: SshSettings) -> int | None:
    """No port in the inventory: the one the user's ssh config gives (as `ssh ADDRESS` would)."""
    from remote.errors import RemoteError
    from remote.sshconfig import config_port

    files = (ssh.config_file,) if ssh.config_file else ()
    probe = SshTarget(name=name, host=address, user=ssh.user, config_files=files)
    try:
        return config_port(probe)
    except RemoteError as exc:
        raise UsageError(exc.message) from None


def _jumps(text: str | None) -> tuple[JumpHost, ...]:
    """'[user@]host[:port],...' (ssh -J's chain, first hop first)."""
    out = []
    for hop in (text or "").split(","):
        if not hop:
            continue
        user, _, rest = hop.rpartition("@")
        host, _, port = rest.partition(":")
        out.append(JumpHost(host, int(port) if port else 22, user or None))
    return tuple(out)


def build_plan(
    flow: Flow,
    inv: Inventory,
    *,
    inventory_sha256: str = "",
    only: list[str] | None = None,
    accept_new_host_keys: bool = False,
) -> Plan:
    legs = derive_legs(flow, inv)
    hosts = inv.hosts
    if only:
        unknown = [n for n in only if n not in {h.name for h in hosts}]
        if unknown:
            raise UsageError(f"--hosts: {', '.join(unknown)} not in the inventory")
        hosts = [h for h in hosts if h.name in only]
    warnings: list[str] = []
    plans: list[HostPlan] = []
    for h in hosts:
        ssh = inv.ssh.merged(h.ssh)
        mine = _legs_for(h, legs)
        notes: tuple[str, ...] = ()
        if not mine:
            warnings.append(f"{h.name}: on no leg of this flow by its addresses; capturing every leg there")
            mine = legs
            notes = ("on no leg by its inventory addresses: captures every leg",)
        target = SshTarget(
            name=h.name,
            host=h.address,
            port=ssh.port or _config_port(h.name, h.address, ssh) or 22,
            user=ssh.user,
            identity_files=(ssh.identity_file,) if ssh.identity_file else (),
            known_hosts=ssh.known_hosts,
            config_files=(ssh.config_file,) if ssh.config_file else (),
            jumps=_jumps(ssh.jump_host),
            connect_timeout=ssh.connect_timeout or 10.0,
            accept_new_host_key=accept_new_host_keys,
        )
        plans.append(
            HostPlan(
                name=h.name,
                role=h.role,
                target=target,
                interfaces=tuple(h.interfaces),
                legs=tuple(_beyond_the_client(h, mine)),
                sudo=bool(ssh.sudo),
                tmpdir=h.tmpdir or inv.capture.tmpdir,
                notes=notes,
                addresses=tuple(dict.fromkeys([str(a) for a in h.addresses] + [str(e.ip) for e in h.listen])),
                logs=tuple(h.logs),
                idle_timeout=h.idle_timeout,
            )
        )
    return Plan(flow, tuple(legs), tuple(plans), inventory_sha256, tuple(warnings))
