"""The orchestrator's fan-out over the scripted fake transport: no network, no asyncssh."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Generator
from pathlib import Path

import anyio
import pytest

from orchestrator.bundle import Bundle, verify
from orchestrator.flow import parse_flow
from orchestrator.inventory import Inventory
from orchestrator.plan import build_plan
from orchestrator.run import PROBE_SAMPLES, RunOptions, run_capture
from remote.commands import RemoteCommand
from remote.errors import AuthError, ConnectError, ConnectionLost, HostKeyError
from remote.fake import Conversation, FakeConnector, FakeHost, capture_dialogue, finish_steps, probe, snapshot
from remote.transport import CommandResult

pytestmark = pytest.mark.anyio

INV = Inventory.model_validate(
    {
        "ssh": {"connect_timeout": 0.3},
        "hosts": [
            {
                "name": "client",
                "role": "client",
                "address": "10.0.0.1",
                "interfaces": ["eth0"],
                "addresses": ["10.1.0.1"],
            },
            {
                "name": "proxy",
                "role": "proxy",
                "address": "10.0.0.2",
                "interfaces": ["eth0", "eth1"],
                "addresses": ["10.1.0.2"],
                "listen": ["10.1.0.2:443"],
                "upstream": ["10.2.0.3:8080"],
            },
            {
                "name": "backend",
                "role": "backend",
                "address": "10.0.0.3",
                "interfaces": ["eth0"],
                "addresses": ["10.2.0.3"],
                "listen": ["10.2.0.3:8080"],
            },
        ],
    }
)
FLOW = parse_flow("10.1.0.1->10.1.0.2:443")


def hosts(**overrides: FakeHost) -> dict[str, FakeHost]:
    fakes = {n: FakeHost(n, remote_dir=f"/tmp/capture-all.{n[:4].upper():A<8}") for n in ("client", "proxy", "backend")}
    fakes.update(overrides)
    return fakes


async def go(
    tmp_path: Path, fakes: dict[str, FakeHost], events: list[tuple[str, str, str]] | None = None, **opts: object
):
    bundle = Bundle.create(tmp_path / "b")
    sink = (lambda h, s, d: events.append((h, s, d))) if events is not None else (lambda h, s, d: None)
    options = RunOptions(**{"duration": 0.1, **opts})  # type: ignore[arg-type]
    result = await run_capture(build_plan(FLOW, INV), FakeConnector(fakes), bundle, options, sink)
    return result, {r.name: r for r in result.records}


async def test_all_hosts_captured_pulled_and_cleaned(tmp_path: Path) -> None:
    fakes = hosts()
    result, recs = await go(tmp_path, fakes)
    assert {n: r.status for n, r in recs.items()} == {"client": "ok", "proxy": "ok", "backend": "ok"}
    assert [c.interface for c in recs["proxy"].captures] == ["eth0", "eth1"]
    assert (tmp_path / "b/proxy/eth1.pcap").read_bytes() == fakes["proxy"].pcap
    assert all(r.remote_dir_removed for r in recs.values())
    for f in fakes.values():
        # One session a host, one shell: go, the probe, snap; then finish, the probe, snap, rm. A
        # proxy also has its idle timeouts read, while its files come back (the report's chain).
        extra = ["audit"] if f.name == "proxy" else []
        assert [c.phase for c in f.log] == ["capture", *extra]
        logged = [json.loads(x) for x in (tmp_path / "b" / f.name / "commands.jsonl").read_text().splitlines()]
        assert sorted(x["phase"] for x in logged) == sorted(["capture", *extra])
        logged = [x for x in logged if x["phase"] == "capture"]
        probes = f"t (x{PROBE_SAMPLES})"
        assert logged[0]["said"] == [f"go {f.filters[0]}", probes, "snap", "finish", probes, "snap", "rm"]
        assert list(logged[0]["steps_ns"]) == [
            "preflight", "tcpdump listening", "clock probe at start", "witness and before snapshot", "window",
            "stopping the capture", "clock probe at end", "after snapshot", "pulls", "removing the directory",
        ]  # fmt: skip
        assert f.sessions_max <= 3  # far below the 10 sessions a stock sshd allows a connection
    # The capture filter excludes our own SSH session as the host reported it.
    assert "not (host 198.19.0.1 and host 198.19.0.20 and port 40000 and port 22)" in (recs["client"].bpf_filter or "")
    assert fakes["client"].filters == [recs["client"].bpf_filter]
    assert result.start_skew_ms is not None
    assert (tmp_path / "b/proxy/before/nstat.txt").exists() and (tmp_path / "b/proxy/after/nstat.txt").exists()


async def test_start_skew_is_measured_on_the_hosts_clocks_put_on_the_controllers(tmp_path: Path) -> None:
    """The captures start together; the hosts' clocks are 5 s ahead and 3 s behind. The skew is
    that of the starts (each host's clock at its start, less its probe's offset), not 8 s, and
    not the controller's hearing of them."""
    fakes = hosts(
        proxy=FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA", clock_offset_ns=5 * 10**9),
        backend=FakeHost("backend", remote_dir="/tmp/capture-all.BACKAAAA", clock_offset_ns=-3 * 10**9),
    )
    result, recs = await go(tmp_path, fakes)
    starts = {n: r.remote_armed_ns for n, r in recs.items()}
    assert starts["proxy"] - starts["backend"] > 7 * 10**9  # each host's own clock
    assert result.start_skew_ms is not None and result.start_skew_ms < 500, result.start_skew_ms


