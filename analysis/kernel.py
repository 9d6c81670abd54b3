"""The hosts' own kernel accounts in the verdict: the kernel reset witness read next to the packets.

- A receiver's ``tcp_receive_reset`` on the name it knows the connection by: its stack took it.
- The sender's ``tcp_send_reset`` on the name it knows: proof of origin, and why (its reason).
  With no capture showing the reset leave its sender but aligned clocks, the event alone names it.
- Its absence counts only where the witness ran over the reset's time, lost nothing, and the name
  the sender would have logged is known (``World.known_names``): then it is evidence of forgery
  (or, for a reset seen leaving the host with its address, of a firewall rule on the host).
- ``against``: the claimed sender's kernel logged a reset on *any* name of the connection near
  then: evidence against a middlebox conviction.
"""

from __future__ import annotations

from analysis.clock import Clocks
from analysis.correlate import Reset
from analysis.evidence import Evidence, Fact, Origin, ev
from analysis.names import Name, name_of, show
from analysis.witness import KernelEvent
from analysis.world import World

# A witness event and a packet of the same host are on one clock (the trace clock is mapped onto
# the capture clock within microseconds); the kernel logs a reset microseconds from its packet.
KERNEL_MATCH_NS = 50_000_000
# For a reset not seen at the claimed sender, its time there is only as good as the clocks.
KERNEL_ABSENT_NS = 2_000_000_000

REASON_TEXT = {
    "NO_SOCKET": "no socket for this 4-tuple (nothing listening, or the connection was already gone)",
    "TCP_TIMEWAIT_SOCKET": "a segment arrived for a connection it had already closed (TIME_WAIT)",
    "TCP_ABORT_ON_CLOSE": "the application closed the socket with unread data",
    "TCP_ABORT_ON_DATA": "data arrived after the application had closed the socket",
    "TCP_ABORT_ON_LINGER": "the FIN_WAIT2 linger time ran out",
    "TCP_STATE": "the application aborted the connection (close with SO_LINGER 0, or a disconnect)",
    "TCP_KEEPALIVE_TIMEOUT": "its keepalive probes went unanswered",
    "TCP_ABORT_ON_MEMORY": "out of socket memory",
    "TCP_DISCONNECT_WITH_DATA": "a disconnect with data still queued",
    "NOT_SPECIFIED": "no reason given",
}


def _nearest(events: list[KernelEvent], t: int, within: float) -> KernelEvent | None:
    best = min(events, key=lambda e: abs(e.ts_ns - t), default=None)
    return best if best is not None and abs(best.ts_ns - t) <= within else None


def _aligned(clocks: Clocks, *hosts: str) -> bool:
    return all(clocks.method.get(h, "none") != "none" for h in hosts)


def _sender_window(w: World, r: Reset, sender: str, clocks: Clocks) -> tuple[int, float]:
    """When the reset went by at the sender, and how far off that may be."""
    out = r.at(sender, "out")
    if out:
        return out[0].ts_ns, KERNEL_MATCH_NS
    aligned = _aligned(clocks, sender, r.seen[0].vantage)
    return r.seen[0].ts_ns, (KERNEL_ABSENT_NS if aligned else float("inf"))


def _sends(w: World, r: Reset, sender: str) -> tuple[list[Name], list[KernelEvent]]:
    """The names the sender knows this direction by, and its send events on any of them."""
    out = r.at(sender, "out")
    names = [name_of(out[0].seg)] if out else w.known_names(r, sender)
    wit = w.v[sender].witness
    return names, [e for n in names for e in wit.sends(n)]


