"""The verdict's vocabulary, defined once: origin kinds, causes, and evidence as records.

An ``Evidence`` is a fact with its numbers (``data``) and the sentence rendered from them. Code
and tests read ``kind`` and ``data``; only people read ``text``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10 (Ubuntu 22.04's): the same str-valued members, printed as their value
    from enum import Enum

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class Origin(StrEnum):
    HOST = "host"  # a host's own TCP stack built it (or a rule on that host: cause host_firewall)
    MIDDLEBOX = "middlebox"  # forged by a box that captured itself doing it, or injected on a path
    UNKNOWN = "unknown"  # not attributable, and the evidence says why


class Cause(StrEnum):
    IDLE_REUSE = "idle_reuse"
    PEER_RESTART = "peer_restart"
    UNREAD_DATA_CLOSE = "unread_data_close"
    REFUSED = "refused"
    PROXY_POLICY = "proxy_policy"
    CAPACITY = "capacity"
    MIDDLEBOX = "middlebox"
    IDLE_EXPIRY = "idle_expiry"  # a middlebox forgot the idle connection (its timeout) and reset its reuse
    APP_ABORT = "app_abort"
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    NO_SOCKET = "no_socket"
    HOST_FIREWALL = "host_firewall"
    CHALLENGE_ACK = "challenge_ack"
    UNKNOWN = "unknown"


class ChainRole(StrEnum):
    FIRST = "first"
    PROPAGATED = "propagated"


class Fact(StrEnum):
    # origin
    SENT_BY_HOST = "sent_by_host"  # seen leaving X with X's own address
    FORWARDED = "forwarded"  # seen arriving at X before leaving it: X only forwarded (translated) it
    FORGED_AT = "forged_at"  # seen leaving X in B's name, never arriving although X saw B's side
    FORGERY_UNPROVEN = "forgery_unproven"  # left X in B's name, but X never saw B's side: proves nothing
    INJECTED = "injected"  # B captured the connection and never sent it
    SEEN_FIRST_AT = "seen_first_at"
    CLAIMED_UNOWNED = "claimed_unowned"  # no host of the run owns the source address
    CLAIMED_NOT_CAPTURED = "claimed_not_captured"
    CLAIMED_SAW_NOTHING = "claimed_saw_nothing"  # B's capture has no packet of this connection
    CLAIMED_DROPPED = "claimed_dropped"  # B captured it but dropped packets
    TRANSLATED = "translated"  # one connection under several names (a NAT), learned from the packets
    TTL_MATCHES = "ttl_matches"
    TTL_DIFFERS = "ttl_differs"
    DF_DIFFERS = "df_differs"
    # the kernel witness
    KERNEL_SENT = "kernel_sent"
    WITNESS_LOST = "witness_lost"
    LOG_AGREES = "log_agrees"  # a proxy's log line about this connection says what the packets say
    LOG_DISAGREES = "log_disagrees"  # one that says otherwise (cited as such: the packets decide)
    WITNESS_SILENT = "witness_silent"  # the claimed sender's witness ran and logged no send on any name
    WITNESS_SILENT_HOST = "witness_silent_host"  # left the host with its address, its kernel logged none
    WITNESS_UNKNOWN_TUPLE = "witness_unknown_tuple"  # the name the host would have logged is not known
    # contrary evidence, and what it did to a conviction
    COUNTERS_ROSE = "counters_rose"
    KERNEL_CONTRADICTS = "kernel_contradicts"
    CONTRARY = "contrary"  # a middlebox conviction turned into unknown
    STILL_OPEN = "still_open"
    # chains and clocks
    PROPAGATION = "propagation"
    SAME_TEARDOWN = "same_teardown"
    CLOCKS_CANNOT_ORDER = "clocks_cannot_order"
    # cause
    CAUSE = "cause"  # the packets' pattern for data["cause"]
    KERNEL_AGREES = "kernel_agrees"
    KERNEL_OVERRIDES = "kernel_overrides"
    APP_ABORT_HINT = "app_abort_hint"
    NO_CONNECTION_HINT = "no_connection_hint"  # a bare RST answering a segment: the stack had no such connection
    NO_PATTERN = "no_pattern"
    AFTER_RESET = "after_reset"  # the sender had taken another reset of the connection before: its aftermath
    IDLE_CHAIN = "idle_chain"  # the idle-timeout pair out of order whose window this reuse fell in


@dataclass(frozen=True)
class Evidence:
    kind: Fact
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "text": self.text, **self.data}


def ev(kind: Fact, text: str, **data: Any) -> Evidence:
    return Evidence(kind, text, data)
