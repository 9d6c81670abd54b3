"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing contacted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--flow", "nonsense", "-i", "inventory.example.toml"],
            "--flow 'nonsense': expected CLIENT[:PORT]->SERVER:PORT",
        ),
        (["--flow", "10.0.0.1->10.0.0.2", "-i", "inventory.example.toml"], "needs a port"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "/nonexistent.toml"], "cannot read inventory"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "README.md"], "not valid TOML"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "inventory.example.toml", "--duration", "-1"], "must be greater"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "inventory.example.toml", "--max-bytes", "lots"], "not a size"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "inventory.example.toml", "--hosts", "nope"], "--hosts: nope"),
        (["--flow", "10.0.0.1->10.0.0.2:80"], "required: -i/--inventory"),
        (
            ["--flow", "10.0.0.1->10.0.0.2:80", "-i", "inventory.example.toml", "--witness-buffer", "1G"],
            "--witness-buffer: at most 64M per CPU",
        ),
        (["analyze", "/nonexistent"], "not a capture-all bundle"),
        (["anlyze", "x"], "unknown command 'anlyze'; did you mean 'capture-all analyze'?"),
        (["frobnicate"], "unknown command 'frobnicate' (commands: watch, analyze, plan, init, audit, schema)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    done = cli(*args, "--out", str(tmp_path / "b")) if args[0].startswith("-") else cli(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capture-all: "), done.stderr
    assert needle in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists()  # nothing was created, nobody was contacted


def test_broken_inventory_names_host_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "inv.toml"
    bad.write_text(
        (ROOT / "inventory.example.toml")
        .read_text()
        .replace('interfaces = ["ens5", "ens6"]', 'interfaces = ["ens5", "$(reboot)"]')
    )
    done = cli("--flow", "10.20.2.17->10.20.4.18:443", "-i", str(bad))
    assert done.returncode == 2
    assert done.stderr.startswith(f"capture-all: {bad}: hosts[2] (lb-1): interfaces: [1]:")
    assert len(done.stderr.strip().splitlines()) == 1