def account(w: World, r: Reset, clocks: Clocks) -> None:
    """The hosts' own kernel accounts next to the packets: the receivers' tcp_receive_reset, the
    sender's tcp_send_reset (proof of origin, and why), or its absence where it means something."""
    for o in r.seen:
        if o.direction == "in":
            mine = [e for e in w.v[o.vantage].witness.events if e.kind == "receive" and e.tuple4() == name_of(o.seg)]
            got = _nearest(mine, o.ts_ns, KERNEL_MATCH_NS)
            if got is not None and all(h != o.vantage for h, _ in r.kernel_received):
                r.kernel_received.append((o.vantage, got))
    sender = r.origin_host if r.origin_kind == Origin.HOST else w.claimed(r)
    if sender is None or sender not in w.v or not w.v[sender].witness.ran:
        return
    wit = w.v[sender].witness
    t, within = _sender_window(w, r, sender, clocks)
    names, sends = _sends(w, r, sender)
    sent = _nearest(sends, t, within)
    if sent is not None:
        r.kernel_sent = (sender, sent)
        why = f": {REASON_TEXT.get(sent.reason, sent.reason.lower())}" if sent.reason else ""
        reason = f" with reason {sent.reason}{why}" if sent.reason else " (this kernel logs no reason)"
        name = f" (as {show(sent.tuple4())})" if sent.tuple4() != r.tuple4 else ""
        r.evidence.append(
            ev(
                Fact.KERNEL_SENT,
                f"{sender}'s kernel logged sending it{name} (tcp_send_reset){reason}; {sent.who()}.",
                host=sender,
                reason=sent.reason,
            )
        )
        if r.origin_kind == Origin.UNKNOWN and within != float("inf"):
            # No capture shows it leaving its sender, but the sender's own kernel logged it.
            r.origin_kind, r.origin_host = Origin.HOST, sender
        return
    if wit.lost:
        r.evidence.append(
            ev(
                Fact.WITNESS_LOST,
                f"{sender}'s kernel witness logged no send for it, but lost "
                f"{wit.lost} events (buffer full): its silence proves nothing.",
                host=sender,
                lost=wit.lost,
            )
        )
        return
    if not names:
        r.evidence.append(
            ev(
                Fact.WITNESS_UNKNOWN_TUPLE,
                f"{sender}'s kernel witness ran, but the name {sender} knows this connection by is not known (its "
                f"capture did not see it and no translation to its address was learned): its silence proves nothing.",
                host=sender,
            )
        )
        return
    # The witness must have been running when the reset went by. On unaligned clocks its time at
    # the sender is unknown: the witness ran over the whole capture (it starts before tcpdump and
    # stops after), and the reset was captured, so only a witness that stopped early is doubted.
    if within != float("inf") and not wit.covers(t):
        return
    if within == float("inf") and wit.end_ns is None:
        return
    r.witness_absent = sender
    shown = " or ".join(show(n) for n in names)
    if r.origin_kind == Origin.HOST:
        r.evidence.append(
            ev(
                Fact.WITNESS_SILENT_HOST,
                f"{sender}'s kernel witness was running and logged no tcp_send_reset for it: {sender}'s TCP stack did "
                f"not build it; a firewall rule on {sender} (nftables/iptables `reject with tcp-reset`) or a raw "
                f"socket did.",
                host=sender,
            )
        )
        return
    r.evidence.append(
        ev(
            Fact.WITNESS_SILENT,
            f"{sender}'s kernel witness was running and logged no tcp_send_reset "
            f"for {shown}: {sender}'s TCP stack never sent it.",
            host=sender,
            names=[list(n) for n in names],
        )
    )
    if r.origin_kind == Origin.UNKNOWN:
        earliest = r.seen[0].vantage
        r.origin_kind, r.between = Origin.MIDDLEBOX, [earliest, sender]
        r.evidence.append(
            ev(
                Fact.INJECTED,
                f"So something between {earliest} and {sender}'s TCP stack injected it (a box on the path, or a "
                f"firewall rule on {sender} itself).",
                host=sender,
                by="witness",
            )
        )


def against(w: World, r: Reset, clocks: Clocks, claimed: str) -> Evidence | None:
    """The claimed sender's kernel logged a reset on this connection, under any name, near then."""
    if claimed not in w.v or not w.v[claimed].witness.ran:
        return None
    conn = w.connection_names(r.tuple4)
    own = w.v[claimed].facts.own_ips
    t, within = _sender_window(w, r, claimed, clocks)
    sends = [e for e in w.v[claimed].witness.events if e.kind == "send" and e.tuple4() in conn and e.src in own]
    sent = _nearest(sends, t, max(within, KERNEL_ABSENT_NS) if within != float("inf") else within)
    if sent is None:
        return None
    return ev(
        Fact.KERNEL_CONTRADICTS,
        f"{claimed}'s own kernel logged sending a reset on this connection "
        f"({show(sent.tuple4())}, tcp_send_reset{', ' + sent.reason if sent.reason else ''}).",
        host=claimed,
        reason=sent.reason,
    )
