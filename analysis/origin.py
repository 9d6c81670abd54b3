"""Who emitted a reset: the origin rules and the evidence against a middlebox conviction (the
hosts' own kernel accounts, rule 4 and one contrary check, are read in ``analysis.kernel``).

Rules (DOMAIN.md), tried in order; the first that decides, decides (``ORIGIN_RULES``):
1. own_stack: seen *leaving* host X with one of X's own addresses as source, and not seen arriving
   at X first (a NAT box translating a reset into its own name only forwarded it): X built it.
2. forged_at: seen leaving X in B's name, never arriving at X, *while X's capture saw B's side of
   this connection arrive* (under any name): X forged it. Without that, X's silence proves
   nothing and the evidence says so.
3. injected: seen arriving in B's name while B's capture holds this connection (under B's name,
   learned through any NAT), with no kernel drops, and never shows it leaving: injected between
   the earliest vantage that saw it and B.
4. witness_silent: B's capture missed the connection, but B's kernel witness ran over the reset's
   time, lost nothing, and logged no send on any name B knows the connection by (that name must
   be known): injected between the earliest vantage and B's TCP stack.
Otherwise unknown, saying which vantage is missing.

Before a middlebox conviction stands, ``CONTRARY_CHECKS`` look for evidence against it: the RST's
TTL equal to B's genuine packets' at the same vantage, B's reset counters rising beyond what its
captures or witness account for, B's own kernel logging a reset on any name of the connection.
Any of them turns the verdict into unknown, with both sides stated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from analysis import kernel
from analysis.clock import Clocks
from analysis.correlate import Reset
from analysis.counters import deltas, owner
from analysis.evidence import Evidence, Fact, Origin, ev
from analysis.names import name_of, show
from analysis.world import World

_RESET_COUNTERS = ("TcpOutRsts",)


def _forwarded(r: Reset, vantage: str, before_ns: int) -> bool:
    return any(o.vantage == vantage and o.direction == "in" and o.ts_ns <= before_ns for o in r.seen)


# ---- the origin rules --------------------------------------------------------------------------
def own_stack(w: World, r: Reset) -> bool:
    for o in r.seen:
        if o.direction != "out" or o.seg.src not in w.v[o.vantage].facts.own_ips:
            continue
        if _forwarded(r, o.vantage, o.ts_ns):
            r.evidence.append(
                ev(
                    Fact.FORWARDED,
                    f"It arrived at {o.vantage} before leaving it ({o.iface}) as {show(name_of(o.seg))}: {o.vantage} "
                    f"only forwarded (translated) it.",
                    host=o.vantage,
                )
            )
            continue
        r.origin_kind, r.origin_host = Origin.HOST, o.vantage
        r.evidence.append(
            ev(
                Fact.SENT_BY_HOST,
                f"Seen leaving {o.vantage} ({o.iface}) with {o.vantage}'s own address {o.seg.src} as source: "
                f"{o.vantage}'s TCP stack built it.",
                host=o.vantage,
                iface=o.iface,
                src=o.seg.src,
            )
        )
        return True
    return False


def forged_at(w: World, r: Reset) -> bool:
    claimed = w.claimed(r)
    for o in r.seen:
        if o.direction != "out" or r.at(o.vantage, "in"):
            continue
        who = claimed or o.seg.src
        sides = w.genuine(o.vantage, name_of(o.seg), "in")
        if not sides:
            r.evidence.append(
                ev(
                    Fact.FORGERY_UNPROVEN,
                    f"Seen leaving {o.vantage} ({o.iface}) in the name of {who} ({o.seg.src}), but "
                    f"{o.vantage}'s capture never saw {who}'s side of this connection arrive (its filter or "
                    f"interfaces may "
                    f"not cover that "
                    f"side, or translated addresses): that it never arrived there proves nothing.",
                    host=o.vantage,
                    claimed=claimed,
                )
            )
            continue
        r.origin_kind, r.origin_host = Origin.MIDDLEBOX, o.vantage
        r.between = [w.owner.get(o.seg.dst, o.seg.dst), claimed or o.seg.src]
        r.evidence.append(
            ev(
                Fact.FORGED_AT,
                f"Seen leaving {o.vantage} ({o.iface}) in the name of {who} ({o.seg.src}), and never arriving at "
                f"{o.vantage}, which saw {len(sides)} of {who}'s genuine packets on this connection arrive: "
                f"{o.vantage} forged it.",
                host=o.vantage,
                claimed=claimed,
                genuine_packets=len(sides),
            )
        )
        return True
    return False


def injected(w: World, r: Reset) -> bool:
    claimed = w.claimed(r)
    earliest = r.seen[0].vantage
    src = r.tuple4[0]
    if claimed is None:
        r.evidence.append(
            ev(
                Fact.CLAIMED_UNOWNED,
                f"It claims to come from {src}, which no host of this run owns (not in the inventory, or left "
                f"out): cannot tell that host from the path to it.",
                src=src,
            )
        )
        return False
    b = w.v[claimed]
    if not b.captured:
        r.evidence.append(
            ev(
                Fact.CLAIMED_NOT_CAPTURED,
                f"{claimed} was not captured ({b.error or b.status}): cannot tell {claimed} from the path between "
                f"{earliest} and {claimed}.",
                host=claimed,
            )
        )
        return False
    at_b = w.flow(claimed, r.tuple4)
    if not at_b:
        r.evidence.append(
            ev(
                Fact.CLAIMED_SAW_NOTHING,
                f"{claimed}'s capture has no packet of this connection under any name it is known by (interface, "
                f"filter, or an address translation not learned): its silence proves nothing.",
                host=claimed,
            )
        )
        return False
    if b.kernel_drops:
        r.evidence.append(
            ev(
                Fact.CLAIMED_DROPPED,
                f"{claimed} captured this connection but its capture dropped {b.kernel_drops} packets: the missing "
                f"RST there may be a drop.",
                host=claimed,
                drops=b.kernel_drops,
            )
        )
        return False
    r.origin_kind, r.between = Origin.MIDDLEBOX, [earliest, claimed]
    r.evidence.append(
        ev(
            Fact.INJECTED,
            f"{claimed} captured this connection ({len(at_b)} packets, no kernel drops) and never sent this RST: "
            f"something between {earliest} and {claimed} injected it.",
            host=claimed,
            packets=len(at_b),
        )
    )
    receiver = r.seen[-1].vantage
    if receiver != earliest:
        r.evidence.append(
            ev(
                Fact.SEEN_FIRST_AT,
                f"It was seen first at {earliest}, then at {receiver}.",
                first=earliest,
                last=receiver,
            )
        )
    return True


ORIGIN_RULES: tuple[tuple[str, Callable[[World, Reset], bool]], ...] = (
    ("own_stack", own_stack),
    ("forged_at", forged_at),
    ("injected", injected),
)


def decide(w: World, r: Reset, clocks: Clocks) -> None:
    """Origin, the kernel witness's account, then the evidence against a middlebox conviction."""
    r.names = w.all_names(r)
    how = w.names.how(r.tuple4)
    if len(r.names) > 1:
        r.evidence.append(
            ev(
                Fact.TRANSLATED,
                f"One connection under {len(r.names)} names (address translation): "
                f"{'; '.join(show(n) for n in r.names)}; learned from {'; '.join(how)}.",
                names=[list(n) for n in r.names],
                how=how,
            )
        )
    for _name, rule in ORIGIN_RULES:
        if rule(w, r):
            break
    if r.origin_kind != Origin.HOST:
        _ttl(w, r)
    kernel.account(w, r, clocks)
    if r.origin_kind == Origin.MIDDLEBOX:
        _contrary(w, r, clocks)
    _owners(w, r)


