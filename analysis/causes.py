"""Why a host reset a connection: the cause rules, from the packets, then the kernel's own reason.

Rules (DOMAIN.md "Causes to recognise"), as a table (``CAUSE_RULES``): each row is a cause and a
function of the facts at the sender (its own view of the connection, that incarnation only) that
returns the evidence when the pattern matches; the first match wins. Before them: a host that had
taken a reset on the connection before sending this one (``after_reset``) no longer held it, and
its reset is that one's aftermath: no pattern is read into it. Then the sender's kernel
reason (``tcp_send_reset``) confirms it (``AGREES``) or, when it contradicts it or the packets found
nothing, names it (``REASON_CAUSE``): the sender's own kernel is the better witness of why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from analysis.correlate import Reset
from analysis.counters import deltas
from analysis.decode import ACK, FIN, RST, SYN
from analysis.evidence import Cause, Evidence, Fact, Origin, ev
from analysis.model import Seen, VantageData
from analysis.names import key_of, name_of
from analysis.scan import conn_hash
from analysis.world import World

IDLE_GAP_NS = 1_000_000_000  # a silence this long before reused data counts as "idle"
ANSWER_NS = 200_000_000  # an RST within this of the peer's segment answers it
CHALLENGE_NS = 2_000_000_000  # a challenge ACK answers the SYN it follows within this

# The cause a kernel reason stands for, when the packets matched no pattern (or contradict it).
REASON_CAUSE = {
    "TCP_TIMEWAIT_SOCKET": Cause.IDLE_REUSE,
    "TCP_ABORT_ON_CLOSE": Cause.UNREAD_DATA_CLOSE,
    "TCP_ABORT_ON_DATA": Cause.UNREAD_DATA_CLOSE,
    "TCP_STATE": Cause.APP_ABORT,
    "TCP_ABORT_ON_LINGER": Cause.APP_ABORT,
    "TCP_DISCONNECT_WITH_DATA": Cause.APP_ABORT,
    "TCP_KEEPALIVE_TIMEOUT": Cause.KEEPALIVE_TIMEOUT,
    "TCP_ABORT_ON_MEMORY": Cause.CAPACITY,
}
# Kernel reasons that agree with a cause found from the packets.
AGREES = {
    Cause.IDLE_REUSE: {"TCP_TIMEWAIT_SOCKET", "NO_SOCKET"},
    Cause.PEER_RESTART: {"NO_SOCKET", "TCP_TIMEWAIT_SOCKET", "TCP_ABORT_ON_CLOSE", "TCP_STATE"},
    Cause.UNREAD_DATA_CLOSE: {"TCP_ABORT_ON_CLOSE", "TCP_ABORT_ON_DATA"},
    Cause.REFUSED: {"NO_SOCKET"},
    Cause.CAPACITY: {"NO_SOCKET", "TCP_ABORT_ON_MEMORY"},
    Cause.CHALLENGE_ACK: {"NO_SOCKET"},
    Cause.PROXY_POLICY: {
        "TCP_STATE",
        "TCP_ABORT_ON_CLOSE",
        "TCP_ABORT_ON_DATA",
        "TCP_ABORT_ON_LINGER",
        "TCP_KEEPALIVE_TIMEOUT",
        "TCP_DISCONNECT_WITH_DATA",
    },
}


def fmt_s(ns: int) -> str:
    return f"{ns / 1e9:.3f} s" if ns < 10 * 10**9 else f"{ns / 1e9:.0f} s"


@dataclass
class Facts:
    """The sender's own view of the reset connection, up to the reset."""

    w: World
    r: Reset
    host: str
    d: VantageData
    sent: Seen  # the RST leaving the host
    every: list[Seen]  # every segment of its 4-tuple before the RST, any incarnation
    before: list[Seen]  # the same, this incarnation only
    peer: list[Seen]  # of those, the peer's
    mine: list[Seen]  # and the host's own
    restart: str  # the listener's PID change, if any
    overflow: list[str]  # capacity counters that grew

    @property
    def last_peer(self) -> Seen | None:
        return self.peer[-1] if self.peer else None

    @property
    def answers_syn(self) -> bool:
        p = self.last_peer
        return bool(p and p.seg.flags & SYN and not p.seg.flags & ACK and not any(s.seg.flags & SYN for s in self.mine))


