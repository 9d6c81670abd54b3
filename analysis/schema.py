"""report.json's published schema: the pydantic models every report is validated against and
serialised by (``dump``), and the JSON Schema made from them, shipped as
``analysis/report.schema.json`` and printed by ``capture-all schema``.

The schema string (``analysis.report.SCHEMA``, ``capture-all/report/N``) is bumped whenever a
field is removed, renamed or changes meaning; adding a field bumps it too (consumers may validate
with additionalProperties false, as these models do). The shipped file must equal what the models
generate (a unit test), so the two never drift apart.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from analysis.report import SCHEMA

SCHEMA_FILE = "report.schema.json"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Span(_M):
    from_ns: int
    to_ns: int
    from_utc: str = Field(description="UTC, ISO 8601, nanoseconds: 2026-12-01T21:22:43.148610123Z")
    to_utc: str
    duration_s: float


class About(_M):
    """What the report is of: a copy pasted into a ticket ties back to its evidence."""

    tool: str = Field(description="capture-all and its version")
    generated_utc: str
    command: list[str] = Field(description="the command line that collected the evidence (argv)")
    command_line: str | None = Field(description="the same, quoted as a shell would read it")
    analyzed_by: str | None = Field(description="the re-analysis's command line; null: the capture's own report")
    bundle: str | None
    manifest_sha256: str | None = Field(description="SHA-256 of the bundle's manifest.json")
    captured_utc: str | None = Field(description="when the capture run started")
    capture: Span | None = Field(description="the first host armed to the last stopped")
    window: Span | None = Field(description="the captures' first and last packet, aligned clock")


class Probe(_M):
    phase: str
    at_ns: int
    offset_ns: int
    bound_ns: int


class Clock(_M):
    method: str = Field(description="reference | packets | probe | none (not aligned)")
    offset_ns: int = Field(description="added to this host's times at at_ns to put them on the reference clock")
    at_ns: int | None
    uncertainty_ns: int | None
    drift_ppm: float | None
    probe: list[Probe]


class WitnessState(_M):
    state: str
    reason: str | None
    events: int
    lost: int | None
    other_hosts_events: int
    reason_field: bool
    start_ns: int | None
    end_ns: int | None
    clock_bound_ns: int | None


class Conntrack(_M):
    before: int | None
    after: int | None
    max: int | None


class Host(_M):
    name: str
    role: str
    interfaces: list[str]
    status: str = Field(description="ok | failed")
    error: str | None
    packets: int
    kernel_drops: int | None
    clock: Clock
    witness: WitnessState
    counters: dict[str, int] = Field(description="nstat counters, after minus before")
    conntrack: Conntrack
    interface_drops: dict[str, dict[str, int]]


class Kernel(_M):
    event: str = Field(description="tcp_send_reset | tcp_receive_reset")
    time_ns: int
    time_utc: str
    src: str
    sport: int
    dst: str
    dport: int
    state: str | None
    reason: str | None
    pid: int | None
    comm: str | None
    softirq: bool
    sender_process: str | None


class HostKernel(Kernel):
    host: str


class ResetKernel(_M):
    sent: HostKernel | None = Field(description="the sender's own tcp_send_reset")
    received: list[HostKernel]
    no_send_event_at: str | None = Field(description="a host whose running witness logged no send event for it")


class Tuple4(_M):
    src: str
    sport: int
    dst: str
    dport: int


class Origin(_M):
    kind: str = Field(description="host | middlebox | unknown")
    host: str | None
    between: list[str] | None


class Seen(_M):
    host: str
    iface: str
    direction: str
    time_ns: int
    time_utc: str
    ttl: int


class Evidence(BaseModel):
    """One fact: its kind, its sentence, and the numbers it rests on (fields by kind)."""

    model_config = ConfigDict(extra="allow")
    kind: str
    text: str


class Reset(_M):
    id: str
    time_ns: int
    time_utc: str
    tuple: Tuple4
    origin: Origin
    chain: int
    chain_role: str = Field(description="first | propagated")
    propagated_from: str | None
    cause: str
    seen_at: list[Seen]
    names: list[Tuple4] = Field(description="the connection's names through address translation, its own first")
    isn: int | None
    evidence: list[Evidence]
    blocked_by: list[str] = Field(description="contrary evidence that stopped a middlebox conviction")
    kernel: ResetKernel
    owners: dict[str, str]


class PacketRow(_M):
    kind: Literal["packet"]
    time_ns: int
    time_utc: str
    host: str
    iface: str
    direction: str
    src: str
    sport: int
    dst: str
    dport: int
    flags: str
    seq: int
    ack: int
    len: int
    ttl: int
    ip_id: int | None
    reset_id: str | None


class KernelRow(Kernel):
    kind: Literal["kernel"]
    host: str
    text: str
    reset_id: str | None


class Client(_M):
    ip: str
    port: int | None


class LogLine(_M):
    host: str
    source: str = Field(description="the file, or journal=UNIT, it came from")
    format: str = Field(description="haproxy | nginx_error | nginx_access | envoy | raw")
    time_ns: int | None = Field(description="aligned clock; null: a line whose format was not recognised")
    time_utc: str | None = None
    resolution_ns: int = Field(description="the log's own resolution: the event lies within it after time_ns")
    meaning: str | None = Field(description="client_abort, upstream_reset, proxy_timeout, ...")
    says: str
    client: Client | None
    upstream: str | None
    text: str
    reset_id: str | None = Field(description="the reset this line speaks of (by its tuple, or its time)")


class LogRow(LogLine):
    kind: Literal["log"]


class Integrity(_M):
    verified: bool
    problems: list[str]


class MergedInterface(_M):
    name: str
    link_type: int
    aligned_minus_captured_ns: int
    description: str


class Merged(_M):
    file: str | None
    packets: int
    reset_comments: int
    interfaces: list[MergedInterface]
    problems: list[str]


class TimeoutValue(_M):
    host: str
    what: str = Field(description="e.g. client-side keep-alive (HAProxy), conntrack established timeout")
    ms: float
    source: str = Field(description="where it was read: a config file and line, a sysctl, the inventory")


class TimeoutPair(_M):
    reuser: TimeoutValue = Field(description="the side that keeps idle connections and reuses them")
    closer: TimeoutValue = Field(description="the side that may give up on them when idle")
    ok: bool = Field(description="the reuser's is the shorter")
    text: str


class Explained(_M):
    reset_id: str
    pair: int = Field(description="index into pairs")
    idle_ns: int = Field(description="the silence before the reuse, on this connection")


class IdleChain(_M):
    pairs: list[TimeoutPair]
    notes: list[str]
    explains: list[Explained] = Field(description="idle-reuse resets whose silence falls in a violated pair's window")


class Report(_M):
    model_config = ConfigDict(extra="forbid", title="capture-all report.json")
    schema_: Literal["capture-all/report/4"] = Field(alias="schema")
    generated_by: str
    about: About | None
    flow: str
    hosts: list[Host]
    clock_reference: str | None
    clock_findings: list[str]
    resets: list[Reset]
    first_reset: str | None
    verdict: str
    caveats: list[str]
    timeline: list[Annotated[PacketRow | KernelRow | LogRow, Field(discriminator="kind")]]
    log_lines: list[LogLine] = Field(description="every log line of the window the hosts returned, parsed")
    integrity: Integrity | None = None
    merged: Merged | None = None
    idle_chain: IdleChain | None = Field(
        default=None, description="the idle-timeout chain read on the hosts during the capture (null: not read)"
    )


def dump(report: dict[str, Any]) -> str:
    """report.json's text: the report validated against the models (a field the models do not
    know, or one of the wrong type, raises) and serialised by them."""
    return Report.model_validate(report).model_dump_json(by_alias=True, indent=2) + "\n"


def generate() -> dict[str, Any]:
    schema = Report.model_json_schema(by_alias=True)
    schema["$id"] = SCHEMA
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def shipped() -> str:
    """The JSON Schema as shipped in the package."""
    return resources.files("analysis").joinpath(SCHEMA_FILE).read_text()


def text() -> str:
    return json.dumps(generate(), indent=2, sort_keys=True) + "\n"
