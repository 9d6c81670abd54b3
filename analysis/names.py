"""One connection, several names: address translation learned from the packets, and incarnations.

Rules (DOMAIN.md "Address translation, and what 'not seen' proves"):
- A NAT rewrites addresses and ports but keeps seq, ack, flags, payload and (usually) the IP ID.
  The same segment seen as ``A:p -> S:443`` at one vantage and ``N:q -> S:443`` at another (or on
  the two interfaces of the NAT box itself) makes the two *directed* names one direction of one
  connection, and their reverses the other direction. Names are joined per direction, so "the
  same side of the connection" stays known through any number of translations.
- Only segments that identify a connection on their own are used: a SYN (its initial sequence
  number is random), a reset, and any segment whose (seq, ack, flags, payload length and digest,
  IP ID) already matched at two vantages.
- A 4-tuple can be reused: a new SYN starts a new connection (an *incarnation*), named here by the
  initiator's initial sequence number. A segment belongs to the incarnation whose sequence space
  holds it, so a reset carrying an older connection's sequence numbers is never taken for part of
  the new one's teardown.
"""

from __future__ import annotations

from collections.abc import Iterable

from analysis.decode import ACK, RST, SYN, Segment

Name = tuple[str, int, str, int]  # (src, sport, dst, dport): one direction of one connection
_HALF = 1 << 31
MATCH_WINDOW_NS = 60 * 10**9  # the same packet at two vantages: within this (clocks are not aligned yet)


def name_of(seg: Segment) -> Name:
    return (seg.src, seg.sport, seg.dst, seg.dport)


def show(n: Name) -> str:
    return f"{n[0]}:{n[1]} -> {n[2]}:{n[3]}"


def reverse(n: Name) -> Name:
    return (n[2], n[3], n[0], n[1])


def key_of(n: Name) -> Name:
    """Direction-free key: the lower endpoint first."""
    a, b = (n[0], n[1]), (n[2], n[3])
    return (*a, *b) if a <= b else (*b, *a)


def identity(seg: Segment) -> tuple[int, int, int, int, int]:
    """What every NAT leaves alone: the same value at every vantage for one segment. The IP ID is
    left out (some NATs rewrite it); 64 bits of seq and ack already make a match unique."""
    return (seg.seq, seg.ack, seg.flags & 0x3F, seg.payload_len, seg.payload_crc)


class Names:
    """Union-find over directed names; joining two names joins their reverses too."""

    def __init__(self) -> None:
        self._parent: dict[Name, Name] = {}
        self._groups: dict[Name, set[Name]] | None = None  # root -> members, rebuilt after a join
        self._hows: dict[Name, set[str]] | None = None  # root -> how its names were learned, likewise
        self.learned: list[tuple[Name, Name, str]] = []  # (name, other name, how), one per join

    def find(self, n: Name) -> Name:
        p = self._parent.setdefault(n, n)
        while p != n:
            self._parent[n] = self._parent.setdefault(p, p)
            n, p = p, self._parent[p]
        return n

    def join(self, a: Name, b: Name, how: str, *, corroborate: bool = False) -> None:
        """``corroborate``: where a and b are already one, still record that ``how`` says so too
        (another source, such as a box's conntrack table); packets repeating it are not recorded."""
        if self.find(a) == self.find(b):
            if corroborate:
                self.learned.append((a, b, how))
                self._hows = None
            return
        self._parent[self.find(a)] = self.find(b)
        self._parent[self.find(reverse(a))] = self.find(reverse(b))
        self._groups = self._hows = None
        self.learned.append((a, b, how))

    def same_direction(self, a: Name, b: Name) -> bool:
        return self.find(a) == self.find(b)

    def same_connection(self, a: Name, b: Name) -> bool:
        return self.find(a) == self.find(b) or self.find(a) == self.find(reverse(b))

    def aliases(self, n: Name) -> set[Name]:
        """Every directed name of n's direction (n included)."""
        if self._groups is None:
            self._groups = {}
            for m in list(self._parent):
                self._groups.setdefault(self.find(m), set()).add(m)
        return self._groups.get(self.find(n), set()) | {n}

    def keys(self, n: Name) -> set[Name]:
        """The direction-free keys of every name of n's connection."""
        return {key_of(m) for m in self.aliases(n)} | {key_of(m) for m in self.aliases(reverse(n))}

    def how(self, n: Name) -> list[str]:
        """How each name of n's connection was learned (packets, or a box's conntrack table)."""
        if self._hows is None:
            self._hows = {}
            for a, _b, how in self.learned:
                self._hows.setdefault(self.find(a), set()).add(how)
        return sorted(self._hows.get(self.find(n), set()) | self._hows.get(self.find(reverse(n)), set()))


def learn(observations: Iterable[tuple[str, str, int, Segment]], names: Names | None = None) -> Names:
    """Join the names of segments that are one packet seen under different names.

    ``observations``: (vantage, interface, time_ns, segment). Identities are compared within
    MATCH_WINDOW_NS; a segment seen more than 16 times (a repeated pure ACK) is ambiguous and
    left out."""
    names = names or Names()
    by_id: dict[tuple[int, int, int, int, int], list[tuple[int, Name, str]]] = {}
    for vantage, iface, ts, seg in observations:
        by_id.setdefault(identity(seg), []).append((ts, name_of(seg), f"{vantage}/{iface}"))
    for ident, seen in by_id.items():
        if len(seen) < 2 or len(seen) > 16:
            continue
        flags = ident[2]
        how = "SYN" if flags & SYN and not flags & ACK else ("RST" if flags & RST else "segment")
        seen.sort()
        for (t0, n0, at0), (t1, n1, at1) in zip(seen, seen[1:], strict=False):
            if n0 != n1 and t1 - t0 <= MATCH_WINDOW_NS:
                names.join(n0, n1, f"the same {how} (seq {ident[0]}) seen as one at {at0} and the other at {at1}")
    return names


# ---- incarnations -------------------------------------------------------------------------
def in_space(value: int, isn: int) -> bool:
    """Whether a sequence number lies in the half of the space that follows isn."""
    return (value - isn) % (1 << 32) < _HALF


def incarnation(segments: list[Segment], rst: Segment, names: Names) -> int | None:
    """The initiator's initial sequence number of the connection the RST belongs to, among the
    handshakes seen on its 4-tuple at one vantage (``segments``, time order); None when it belongs
    to a connection older than any handshake there (opened before the capture)."""
    rst_name = name_of(rst)
    syns = [s for s in segments if s.flags & SYN and not s.flags & ACK and s.ts_ns <= rst.ts_ns]
    if not syns:
        return None
    # The RST's sequence numbers in the initiator's space: its seq if the initiator sent it,
    # else its ack (RST+ACK), else (a bare RST from the responder) the responder's seq.
    for syn in reversed(syns):
        from_initiator = names.same_direction(rst_name, name_of(syn))
        if from_initiator:
            if in_space(rst.seq, syn.seq):
                return syn.seq
            continue
        if rst.flags & ACK and in_space(rst.ack, syn.seq + 1):
            return syn.seq
        if not rst.flags & ACK:
            synack = [s for s in segments if s.flags & SYN and s.flags & ACK and s.ack == (syn.seq + 1) % (1 << 32)]
            if synack and in_space(rst.seq, synack[0].seq):
                return syn.seq
    return None