async def test_no_host_hears_go_before_every_host_is_ready(tmp_path: Path) -> None:
    """The start barrier: the slowest host's @@ready comes before anyone's "go"."""
    events: list[tuple[str, str]] = []

    def watched(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        talk = capture_dialogue(host, cmd)
        out = next(talk)
        events.append(("ready", host.name))
        said = yield out
        events.append(("go", host.name))
        try:
            while True:
                said = yield talk.send(said)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    fakes = hosts(backend=FakeHost("backend", remote_dir="/tmp/capture-all.BACKAAAA", connect_delay=0.3))
    for f in fakes.values():
        f.dialogues["capture"] = watched
    _, recs = await go(tmp_path, fakes)
    assert all(r.status == "ok" for r in recs.values())
    assert [e for e, _ in events] == ["ready"] * 3 + ["go"] * 3, events
    assert events[2] == ("ready", "backend")


async def test_clock_probes_are_recorded_and_a_failing_probe_is_only_a_note(tmp_path: Path) -> None:
    def nonsense(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        said = yield f"@@section preflight\nuid=0\ndir={host.remote_dir}\n@@ready\n"
        host.filters.append(said[3:])
        said = yield f"@@section arm\n@@section probe\nnow_ns={time.time_ns()}\n@@probe us\n"
        while said == "t":
            said = yield "not a clock\n"
        return snapshot(), 0

    fakes = hosts(
        proxy=FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA", clock_offset_ns=2_500_000_000),
        backend=FakeHost("backend", remote_dir="/tmp/capture-all.BACKAAAA", answers={"capture": nonsense}),
    )
    _, recs = await go(tmp_path, fakes)
    assert [p.phase for p in recs["proxy"].clock_probes] == ["start", "end"]
    for p in recs["proxy"].clock_probes:
        assert abs(p.offset_ns - 2_500_000_000) <= p.bound_ns and p.samples == PROBE_SAMPLES - 1
    assert recs["backend"].status == "ok" and [p.phase for p in recs["backend"].clock_probes] == ["end"]
    assert "clock probe at start: no usable answer" in recs["backend"].notes


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConnectError("backend", "connection refused"), "unreachable"),
        (AuthError("backend", "authentication refused"), "auth_refused"),
        (HostKeyError("backend", "unknown host key"), "host_key"),
    ],
)
async def test_a_host_that_cannot_connect_never_stops_the_others(tmp_path: Path, error: Exception, kind: str) -> None:
    fakes = hosts(backend=FakeHost("backend", connect_error=error))
    _, recs = await go(tmp_path, fakes)
    assert (recs["backend"].status, recs["backend"].error_kind, recs["backend"].failed_phase) == (
        "failed",
        kind,
        "prepare",
    )
    assert recs["client"].status == recs["proxy"].status == "ok"
    assert (tmp_path / "b/client/eth0.pcap").exists()