def facts(w: World, r: Reset) -> Facts | None:
    if r.origin_kind != Origin.HOST or r.origin_host is None or not r.at(r.origin_host, "out"):
        return None
    h = r.origin_host
    d = w.v[h]
    sent = r.at(h, "out")[0]
    name = name_of(sent.seg)
    every = [s for s in w.exact(h, name) if s.ts_ns <= sent.ts_ns and s is not sent and not s.seg.flags & RST]
    before = every
    if r.isn is not None:
        # This incarnation: from its SYN on (a 4-tuple reused by a new handshake is a new connection).
        start = next(
            (s.ts_ns for s in every if s.seg.flags & SYN and not s.seg.flags & ACK and s.seg.seq == r.isn), None
        )
        before = [s for s in every if start is None or s.ts_ns >= start]
    counted = deltas(d.facts)
    overflow = [f"{k} +{v}" for k, v in counted.listen_overflow.items()]
    if counted.conntrack_near_full:
        overflow.append(counted.conntrack_near_full)
    return Facts(
        w,
        r,
        h,
        d,
        sent,
        every,
        before,
        peer=[s for s in before if s.seg.src != sent.seg.src],
        mine=[s for s in before if s.seg.src == sent.seg.src],
        restart=_listener_change(d, sent.seg.sport),
        overflow=overflow,
    )


def _listener_change(d: VantageData, port: int) -> str:
    before, after = d.facts.listeners_before.get(port), d.facts.listeners_after.get(port)
    if before and after and before != after:
        return f"PID {', '.join(map(str, sorted(before)))} before, {', '.join(map(str, sorted(after)))} after"
    if before and not after and d.facts.listeners_after:
        return f"PID {', '.join(map(str, sorted(before)))} before, nothing listening after"
    return ""


def _cause(cause: Cause, text: str, **data: object) -> Evidence:
    return ev(Fact.CAUSE, text, cause=str(cause), **data)


# ---- the rules --------------------------------------------------------------------------------
def challenge_ack(f: Facts) -> Evidence | None:
    """RFC 5961: the host sent a new SYN on a 4-tuple the peer still held; the peer answered with
    an ACK of the old connection (a challenge ACK), and the host's stack reset that old one."""
    mine = [s for s in f.every if s.seg.src == f.sent.seg.src]
    theirs = [s for s in f.every if s.seg.src != f.sent.seg.src]
    if not mine or not theirs:
        return None
    syn, ack = mine[-1], theirs[-1]
    if not (syn.seg.flags & SYN and not syn.seg.flags & ACK) or ack.ts_ns < syn.ts_ns:
        return None
    if ack.seg.flags & (SYN | RST) or not ack.seg.flags & ACK or ack.seg.ack == (syn.seg.seq + 1) % (1 << 32):
        return None
    if f.sent.seg.seq != ack.seg.ack or f.sent.ts_ns - syn.ts_ns > CHALLENGE_NS:
        return None
    return _cause(
        Cause.CHALLENGE_ACK,
        f"It answers a challenge ACK (RFC 5961): {f.host} opened a new connection on this 4-tuple (SYN seq "
        f"{syn.seg.seq}), the peer answered with an ACK of an older connection it still held (ack {ack.seg.ack}), "
        f"and {f.host}'s stack reset that older connection, as it should. The new connection is another one.",
        syn_seq=syn.seg.seq,
        challenge_ack=ack.seg.ack,
    )


def capacity(f: Facts) -> Evidence | None:
    if not f.answers_syn or not f.overflow:
        return None
    return _cause(
        Cause.CAPACITY,
        f"It answers a SYN while {f.host} was out of capacity during the capture ({', '.join(f.overflow)}).",
        counters=f.overflow,
    )


def restart_on_syn(f: Facts) -> Evidence | None:
    if not f.answers_syn or not f.restart:
        return None
    return _cause(
        Cause.PEER_RESTART,
        f"It answers a SYN to port {f.sent.seg.sport} while the listener there restarted ({f.restart}).",
        listener=f.restart,
    )


