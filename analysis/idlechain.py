"""The idle-timeout chain in a capture's report: the pairs read during the capture, and each
idle-reuse reset whose silence falls inside a violated pair's window linked to that pair (a
fact on the reset: the timeouts out of order explain it, and will again)."""

from __future__ import annotations

from typing import Any

from analysis.causes import fmt_s
from analysis.correlate import Reset
from analysis.evidence import Cause, Fact, ev
from analysis.timeouts import Chain, Pair, Timeout, explains


def _t(t: Timeout) -> dict[str, Any]:
    return {"host": t.host, "what": t.what, "ms": t.ms, "source": t.source}


CONNTRACK = "conntrack established timeout"


def _gap(r: Reset) -> int | None:
    """An idle reuse's silence: the reset's cause is idle_reuse (the packets' or its kernel's), or a
    middlebox forged it in answer to the first data after a silence (analysis.causes.reuse_gap)."""
    return r.idle_ns if str(r.cause) in (Cause.IDLE_REUSE, Cause.MIDDLEBOX) else None


def _closes(p: Pair, r: Reset) -> bool:
    """The pair's closer is the box that gave up on the connection: the reset's sender, or a
    NAT/firewall on the path that forgot it (its conntrack). A forged reset is the expiry only of
    the box that forged it, by its own timeout: never of another box, never of an unknown one."""
    if r.cause == Cause.MIDDLEBOX:
        return r.origin_host is not None and p.closer.host == r.origin_host and p.closer.what == CONNTRACK
    return p.closer.host == r.origin_host or p.closer.what == CONNTRACK


def link(resets: list[Reset], c: Chain) -> dict[str, Any]:
    """report.json's ``idle_chain``; the resets it explains get an ``idle_chain`` fact."""
    found = []
    for r in resets:
        gap = _gap(r)
        if gap is None:
            continue
        for i, p in enumerate(c.pairs):
            if not (explains(p, gap) and _closes(p, r)):
                continue
            rr, cc = p.reuser, p.closer
            r.evidence.append(ev(
                Fact.IDLE_CHAIN,
                f"The idle-timeout chain is out of order here: {rr.host}'s {rr.what} is {rr.ms / 1000:g} s "
                f"({rr.source}), {cc.host}'s {cc.what} {cc.ms / 1000:g} s ({cc.source}). This connection was "
                f"reused after {fmt_s(gap)} of silence, inside that window: {cc.host} had given up on it while "
                f"{rr.host} still kept it. It will happen again until {rr.host}'s is the shorter.",
                pair=i, idle_ns=gap, reuser=_t(rr), closer=_t(cc),
            ))  # fmt: skip
            if r.cause == Cause.MIDDLEBOX:
                # The box forged it because it had forgotten the connection: that is the cause.
                r.cause = Cause.IDLE_EXPIRY
                r.evidence.append(ev(
                    Fact.CAUSE,
                    f"{cc.host} forgot this connection after {cc.ms / 1000:g} s idle ({cc.what}, {cc.source}) and "
                    f"reset its reuse, {fmt_s(gap)} after its last data, in the peer's name; {rr.host} still "
                    f"kept it ({rr.what} {rr.ms / 1000:g} s, {rr.source}).",
                    cause=str(Cause.IDLE_EXPIRY), idle_ns=gap, closer=_t(cc), reuser=_t(rr),
                ))  # fmt: skip
            found.append({"reset_id": r.id, "pair": i, "idle_ns": gap})
            break
    return {
        "pairs": [{"reuser": _t(p.reuser), "closer": _t(p.closer), "ok": p.ok, "text": p.text()} for p in c.pairs],
        "notes": c.notes,
        "explains": found,
    }