# ---- the TTL ----------------------------------------------------------------------------------
def _ttl(w: World, r: Reset) -> Evidence | None:
    """Compare the RST's TTL/DF with the claimed sender's genuine packets at the receiver (under
    the name that vantage uses)."""
    who = w.claimed(r) or r.tuple4[0]
    for o in reversed(r.seen):
        if o.direction != "in":
            continue
        genuine = w.genuine(o.vantage, name_of(o.seg), "in")
        if not genuine:
            continue
        ttls = Counter(s.seg.ttl for s in genuine)
        usual = ", ".join(str(t) for t, _ in ttls.most_common())
        data = {"at": o.vantage, "rst_ttl": o.seg.ttl, "genuine_ttls": sorted(ttls), "claimed": who}
        if o.seg.ttl in ttls:
            found = ev(
                Fact.TTL_MATCHES,
                f"At {o.vantage} the RST's TTL ({o.seg.ttl}) matches {who}'s genuine "
                f"packets there (TTL {usual}): same path length as {who}.",
                **data,
            )
        else:
            found = ev(
                Fact.TTL_DIFFERS,
                f"At {o.vantage} the RST arrived with TTL {o.seg.ttl}, while {who}'s genuine "
                f"packets on this connection arrive there with TTL {usual}: it took a "
                f"different path.",
                **data,
            )
        r.evidence.append(found)
        dfs = {s.seg.df for s in genuine}
        if len(dfs) == 1 and o.seg.df not in dfs:
            r.evidence.append(
                ev(
                    Fact.DF_DIFFERS,
                    f"DF is {'set' if o.seg.df else 'clear'} on the RST but {'set' if dfs.pop() else 'clear'} on "
                    f"{who}'s genuine packets.",
                    at=o.vantage,
                    rst_df=o.seg.df,
                )
            )
        return found
    return None


