"""The flow the user names, the legs it crosses, and each host's capture filter.

``--flow 'CLIENT[:PORT]->SERVER:PORT'``: IPv4, IPv6 in brackets when a port follows
(``[2001:db8::1]:443``), and the 4-tuple as error messages print it
(``read tcp 10.0.3.41:48732->10.0.7.12:5432``: a leading ``tcp`` is accepted).

A *leg* is one TCP connection: the client leg goes to SERVER:PORT; a host that listens there and
has ``upstream`` targets opens the next legs (a proxy), and so on. Filters are built only from
parsed addresses and integers, never from raw user text.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from orchestrator.errors import FlowError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Endpoint:
    ip: IPAddress
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.ip}]" if self.ip.version == 6 and self.port is not None else str(self.ip)
        return host if self.port is None else f"{host}:{self.port}"


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise FlowError(f"{what}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _ip(text: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise FlowError(f"{what}: {text!r} is not an IPv4 or IPv6 address") from None


def parse_endpoint(text: str, what: str = "endpoint", *, port_required: bool = False) -> Endpoint:
    """``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:443``."""
    text = text.strip()
    if not text:
        raise FlowError(f"{what}: empty")
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?::(\d*))?", text)
        if not m:
            raise FlowError(f"{what}: {text!r} is not [IPv6]:PORT")
        ip = _ip(m.group(1), what)
        port = _port(m.group(2), what) if m.group(2) is not None else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        ip, port = _ip(host, what), _port(port_text, what)
    else:
        ip, port = _ip(text, what), None
    if port_required and port is None:
        raise FlowError(f"{what}: {text!r} needs a port (write IPv6 as [addr]:port)")
    return Endpoint(ip, port)


@dataclass(frozen=True)
class Flow:
    text: str
    client: Endpoint
    server: Endpoint


def parse_flow(text: str) -> Flow:
    raw = text.strip()
    body = re.sub(r"^(?:read|write|dial)?\s*tcp[46]?\s+", "", raw)
    if "->" not in body:
        raise FlowError(f"--flow {text!r}: expected CLIENT[:PORT]->SERVER:PORT, e.g. 10.0.3.41->10.0.7.12:5432")
    left, _, right = body.partition("->")
    client = parse_endpoint(left, "--flow client")
    # Error messages go on after the tuple ("...->10.0.7.12:5432: read: connection reset").
    right = re.split(r":\s", right.strip(), maxsplit=1)[0].rstrip(":")
    server = parse_endpoint(right, "--flow server", port_required=True)
    if client.ip.version != server.ip.version:
        raise FlowError(f"--flow {text!r}: client and server are not the same IP version")
    return Flow(raw, client, server)


@dataclass(frozen=True)
class Leg:
    """One TCP connection of the path. ``client`` is None when only the server end is known
    (a proxy's upstream connection comes from whichever address the kernel picks)."""

    name: str
    server: Endpoint
    client: Endpoint | None = None
    opened_by: str | None = None  # the inventory host that originates this leg (a proxy)

    def bpf(self) -> str:
        terms = ["tcp", f"host {self.server.ip}", f"port {self.server.port}"]
        if self.client is not None:
            terms.append(f"host {self.client.ip}")
            if self.client.port is not None:
                terms.append(f"port {self.client.port}")
        return "(" + " and ".join(terms) + ")"


def ssh_exclusion(client_ip: str, client_port: int, server_ip: str, server_port: int) -> str:
    """Exactly our own SSH session's 4-tuple, as the host sees it."""
    a, b = ipaddress.ip_address(client_ip), ipaddress.ip_address(server_ip)
    return f"not (host {a} and host {b} and port {int(client_port)} and port {int(server_port)})"


def combine(legs: list[Leg], exclusion: str | None = None) -> str:
    expr = " or ".join(leg.bpf() for leg in legs)
    if len(legs) > 1:
        expr = f"({expr})"
    return f"{expr} and {exclusion}" if exclusion else expr