async def test_connect_deadline(tmp_path: Path) -> None:
    fakes = hosts(proxy=FakeHost("proxy", connect_delay=30))
    with anyio.fail_after(10):
        _, recs = await go(tmp_path, fakes)
    assert recs["proxy"].error_kind == "unreachable" and "no answer within" in (recs["proxy"].error or "")
    assert recs["client"].status == "ok"


def silent_after_listing(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    """A capture session that stops answering once asked to finish."""
    said = yield from capture_until_armed(host, cmd)
    assert said == "finish"
    yield "@@section finish\nalready_done=0\n"
    raise AssertionError("the controller never speaks before @@probe")


def capture_until_armed(host: FakeHost, cmd: RemoteCommand, armed: Callable[[], object] = lambda: None
                        ) -> Generator[str, str, str]:  # fmt: skip
    """The healthy capture session up to @@armed (``armed`` is called as the host says it);
    returns what the controller says next."""
    talk = capture_dialogue(host, cmd)
    out = next(talk)
    while True:
        if out.endswith("@@armed\n"):
            armed()
        said = yield out
        if out.endswith("@@armed\n"):
            return said
        out = talk.send(said)


async def test_a_host_that_stops_answering_mid_session_is_cut_off(tmp_path: Path) -> None:
    fakes = hosts(backend=FakeHost("backend", remote_dir="/tmp/capture-all.BACKAAAA"))
    fakes["backend"].dialogues["capture"] = silent_after_listing
    with anyio.fail_after(20):
        _, recs = await go(tmp_path, fakes, step_timeout=0.5, grace=0)  # finish waits grace + 5 s more
    assert recs["backend"].error_kind == "timeout" and recs["backend"].failed_phase == "finish"
    assert "stopping the capture" in (recs["backend"].error or "")
    assert recs["client"].status == "ok"
    # The session's line is in commands.jsonl all the same, and the host was asked to clean up.
    logged = [json.loads(x) for x in (tmp_path / "b/backend/commands.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in logged] == ["capture", "cleanup"]


def stalled_login(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    """A login that never hands over to our script (its ~/.bashrc waits on a lock)."""
    while True:
        yield ""


async def test_a_login_that_stalls_is_cut_off_with_what_it_said_on_stderr(tmp_path: Path) -> None:
    """The case of a CI run: every lab host's ~/.bashrc waited on pyenv's stale lock file. The
    host's one line says so, from its stderr; the others are not held up."""
    stalled = FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA", stderr={"capture": (
        "pyenv: cannot rehash: couldn't acquire lock /root/.pyenv/shims/.pyenv-shim for 60 seconds. "
        "Last error message:\n"
        "/root/.pyenv/libexec/pyenv-rehash: line 22: /root/.pyenv/shims/.pyenv-shim: cannot overwrite existing file\n"
    )})  # fmt: skip
    stalled.dialogues["capture"] = stalled_login
    fakes = hosts(proxy=stalled)
    with anyio.fail_after(20):
        _, recs = await go(tmp_path, fakes, step_timeout=0.5)
    proxy = recs["proxy"]
    assert (proxy.status, proxy.error_kind, proxy.failed_phase) == ("failed", "timeout", "prepare")
    assert (proxy.error or "").startswith("capture: no answer within 0.5 s (preflight); its stderr: ")
    assert "couldn't acquire lock /root/.pyenv/shims/.pyenv-shim" in (proxy.error or "")
    assert "cannot overwrite existing file" in (proxy.error or "")
    assert recs["client"].status == recs["backend"].status == "ok"


async def test_sudo_refusal_and_preflight_refusal_are_named(tmp_path: Path) -> None:
    sudo_no = FakeHost("proxy", answers={"capture": CommandResult(None, 1, "", "sudo: a password is required\n")})  # type: ignore[arg-type]
    no_tcpdump = FakeHost(
        "backend",
        answers={
            "capture": CommandResult(
                None, 11, "@@section preflight\nuid=0\n@@fail no_tcpdump tcpdump is not installed\n", ""
            )  # type: ignore[arg-type]
        },
    )
    inv = INV.model_copy(update={"ssh": INV.ssh.model_copy(update={"sudo": True})})
    bundle = Bundle.create(tmp_path / "b")
    result = await run_capture(
        build_plan(FLOW, inv), FakeConnector(hosts(proxy=sudo_no, backend=no_tcpdump)), bundle, RunOptions(duration=0.1)
    )
    recs = {r.name: r for r in result.records}
    assert recs["proxy"].error_kind == "no_privilege" and "sudo -n refused" in (recs["proxy"].error or "")
    assert recs["backend"].error_kind == "no_tcpdump" and recs["backend"].error == "tcpdump is not installed"
    assert recs["proxy"].failed_phase == recs["backend"].failed_phase == "prepare"
    # The exact command and its stderr are kept for the person reading the bundle.
    logged = [json.loads(x) for x in (tmp_path / "b/proxy/commands.jsonl").read_text().splitlines()]
    assert logged[0]["phase"] == "capture" and logged[0]["exit_status"] == 1
    assert "sudo: a password is required" in logged[0]["stderr"]
    assert recs["client"].status == "ok"


async def test_reproduce_runs_on_the_client_once_every_host_has_its_snapshot(tmp_path: Path) -> None:
    order: list[str] = []

    def noted(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        yield from capture_until_armed(host, cmd, lambda: order.append(f"armed {host.name}"))
        return (yield from finish_steps(host, cmd.interfaces))

    fakes = hosts()
    for f in fakes.values():
        f.dialogues["capture"] = noted
    fakes["client"].answers["reproduce"] = lambda cmd: (
        order.append("reproduce"),
        CommandResult(cmd, 56, "", "curl: (56) reset\n"),
    )[1]
    result, _ = await go(tmp_path, fakes, reproduce="curl http://10.1.0.2:443/")
    assert order[-1] == "reproduce" and sorted(order[:-1]) == ["armed backend", "armed client", "armed proxy"]
    assert result.reproduce_exit == 56
    assert "curl: (56) reset" in (tmp_path / "b/client/reproduce.txt").read_text()
    assert not any(c.phase == "reproduce" for c in fakes["proxy"].log)


def wrong_digest(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    yield from capture_until_armed(host, cmd)
    talk = finish_steps(host, cmd.interfaces)
    said = yield re.sub(r"^[0-9a-f]{64} ", "0" * 64 + " ", next(talk), flags=re.M)
    try:
        while True:
            said = yield talk.send(said)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def test_corrupted_transfer_is_caught(tmp_path: Path) -> None:
    bad = FakeHost("backend", remote_dir="/tmp/capture-all.BACKAAAA")
    bad.dialogues["capture"] = wrong_digest
    _, recs = await go(tmp_path, hosts(backend=bad))
    assert recs["backend"].error_kind == "transfer" and "SHA-256" in (recs["backend"].error or "")
    assert recs["backend"].remote_dir_removed  # still cleaned up
    assert bad.said[-1] == "rm"


async def test_stop_early_still_collects(tmp_path: Path) -> None:
    fakes = hosts()
    bundle = Bundle.create(tmp_path / "b")
    stop = anyio.Event()
    stop.set()
    with anyio.fail_after(5):
        result = await run_capture(
            build_plan(FLOW, INV), FakeConnector(fakes), bundle, RunOptions(duration=3600), stop_early=stop
        )
    assert result.interrupted and all(r.status == "ok" for r in result.records)


async def test_manifest_digests_verify(tmp_path: Path) -> None:
    from orchestrator.manifest import Manifest

    result, _ = await go(tmp_path, hosts())
    bundle = Bundle(tmp_path / "b")
    bundle.write_manifest(
        Manifest(
            version="t",
            created_utc="t",
            inventory="i",
            inventory_sha256="0",
            flow=FLOW.text,
            legs=[],
            options={},
            hosts=result.records,
        )
    )
    assert verify(tmp_path / "b") == []
    # SHA256SUMS: the same check with coreutils alone, manifest.json included.
    sums = (tmp_path / "b/SHA256SUMS").read_text().splitlines()
    assert any(line.endswith("  manifest.json") for line in sums) and any("client/eth0.pcap" in x for x in sums)
    check = await anyio.run_process(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=tmp_path / "b", check=False)
    assert check.returncode == 0, check.stdout
    (tmp_path / "b/client/eth0.pcap").write_bytes(b"tampered")
    assert verify(tmp_path / "b") == ["client/eth0.pcap: SHA-256 differs from the manifest"]
    check = await anyio.run_process(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=tmp_path / "b", check=False)
    assert check.returncode != 0 and b"client/eth0.pcap: FAILED" in check.stdout


async def test_analyze_of_a_modified_bundle_fails_loudly_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cli import EXIT_MODIFIED, EXIT_NOTHING_CAPTURED, main
    from orchestrator.manifest import Manifest

    result, _ = await go(tmp_path, hosts())
    m = Manifest(version="t", created_utc="t", inventory="i", inventory_sha256="0", flow=FLOW.text, legs=[],
                 options={}, hosts=result.records)  # fmt: skip
    Bundle(tmp_path / "b").write_manifest(m)
    b = str(tmp_path / "b")
    assert main(["analyze", b]) == EXIT_NOTHING_CAPTURED  # untouched: exit by what was found
    capsys.readouterr()
    (tmp_path / "b/proxy/before/nstat.txt").write_text("#kernel\nTcpOutRsts 9 0.0\n")  # a snapshot edited
    assert main(["analyze", b, "--json", "-o", str(tmp_path / "r")]) == EXIT_MODIFIED
    out, err = capsys.readouterr()
    said = "proxy/before/nstat.txt: SHA-256 differs from the manifest"
    assert f"capture-all: bundle modified: {said}" in err and len(err.strip().splitlines()) == 1
    assert json.loads(out)["integrity"] == {"verified": False, "problems": [said]}
    assert json.loads((tmp_path / "r/report.json").read_text())["integrity"]["verified"] is False
    assert (tmp_path / "r/report.md").read_text().startswith("> **Integrity: 1 file(s)")
    assert main(["analyze", b, "--allow-modified"]) == EXIT_NOTHING_CAPTURED
    assert "INTEGRITY: 1 file(s)" in capsys.readouterr().out.splitlines()[0]


BUG = ValueError("invalid literal for int(): '1700000000N'")


def bug_on_go(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    yield f"@@section preflight\nuid=0\ndir={host.remote_dir}\n@@ready\n"
    raise BUG


def bug_on_finish(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    yield from capture_until_armed(host, cmd)
    raise BUG


@pytest.mark.parametrize(
    ("phase", "where"), [("prepare", {"answers": {"capture": BUG}}), ("arm", {"dialogues": {"capture": bug_on_go}}),
                         ("finish", {"dialogues": {"capture": bug_on_finish}})]  # fmt: skip
)
async def test_a_bug_in_one_hosts_phase_is_that_hosts_outcome(tmp_path: Path, phase: str, where: dict) -> None:  # type: ignore[type-arg]
    """Any exception inside one host's phase (here the transport raising something no rule of
    ours expects) fails that host with error_kind internal and a debug log in the bundle; the
    other hosts' evidence is kept and the run goes on."""
    backend = FakeHost("backend", remote_dir="/tmp/capture-all.BACKAAAA")
    for attr, value in where.items():
        getattr(backend, attr).update(value)
    fakes = hosts(backend=backend)
    _, recs = await go(tmp_path, fakes)
    rec = recs["backend"]
    assert (rec.status, rec.error_kind, rec.failed_phase) == ("failed", "internal", phase)
    assert "ValueError" in (rec.error or "") and "backend/debug.log" in (rec.error or "")
    log = (tmp_path / "b/backend/debug.log").read_text()
    assert "Traceback" in log and "1700000000N" in log
    assert recs["client"].status == recs["proxy"].status == "ok"
    assert (tmp_path / "b/proxy/eth1.pcap").read_bytes() == fakes["proxy"].pcap


def garbage_arm(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    said = yield f"@@section preflight\nuid=0\ndir={host.remote_dir}\n@@ready\n"
    said = yield "@@section arm\njob_pid=42x\npid eth0 5000\n@@section probe\nnow_ns=1700000000N\n@@probe ns\n"
    said = yield from probe(host, said)
    return "@@section witness\nstate=\nswept=x\n", 0


async def test_an_unparseable_arm_reply_does_not_lose_the_host(tmp_path: Path) -> None:
    client = FakeHost("client", remote_dir="/tmp/capture-all.CLIEAAAA")
    client.dialogues["capture"] = garbage_arm
    _, recs = await go(tmp_path, hosts(client=client))
    assert recs["client"].status == "ok" and recs["client"].remote_armed_ns is None
    assert all(r.status == "ok" for r in recs.values())


async def test_a_failure_after_the_capture_started_costs_the_extras_not_the_capture(tmp_path: Path) -> None:
    def snapshot_fails(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        said = yield f"@@section preflight\nuid=0\ndir={host.remote_dir}\n@@ready\n"
        said = yield f"@@section arm\n@@section probe\nnow_ns={time.time_ns()}\n@@probe ns\n"
        said = yield from probe(host, said)
        return "sh: 1: ip: not found\n", 2

    proxy = FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA")
    proxy.dialogues["capture"] = snapshot_fails
    _, recs = await go(tmp_path, hosts(proxy=proxy))
    assert recs["proxy"].status == "ok" and (tmp_path / "b/proxy/eth1.pcap").exists()
    assert any("after the capture started, the capture session failed: capture exited 2" in n
               for n in recs["proxy"].notes)  # fmt: skip
    # Its finish then ran in a session of its own.
    assert [c.phase for c in proxy.log if c.phase != "audit"] == ["capture", "finish"]


async def test_a_stalled_reproducer_does_not_hold_the_run_past_its_window(tmp_path: Path) -> None:
    fakes = hosts(client=FakeHost("client", remote_dir="/tmp/capture-all.CLIEAAAA", delays={"reproduce": 30.0}))
    events: list[tuple[str, str, str]] = []
    started = anyio.current_time()
    _, recs = await go(tmp_path, fakes, events, reproduce="sleep 30", grace=1)
    assert anyio.current_time() - started < 10  # duration 0.1 s + grace 1 s, not the reproducer's 30 s
    assert all(r.status == "ok" for r in recs.values())
    assert any(s == "warning" and "still running after the window" in d for _, s, d in events), events


async def test_a_capture_session_lost_in_the_window_is_finished_over_a_new_connection(tmp_path: Path) -> None:
    def drops(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        yield from capture_until_armed(host, cmd)
        raise ConnectionLost(host.name, "connection lost during capture: Connection reset by peer")

    proxy = FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA")
    proxy.dialogues["capture"] = drops
    events: list[tuple[str, str, str]] = []
    _, recs = await go(tmp_path, hosts(proxy=proxy), events)
    assert recs["proxy"].status == "ok" and (tmp_path / "b/proxy/eth1.pcap").exists()
    assert [c.phase for c in proxy.log if c.phase != "audit"] == ["capture", "finish"] and proxy.said[-1] == "rm"
    assert ("proxy", "reconnecting", "connection lost while stopping the capture") in events
    logged = [json.loads(x)["phase"] for x in (tmp_path / "b/proxy/commands.jsonl").read_text().splitlines()]
    assert [p for p in logged if p != "audit"] == ["capture", "finish"] and "audit" in logged


def _probe_at(host: FakeHost) -> int | None:
    """Where the host heard "probe": its index among the controller's lines, or None."""
    return host.said.index("probe") if "probe" in host.said else None


async def test_the_end_probe_is_taken_before_the_window_ends_and_spares_the_finish(tmp_path: Path) -> None:
    fakes = hosts(proxy=FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA", clock_offset_ns=-700_000_000))
    _, recs = await go(tmp_path, fakes, duration=1.6)  # the probe starts 1.5 s before the end
    for name, f in fakes.items():
        at = _probe_at(f)
        assert at is not None and f.said.index("finish") > at, (name, f.said)
        after = f.said[f.said.index("finish") :]
        assert "t" not in after and "t (x" not in " ".join(after), after  # the finish probed no more
        assert [p.phase for p in recs[name].clock_probes] == ["start", "end"]
    end = recs["proxy"].clock_probes[1]
    assert abs(end.offset_ns + 700_000_000) <= end.bound_ns and end.samples == PROBE_SAMPLES - 1


async def test_a_short_window_or_a_stop_leaves_the_end_probe_to_the_finish(tmp_path: Path) -> None:
    fakes = hosts()
    _, recs = await go(tmp_path, fakes, duration=0.05)  # under LATE_PROBE_LAST_S: no time for it
    stop = anyio.Event()
    stop.set()
    stopped = hosts()
    with anyio.fail_after(5):  # a Ctrl-C before the probe's time: nothing waits for it
        result = await run_capture(build_plan(FLOW, INV), FakeConnector(stopped), Bundle.create(tmp_path / "s"),
                                   RunOptions(duration=3600), stop_early=stop)  # fmt: skip
    by_name = {r.name: r for r in result.records}
    for f, r in [*((fakes[n], recs[n]) for n in fakes), *((stopped[n], by_name[n]) for n in stopped)]:
        assert _probe_at(f) is None and r.status == "ok", f.said
        assert f.said.count("t") == 2 * PROBE_SAMPLES and [p.phase for p in r.clock_probes] == ["start", "end"]


async def test_an_end_probe_that_runs_past_the_window_holds_up_only_its_own_hosts_finish(tmp_path: Path) -> None:
    def slow_end_probe(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        said = yield from capture_until_armed(host, cmd)
        assert said == "probe"
        while True:  # it heard "probe" and never answers: its probe ends with the step's deadline
            yield ""

    stopped: dict[str, float] = {}

    def finishing(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        said = yield from capture_until_armed(host, cmd)
        while said == "probe":  # the end's probe in the window, as the healthy host answers it
            said = yield f"@@section probe\nnow_ns={time.time_ns()}\n@@probe ns\n"
            said = yield from probe(host, said)
            said = yield "@@armed\n"
        stopped[host.name] = time.monotonic()
        assert said == "finish"
        return (yield from finish_steps(host, cmd.interfaces, probed=True))

    proxy = FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA")
    proxy.dialogues["capture"] = slow_end_probe
    fakes = hosts(proxy=proxy)
    for name in ("client", "backend"):
        fakes[name].dialogues["capture"] = finishing
    start = time.monotonic()
    _, recs = await go(tmp_path, fakes, duration=0.4, step_timeout=1.5)  # the probes start at once
    given_up = start + 1.5  # the proxy's probe ended no sooner (its step's deadline)
    assert len(stopped) == 2 and all(at < given_up - 0.5 for at in stopped.values()), (stopped, given_up)
    assert {n: r.status for n, r in recs.items()} == {"client": "ok", "proxy": "ok", "backend": "ok"}
    assert any("clock probe near the window's end failed" in n for n in recs["proxy"].notes)
    assert [p.phase for p in recs["proxy"].clock_probes] == ["start", "end"]  # its finish probed instead


async def test_a_host_lost_during_the_end_probe_is_finished_over_a_new_connection(tmp_path: Path) -> None:
    def drops_on_probe(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        said = yield from capture_until_armed(host, cmd)
        assert said == "probe"
        raise ConnectionLost(host.name, "connection lost during capture: Connection reset by peer")

    proxy = FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA")
    proxy.dialogues["capture"] = drops_on_probe
    _, recs = await go(tmp_path, hosts(proxy=proxy), duration=1.6)
    assert recs["proxy"].status == "ok" and (tmp_path / "b/proxy/eth1.pcap").exists()
    assert [c.phase for c in proxy.log if c.phase != "audit"] == ["capture", "finish"] and proxy.said[-1] == "rm"
    assert [p.phase for p in recs["proxy"].clock_probes] == ["start", "end"]  # the finish probed instead
    assert any("clock probe near the window's end failed" in n for n in recs["proxy"].notes)