def refused(f: Facts) -> Evidence | None:
    if not f.answers_syn:
        return None
    return _cause(
        Cause.REFUSED,
        f"It answers a SYN to port {f.sent.seg.sport}: connection refused, nothing "
        f"listening there (not a reset of an established connection).",
        port=f.sent.seg.sport,
    )


def peer_restart(f: Facts) -> Evidence | None:
    if not f.restart:
        return None
    return _cause(
        Cause.PEER_RESTART,
        f"The listener on port {f.sent.seg.sport} restarted during the capture "
        f"({f.restart}); this connection was open across the restart.",
        listener=f.restart,
    )


def proxy_policy(f: Facts) -> Evidence | None:
    if f.d.role != "proxy":
        return None
    upstream = _upstream_health(f)
    if upstream is None:
        return None
    return _cause(
        Cause.PROXY_POLICY,
        f"{f.host} is a proxy and reset this connection itself, without having "
        f"received a reset: {upstream}. Its own policy or timeout decided it (its log "
        f"says which).",
    )


def idle_reuse(f: Facts) -> Evidence | None:
    last = f.last_peer
    if last is None or not last.seg.payload_len or f.sent.ts_ns - last.ts_ns > ANSWER_NS:
        return None
    # Silence = time since the last payload either way (ACKs of a FIN are not activity).
    earlier = [s for s in f.before if s.ts_ns < last.ts_ns and s.seg.payload_len]
    if not earlier or last.ts_ns - earlier[-1].ts_ns < IDLE_GAP_NS:
        return None
    gap = last.ts_ns - earlier[-1].ts_ns
    my_fin = [s for s in f.mine if s.seg.flags & FIN and s.ts_ns < last.ts_ns]
    fin = (
        f"; {f.host} had closed it with a FIN {fmt_s(last.ts_ns - my_fin[-1].ts_ns)} before (its idle timeout)"
        if my_fin
        else ""
    )
    return _cause(
        Cause.IDLE_REUSE,
        f"It answers the peer's first data ({last.seg.payload_len} bytes) after "
        f"{fmt_s(gap)} of silence on this connection{fin}: a kept-alive connection reused "
        f"after {f.host} dropped it.",
        idle_ns=gap,
        fin=bool(my_fin),
    )


def reuse_gap(w: World, r: Reset) -> int | None:
    """A forged reset that answers a host's first data after a silence (of IDLE_GAP_NS or more):
    that silence, as the host the reset reached saw its connection; else None."""
    for o in r.seen:
        if o.direction != "in":
            continue
        mine = o.seg.dst  # the host it reached: the reset is addressed to it
        before = [s for s in w.exact(o.vantage, name_of(o.seg)) if s.ts_ns < o.ts_ns and not s.seg.flags & RST]
        data = [s for s in before if s.seg.payload_len]
        if len(data) < 2 or data[-1].seg.src != mine or o.ts_ns - data[-1].ts_ns > ANSWER_NS:
            continue
        gap = data[-1].ts_ns - data[-2].ts_ns
        return gap if gap >= IDLE_GAP_NS else None
    return None


def unread_data_close(f: Facts) -> Evidence | None:
    if any(s.seg.flags & FIN for s in f.mine):
        return None
    answered = [s for s in f.mine if s.seg.payload_len]
    still = [s for s in f.peer if s.seg.payload_len and answered and s.ts_ns > answered[0].ts_ns]
    sent_after = sum(s.seg.payload_len for s in still)
    # A zero window in the host's last ACK before the reset: its receive queue was full, so
    # the application had not read what the peer sent (reading would have opened the window,
    # and Linux says so with a window update). tcp_close() finds that data and resets.
    acks = [s for s in f.mine if s.seg.flags & ACK]
    full = bool(acks and acks[-1].seg.window == 0 and any(s.seg.payload_len for s in f.peer))
    if not full and not (answered and still):
        return None
    said = []
    if answered and still:
        said.append(
            f"{f.host} answered ({sum(s.seg.payload_len for s in answered)} bytes) while the peer "
            f"was still sending ({sent_after} more bytes after the answer began)"
        )
    if full:
        said.append(
            f"{f.host}'s last ACK before the reset advertised a zero window (its receive queue "
            f"full: the application was not reading what the peer sent)"
        )
    return _cause(
        Cause.UNREAD_DATA_CLOSE,
        f"{'; '.join(said)}; then it reset without a FIN: a close with unread data.",
        bytes_after=sent_after,
        zero_window=full,
    )


