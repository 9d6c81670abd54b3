"""What every rule of the verdict looks things up in: the vantages, who owns which address, and
each vantage's segments by connection, under every name the connection has there."""

from __future__ import annotations

from analysis.correlate import Reset
from analysis.decode import RST
from analysis.model import Seen, VantageData
from analysis.names import Name, Names, key_of, learn, name_of, reverse

# The inventory roles of boxes that forward others' packets (orchestrator.plan.TRANSLATING_ROLES;
# the analysis imports nothing of the orchestrator).
_FORWARDING_ROLES = {"router", "nat", "firewall"}


class World:
    def __init__(self, vantages: list[VantageData]) -> None:
        self.v = {d.name: d for d in vantages}
        self.owner: dict[str, str] = {}
        for d in vantages:
            for ip in d.facts.own_ips:
                self.owner.setdefault(ip, d.name)
        self.names: Names = learn((s.vantage, s.iface, s.ts_ns, s.seg) for d in vantages for s in d.segments)
        # A translating box's own conntrack table says the same, where it was read (corroboration).
        for d in vantages:
            for original, translated in d.facts.translations:
                if original != translated:
                    self.names.join(original, translated, f"{d.name}'s conntrack table", corroborate=True)
        self._flows: dict[tuple[str, Name], list[Seen]] = {}
        for d in vantages:
            for s in d.segments:
                self._flows.setdefault((d.name, key_of(name_of(s.seg))), []).append(s)

    def exact(self, vantage: str, name: Name) -> list[Seen]:
        """The vantage's segments of this 4-tuple (both directions), in time order."""
        return self._flows.get((vantage, key_of(name)), [])

    def flow(self, vantage: str, name: Name) -> list[Seen]:
        """The vantage's segments of this connection under any of its names, in time order."""
        keys = self.names.keys(name)
        if len(keys) == 1:
            return self.exact(vantage, name)
        return sorted((s for k in keys for s in self._flows.get((vantage, k), [])), key=lambda s: s.ts_ns)

    def same_direction(self, s: Seen, name: Name) -> bool:
        return self.names.same_direction(name_of(s.seg), name)

    def genuine(self, vantage: str, name: Name, direction: str | None = None) -> list[Seen]:
        """Non-RST segments at the vantage travelling the way ``name`` does (any name of it)."""
        segs = self.flow(vantage, name)
        return [
            s
            for s in segs
            if not s.seg.flags & RST
            and self.same_direction(s, name)
            and (direction is None or s.direction == direction)
        ]

    def known_names(self, r: Reset, host: str) -> list[Name]:
        """The names the host's kernel and `ss` know this direction of the reset connection by, where
        the captures prove it: names the host's own capture holds; else, where a translation was
        learned, the names carrying the host's address that the RST's last receiver did not use
        (the far side of the NAT). A name merely carrying the host's address proves nothing: an
        unseen NAT may stand between (the host then knows the connection by another name)."""
        own = self.v[host].facts.own_ips if host in self.v else set()
        every = self.names.aliases(r.tuple4)
        mine = sorted(n for n in every if n[0] in own or n[2] in own)
        at_host = [n for n in mine if self.exact(host, n)]
        if at_host or len(every) < 2:
            return at_host
        last = r.seen[-1].vantage
        return [n for n in mine if not self.exact(last, n)]

    def claimed(self, r: Reset) -> str | None:
        """The host the RST claims to come from: the owner of its source address under any name.
        A box that only forwards (router, NAT, firewall: a DNAT VIP is its address) gives way to an
        endpoint whose own address is a name of the sender; a host the RST arrived at is not its
        sender (a masquerading NAT forwards the inside's resets in its own name)."""
        owners: list[str] = []
        for n in self.all_names(r):
            host = self.owner.get(n[0])
            if host is not None and host not in owners and not r.at(host, "in"):
                owners.append(host)
        ends = [h for h in owners if self.v[h].role not in _FORWARDING_ROLES]
        best = ends or owners
        return best[0] if best else None

    def all_names(self, r: Reset) -> list[Name]:
        """Every directed name of the RST's direction, the one it was first seen under first."""
        rest = sorted(n for n in self.names.aliases(r.tuple4) if n != r.tuple4)
        return [r.tuple4, *rest]

    def connection_names(self, name: Name) -> set[Name]:
        return self.names.aliases(name) | {reverse(n) for n in self.names.aliases(name)}
