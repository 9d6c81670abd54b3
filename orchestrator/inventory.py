"""The inventory: which hosts to reach, how, and which addresses each one uses on each side.

TOML, validated with pydantic. Any error becomes one ``InventoryError`` line naming the file,
the host and the field: ``inv.toml: hosts[2] (lb-1): interfaces[0]: ...``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import FlowError, InventoryError
from orchestrator.flow import Endpoint, IPAddress, parse_endpoint
from remote.commands import UnsafeValue, validate_interface, validate_log_path, validate_tmpbase

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

Role = Literal["client", "proxy", "backend", "router", "nat", "firewall", "other"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SSH_HOST_RE = re.compile(r"^[A-Za-z0-9._:%-]{1,253}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshSettings(_Strict):
    """SSH options; every one may be set in [ssh] and overridden in a host's [hosts.ssh]."""

    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts: str | None = None
    config_file: str | None = None
    jump_host: str | None = None  # [user@]host[:port], or a chain of them: "a,ops@b:2222" (ssh -J)
    sudo: bool | None = None
    connect_timeout: float | None = Field(default=None, gt=0, le=300)

    @field_validator("jump_host")
    @classmethod
    def _jump(cls, v: str | None) -> str | None:
        hop = r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+(?::\d{1,5})?"
        if v is not None and not re.fullmatch(rf"{hop}(?:,{hop}){{0,7}}", v):
            raise ValueError("must be [user@]host[:port], or a chain of up to 8 of them: 'a,ops@b:2222' (ssh -J)")
        for port in re.findall(r":(\d+)(?:,|$)", v or ""):
            if not 1 <= int(port) <= 65535:
                raise ValueError(f"port {port} is not 1-65535")
        return v

    def merged(self, override: SshSettings) -> SshSettings:
        return self.model_copy(update=override.model_dump(exclude_none=True))


class CaptureSettings(_Strict):
    tmpdir: str = "/tmp"

    @field_validator("tmpdir")
    @classmethod
    def _tmp(cls, v: str) -> str:
        try:
            return validate_tmpbase(v)
        except UnsafeValue as exc:
            raise ValueError(str(exc)) from None


def _endpoint(v: Any, *, port_required: bool) -> Endpoint:
    if not isinstance(v, str):
        raise ValueError("must be a string like '10.0.0.1:443'")
    try:
        return parse_endpoint(v, "address", port_required=port_required)
    except FlowError as exc:
        raise ValueError(str(exc).removeprefix("address: ")) from None


class Host(_Strict):
    name: str
    role: Role
    address: str  # where SSH reaches it
    interfaces: list[str] = Field(min_length=1)
    addresses: list[IPAddress] = []  # data-plane addresses this host owns
    listen: list[Endpoint] = []  # ADDR:PORT it serves
    upstream: list[Endpoint] = []  # ADDR:PORT it connects to (a proxy's backends)
    tmpdir: str | None = None
    ssh: SshSettings = SshSettings()
    # Logs whose lines of the capture window come back with the evidence: absolute file paths, or
    # journal:UNIT (journal=UNIT) for a systemd unit's journal.
    logs: list[str] = []
    # This host's own idle timeout for its kept-alive connections, where it cannot be read from
    # the host: a client's connection pool ("5s"), an application server's keep-alive ("60s").
    idle_timeout: str | None = None

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h)", v):
            raise ValueError(f"{v!r} is not a duration like 500ms, 5s, 2m")
        return v

    @field_validator("logs")
    @classmethod
    def _logs(cls, v: list[str]) -> list[str]:
        out = []
        for i, src in enumerate(v):
            src = "journal=" + src[len("journal:") :] if src.startswith("journal:") else src
            try:
                out.append(validate_log_path(src))
            except UnsafeValue as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        if len(set(out)) != len(out):
            raise ValueError("lists a log twice")
        if len(out) > 16:
            raise ValueError("at most 16 logs per host")
        return out

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be 1-63 letters, digits, '.', '_' or '-' (it names a folder)")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not _SSH_HOST_RE.match(v):
            raise ValueError(f"{v!r} is not a host name or IP address")
        return v

    @field_validator("interfaces")
    @classmethod
    def _ifaces(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            try:
                validate_interface(name)
            except UnsafeValue as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        if len(set(v)) != len(v):
            raise ValueError("lists an interface twice")
        return v

    @field_validator("addresses", mode="before")
    @classmethod
    def _addresses(cls, v: Any) -> list[IPAddress]:
        if not isinstance(v, list):
            raise ValueError("must be a list of IP address strings")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(ipaddress.ip_address(x))
            except ValueError:
                raise ValueError(f"[{i}]: {x!r} is not an IP address") from None
        return out

    @field_validator("listen", "upstream", mode="before")
    @classmethod
    def _endpoints(cls, v: Any) -> list[Endpoint]:
        if not isinstance(v, list):
            raise ValueError("must be a list of 'ADDR:PORT' strings")
        return [_endpoint(x, port_required=True) for x in v]

    @field_validator("tmpdir")
    @classmethod
    def _tmp(cls, v: str | None) -> str | None:
        return CaptureSettings._tmp(v) if v is not None else None

    def owns(self, ip: IPAddress) -> bool:
        return ip in self.addresses or any(e.ip == ip for e in self.listen)


class Inventory(_Strict):
    ssh: SshSettings = SshSettings()
    capture: CaptureSettings = CaptureSettings()
    hosts: list[Host] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        seen: set[str] = set()
        for h in self.hosts:
            if h.name in seen:
                raise ValueError(f"host name {h.name!r} is used twice")
            seen.add(h.name)
        return self

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


def _where(loc: tuple[int | str, ...], data: Any) -> str:
    """('hosts', 2, 'interfaces', 0) -> 'hosts[2] (lb-1): interfaces[0]'."""
    out, node = "", data
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
            if out == f"hosts[{item}]" and isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']}):"
        else:
            out += (" " if out.endswith(":") else "." if out else "") + item
            node = node.get(item) if isinstance(node, dict) else None
    return out.rstrip(":")


def format_validation_error(path: str, exc: ValidationError, data: Any) -> str:
    first = exc.errors()[0]
    loc = tuple(x for x in first["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (typo?)"
    where = _where(loc, data) or "top level"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {where}: {msg}{more}"


def load_inventory(path: str | Path) -> tuple[Inventory, str]:
    """Returns the inventory and the SHA-256 of the file's bytes. Raises InventoryError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InventoryError(f"{p}: cannot read inventory: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InventoryError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{p}: not valid TOML: {exc}") from None
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(format_validation_error(str(p), exc, data)) from None
    return inv, hashlib.sha256(raw).hexdigest()