def _expected(f: Facts, t_ns: int) -> int | None:
    """The sequence number the host expected next from the peer at t_ns (its view, this
    incarnation), None where it received nothing of the peer's before."""
    s = next((s for s in reversed(f.peer) if s.ts_ns < t_ns), None)
    if s is None:
        return None
    return (s.seg.seq + s.seg.payload_len + (1 if s.seg.flags & (SYN | FIN) else 0)) % (1 << 32)


def after_reset(f: Facts, reset_of: Mapping[int, Reset]) -> Evidence | None:
    """The host had taken another reset of this connection (this incarnation) before it sent this
    one: its stack no longer held the connection, and this reset answers the peer's next segment
    (Linux: no socket). Taken means its kernel logged receiving it (the witness), or its sequence
    number was the one the host expected next (a reset outside that is not taken, RFC 5961).
    ``reset_of``: id(observation) -> its reset."""
    start = f.before[0].ts_ns if f.r.isn is not None and f.before else None
    best: tuple[Reset, Seen, str] | None = None
    for o in f.w.exact(f.host, name_of(f.sent.seg)):  # in time order: the last one taken wins
        if o.ts_ns >= f.sent.ts_ns:
            break
        e = reset_of.get(id(o))
        if e is None or e is f.r or o.direction != "in" or (start is not None and o.ts_ns < start):
            continue
        if any(h == f.host for h, _ in e.kernel_received):
            best = (e, o, f"{f.host}'s kernel logged receiving it")
        elif _expected(f, o.ts_ns) == o.seg.seq:
            best = (e, o, f"its sequence number was the one {f.host} expected next")
    if best is None:
        return None
    e, o, how = best
    last = f.last_peer
    what = "a segment of the peer's"
    if last is not None and last.ts_ns > o.ts_ns:
        what = f"the peer's {last.seg.payload_len} bytes {fmt_s(last.ts_ns - o.ts_ns)} after {e.id}"
    return ev(
        Fact.AFTER_RESET,
        f"{f.host} had taken {e.id} on this connection {fmt_s(f.sent.ts_ns - o.ts_ns)} before ({how}): its stack "
        f"no longer held the connection, and this reset answers {what}. It is {e.id}'s aftermath, not a "
        f"cause of its own.",
        after=e.id,
        gap_ns=f.sent.ts_ns - o.ts_ns,
    )


CAUSE_RULES: tuple[tuple[Cause, Callable[[Facts], Evidence | None]], ...] = (
    (Cause.CHALLENGE_ACK, challenge_ack),
    (Cause.CAPACITY, capacity),
    (Cause.PEER_RESTART, restart_on_syn),
    (Cause.REFUSED, refused),
    (Cause.PEER_RESTART, peer_restart),
    # Before the proxy's own policy: data after a silence on a connection the proxy had already
    # closed (its keep-alive timeout) is the idle reuse, whoever the host is.
    (Cause.IDLE_REUSE, idle_reuse),
    (Cause.PROXY_POLICY, proxy_policy),
    (Cause.UNREAD_DATA_CLOSE, unread_data_close),
)


def _no_pattern(f: Facts) -> Evidence:
    p = f.peer
    sent = f.sent.seg
    if p and not sent.flags & ACK and p[-1].seg.flags & ACK and sent.seq == p[-1].seg.ack:
        # RFC 9293 3.10.7.1: a segment the stack cannot take, with ACK, is answered
        # <SEQ=SEG.ACK><CTL=RST> (Linux: tcp_v4_send_reset, for no socket or for data after the
        # application's close). An abort by the application (SO_LINGER 0, tcp_send_active_reset)
        # resets with ACK. A hint, never a cause: the packets cannot say which of the two.
        return ev(
            Fact.NO_CONNECTION_HINT,
            f"{f.host}'s reset has no ACK and its sequence number is the ack of the segment it answers "
            f"({p[-1].seg.payload_len} bytes, {fmt_s(f.sent.ts_ns - p[-1].ts_ns)} before): its TCP stack "
            f"could not take that segment: no such connection (closed or reset before this, or its state "
            f"lost) or data after the application had closed it; not an abort by the application. "
            f"Look for what ended the connection at {f.host} earlier.",
        )
    if p and p[-1].seg.payload_len and not any(s.seg.flags & FIN for s in f.mine):
        return ev(
            Fact.APP_ABORT_HINT,
            f"{f.host} reset the connection {fmt_s(f.sent.ts_ns - p[-1].ts_ns)} after "
            f"receiving {p[-1].seg.payload_len} bytes, without a FIN: an application abort "
            f"(SO_LINGER 0 or a crash); the host's own logs say why.",
        )
    return ev(Fact.NO_PATTERN, f"No pattern of DOMAIN.md's causes matches the packets of this connection at {f.host}.")