def _bundle(root: Path) -> Path:
    """A tiny hand-made bundle: one host, one capture with a reset leaving it."""
    from tests.pcapgen import ethernet, pcap, tcp_packet

    (root / "srv").mkdir(parents=True)
    rst = tcp_packet("198.18.3.10", "198.18.1.10", 80, 40000, 0x14, seq=5, ack=6)
    (root / "srv/eth1.pcap").write_bytes(pcap([(1_795_000_000 * 10**9, ethernet(rst))]))
    manifest = {"flow": "198.18.1.10->198.18.3.10:80", "files": {},
                "hosts": [{"name": "srv", "role": "backend", "status": "ok", "addresses": ["198.18.3.10"],
                           "captures": [{"interface": "eth1", "path": "srv/eth1.pcap"}]}]}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: {}, "manifest.json: hosts: missing or not a list"),
        (lambda m: {**m, "hosts": [{**m["hosts"][0], "name": "../../etc"}]}, "hosts[0].name: missing, or not a folder"),
        (lambda m: {**m, "hosts": [{**m["hosts"][0], "captures": [{"interface": "eth1", "path": "/etc/shadow"}]}]},
         "hosts[0] (srv).captures[0]: needs an interface and a path inside the bundle"),
        (lambda m: {**m, "hosts": [{**m["hosts"][0], "role": 7}]}, "hosts[0] (srv).role: not a str"),
    ],
)  # fmt: skip
def test_a_bad_manifest_is_one_line_naming_the_field(tmp_path: Path, edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    root = _bundle(tmp_path / "b")
    (root / "manifest.json").write_text(json.dumps(edit(json.loads((root / "manifest.json").read_text()))))
    done = cli("analyze", str(root))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr, done.stderr


def test_analyze_never_writes_into_the_bundle(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for p in [root, *root.rglob("*")]:
        p.chmod(0o500 if p.is_dir() else 0o400)
    try:
        done = cli("analyze", str(root))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "srv's own TCP stack sent the first reset" in done.stdout
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
        done = cli("analyze", str(root), "-o", str(tmp_path / "reports"))
        assert done.returncode == 0 and (tmp_path / "reports/report.json").is_file()
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o700)


def test_an_unreadable_capture_is_named_and_the_rest_analysed(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b")
    (root / "srv/eth1.pcap").unlink()
    (root / "srv/eth1.pcap").mkdir()  # unreadable as a file, whoever we are (root reads anything else)
    done = cli("analyze", str(root))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 7 and "srv/eth1: srv/eth1.pcap cannot be read (Is a directory)" in done.stdout


def test_a_pcap_that_is_not_a_capture_is_bad_input() -> None:
    done = cli("analyze", "--pcap", "client=inventory.example.toml")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--pcap 'client=inventory.example.toml': not a pcap or pcapng file" in done.stderr


def test_every_folder_of_a_bundle_is_private(tmp_path: Path) -> None:
    from orchestrator.bundle import Bundle

    b = Bundle.create(tmp_path / "b")
    b.write("host/witness/witness.trace", "x")  # its first file, two folders deep
    b.append_jsonl("other/commands.jsonl", {"a": 1})
    b.folder("third", "before")
    for p in (tmp_path / "b").rglob("*"):
        assert p.stat().st_mode & 0o077 == 0, p


def _frames(text: str) -> list[list[str]]:
    """The live table's frames as written: each starts where the cursor went back up."""
    import re

    frames = []
    for chunk in re.split(r"(?:\x1b\[F)+", text):
        rows = [ln.replace("\x1b[2K", "").replace("\x1b[J", "") for ln in chunk.split("\n") if ln]
        if rows:
            frames.append(rows)
    return frames


def test_a_hundred_hosts_live_table_is_redrawn_a_few_times_and_fits_the_terminal() -> None:
    """700 host events within one instant: one redraw (not 700: that was 4 MB for a terminal over
    SSH), the run's own lines at once, the last states at close; on a 24-line terminal every
    frame fits, a line per state with its count, and the failed host named with its reason."""
    import io

    from orchestrator.progress import Progress

    now = [100.0]
    hosts = [f"h{i}" for i in range(100)]
    out = io.StringIO()
    p = Progress(hosts, out, live=True, size=(80, 24), clock=lambda: now[0])
    for state in ("connecting", "preparing", "ready", "listening", "stopping", "pulling", "done"):
        for h in hosts:
            p(h, state, "198.19.1.10:22")
    p("h7", "failed", "finish: cannot pull eth1.pcap")
    assert len(_frames(out.getvalue())) == 1  # the first event's
    p("*", "collected", "99/100 hosts ok")
    now[0] += 0.1
    p("h8", "done", "")  # within the limit: held back...
    p.close()  # ...and drawn at the end
    frames = _frames(out.getvalue())
    assert len(frames) == 3 and len(out.getvalue()) < 20_000
    assert all(len(f) <= 23 and all(len(ln) < 80 for ln in f) for f in frames)
    last = frames[-1]
    assert last[0].split(":")[0].split() == ["done", "99"] and " h0 h1 h2 " in last[0]
    assert last[1].split(":")[0].split() == ["failed", "1"]
    assert any("h7" in ln and "cannot pull eth1.pcap" in ln for ln in last[2:])
    assert last[-1] == "  collected 99/100 hosts ok"
    # A terminal shorter than the states: the first ones and the run's line, never more rows.
    tiny = Progress(hosts, io.StringIO(), live=True, size=(40, 6))
    for i, h in enumerate(hosts):
        tiny(h, ("connecting", "preparing", "ready", "listening", "stopping", "pulling", "failed")[i % 7], "x")
    assert len(tiny.lines()) == 5 and tiny.lines()[-1] == "  " and all(len(ln) < 40 for ln in tiny.lines())


def test_a_few_hosts_live_table_is_a_line_each_and_redraws_once_time_has_passed() -> None:
    import io

    from orchestrator.progress import Progress

    now = [0.0]
    out = io.StringIO()
    p = Progress(["client", "proxy"], out, live=True, size=(80, 24), clock=lambda: now[0])
    p("client", "connecting", "10.0.0.1:22")
    now[0] += 0.3
    p("proxy", "connecting", "10.0.0.2:22")
    frames = _frames(out.getvalue())
    assert len(frames) == 2
    assert [ln.split()[:2] for ln in frames[-1][:2]] == [["client", "connecting"], ["proxy", "connecting"]]


def test_progress_draws_a_table_only_on_a_terminal_that_can_and_stamps_lines_in_utc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import time

    from orchestrator.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm")
    assert Progress(["a"], Tty()).live is True
    monkeypatch.setenv("TERM", "dumb")
    out = Tty()
    p = Progress(["a"], out)
    assert p.live is False
    p("a", "connecting", "10.0.0.1:22")
    assert "\x1b" not in out.getvalue()
    stamp, rest = out.getvalue().split(" ", 1)
    assert rest == "[a] connecting: 10.0.0.1:22\n"
    assert stamp.endswith("Z") and abs(int(stamp[:2]) - time.gmtime().tm_hour) in (0, 1, 23)


@pytest.mark.parametrize("live", [False, True])
def test_host_text_reaches_the_terminal_escaped(live: bool) -> None:
    """A host's words (a failure's text, a log line) with ESC sequences, a CR, a newline and a C1
    CSI: none reaches the terminal raw (issue 29.8): they could clear the screen, retitle it, or
    forge a line that looks like ours."""
    import io

    from orchestrator.progress import Progress, printable

    evil = "busy \x1b]0;owned\x07\x1b[2J\rproxy ok\n[run] collected: 4/4 hosts ok \x9b31m"
    out = io.StringIO()
    p = Progress(["proxy"], stream=out, live=live, size=(120, 40))
    p("proxy", "failed", evil)
    p.close()
    text = out.getvalue()
    assert "\x1b]" not in text and "\x1b[2J" not in text and "\x9b" not in text and "\r" not in text
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x0dproxy ok\\x0a[run] collected" in text
    assert text.count("\n") == (1 if not live else len(p.lines()))
    assert printable("tab\tstays") == "tab\tstays"