# ---- evidence against a middlebox conviction ----------------------------------------------------
def _ttl_against(w: World, r: Reset, clocks: Clocks, claimed: str) -> Evidence | None:
    """At a receiver, the RST's TTL equals the claimed sender's genuine packets' (same path length)."""
    return next((e for e in r.evidence if e.kind == Fact.TTL_MATCHES), None)


def _counters_against(w: World, r: Reset, clocks: Clocks, claimed: str) -> Evidence | None:
    """The claimed sender's reset counters rose by more than the resets its captures (or, when it ran
    whole, its witness) account for during the window."""
    d = w.v.get(claimed)
    if d is None or not d.facts.counters_before or not d.facts.counters_after:
        return None
    rose = {k: v for k, v in deltas(d.facts).counters.items() if k in _RESET_COUNTERS and v > 0}
    if not rose:
        return None
    wit = d.witness
    if wit.ran and not wit.lost and wit.end_ns is not None:
        accounted, how = sum(1 for e in wit.events if e.kind == "send"), "its kernel witness logged"
    else:
        own = d.facts.own_ips
        accounted = len(
            {
                (s.seg.seq, s.seg.ack, s.seg.src)
                for s in d.segments
                if s.seg.flags & 0x04 and s.direction == "out" and s.seg.src in own
            }
        )
        how = "its captures show leaving it"
    extra = max(rose.values()) - accounted
    if extra <= 0:
        return None
    shown = ", ".join(f"{k} +{v}" for k, v in rose.items())
    return ev(
        Fact.COUNTERS_ROSE,
        f"{claimed}'s own reset counters rose during the capture ({shown}), {extra} more "
        f"than the {accounted} reset(s) {how}: it may have sent this one.",
        host=claimed,
        counters=rose,
        accounted=accounted,
    )


CONTRARY_CHECKS: tuple[tuple[str, Callable[[World, Reset, Clocks, str], Evidence | None]], ...] = (
    ("ttl_matches", _ttl_against),
    ("kernel_sent", kernel.against),
    ("counters_rose", _counters_against),
)


def _contrary(w: World, r: Reset, clocks: Clocks) -> None:
    claimed = w.claimed(r)
    if claimed is None:
        return
    against = [e for _n, check in CONTRARY_CHECKS if (e := check(w, r, clocks, claimed)) is not None]
    if not against:
        return
    for e in against:
        if e not in r.evidence:
            r.evidence.append(e)
    if r.origin_host:
        suspect, alternative = f"{r.origin_host} forging it", f"{r.origin_host} forged it"
    else:
        suspect, alternative = "an injection", f"it was injected between {' and '.join(r.between or [])}"
    r.blocked = against
    reasons = "; ".join((e.text[:1].lower() + e.text[1:]).rstrip(".") for e in against)
    r.evidence.append(
        ev(
            Fact.CONTRARY,
            f"The packets point to {suspect}, but {reasons}: "
            f"whether {claimed} sent it or {alternative} cannot be told.",
            claimed=claimed,
            suspect=r.origin_host,
            between=r.between,
            against=[str(e.kind) for e in against],
        )
    )
    r.origin_kind, r.origin_host, r.between = Origin.UNKNOWN, None, None


# ---- owners -----------------------------------------------------------------------------------
def _owners(w: World, r: Reset) -> None:
    """Which process owned each end of the reset connection, under the name that host knows it by."""
    for n in sorted(w.connection_names(r.tuple4)):
        host = w.owner.get(n[0])
        if host is None or host in r.owners:
            continue
        who = owner(w.v[host].facts, (n[0], n[1]), (n[2], n[3]))
        if who:
            r.owners[host] = f"{n[0]}:{n[1]} {who}"
    claimed = w.claimed(r)
    if r.origin_kind == Origin.MIDDLEBOX and claimed is not None:
        after = w.v[claimed].facts.sockets_after
        if any(n in after for n in w.known_names(r, claimed)):
            r.evidence.append(
                ev(
                    Fact.STILL_OPEN,
                    f"{claimed} still had this connection open after the capture (ss -tanpi): it never reset it.",
                    host=claimed,
                )
            )