def _upstream_health(f: Facts) -> str | None:
    """None if the proxy received a reset near the time on another connection; else what its other
    connections did then."""
    t, w, r = f.sent.ts_ns, f.w, f.r
    mine = w.connection_names(r.tuple4)
    for s in f.d.segments:
        if s.seg.flags & RST and s.direction == "in" and abs(s.ts_ns - t) <= 2 * 10**9 and name_of(s.seg) not in mine:
            return None
    own = {conn_hash(*key_of(n)) for n in mine}
    near = {k: last for k, last in f.d.activity.get(t, {}).items() if k not in own}
    if not near:
        return "no other connection of its was active around then, and none was reset"
    data = [last for last in near.values() if last >= 0]
    last = f", the last data {fmt_s(t - max(data))} before" if data else ""
    return f"its {len(near)} other connection(s) active around then received no reset{last}"


# ---- the whole cause --------------------------------------------------------------------------
def decide(w: World, r: Reset, reset_of: Mapping[int, Reset]) -> None:
    """``reset_of``: id(observation) -> its reset, for every reset of the analysis (a host's
    earlier ones decide ``after_reset``)."""
    if r.origin_kind == Origin.MIDDLEBOX:
        r.cause = Cause.MIDDLEBOX
        # The reuse's silence, as the host the reset reached saw it: the idle-timeout chain may name
        # the box's expiry as the cause (analysis.idlechain: with the box's own timeout, read there).
        r.idle_ns = reuse_gap(w, r)
        return
    f = facts(w, r)
    aftermath = after_reset(f, reset_of) if f is not None else None
    if aftermath is not None:
        r.evidence.append(aftermath)
    elif f is not None:
        # The idle-reuse pattern's silence is kept whichever rule names the cause: a kernel reason
        # may name the idle reuse the packets' rules did not.
        idle = idle_reuse(f)
        r.idle_ns = int(idle.data["idle_ns"]) if idle is not None else None
        for cause, rule in CAUSE_RULES:
            found = idle if rule is idle_reuse else rule(f)
            if found is not None:
                r.cause = cause
                r.evidence.append(found)
                break
        else:
            r.evidence.append(_no_pattern(f))
    _kernel_cause(r)


def _kernel_cause(r: Reset) -> None:
    """The sender's kernel reason confirms the packets' cause, or names it where they could not."""
    if r.origin_kind != Origin.HOST:
        return
    if r.kernel_sent is None:
        if r.witness_absent == r.origin_host:
            r.cause = Cause.HOST_FIREWALL
        return
    reason = r.kernel_sent[1].reason
    if not reason:
        return
    if reason in AGREES.get(r.cause, set()):
        r.evidence.append(
            ev(Fact.KERNEL_AGREES, f"The kernel's reason ({reason}) agrees with the packets.", reason=reason)
        )
        return
    mapped = REASON_CAUSE.get(reason)
    if mapped is None:
        if r.cause == Cause.UNKNOWN and reason == "NO_SOCKET":
            r.cause = Cause.NO_SOCKET
        return
    if r.cause != Cause.UNKNOWN:
        r.evidence.append(
            ev(
                Fact.KERNEL_OVERRIDES,
                f"The packets pointed to {r.cause}, but the kernel's reason "
                f"{reason} means {mapped}: the sender's own kernel is the better "
                f"witness of why.",
                reason=reason,
                packets=str(r.cause),
            )
        )
    r.cause = mapped
