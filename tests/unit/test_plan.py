"""capture-all plan and every --help: what a newcomer reads before touching a host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[2]
FLOW = "10.20.2.17->10.20.4.18:443"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)  # fmt: skip


def test_plan_shows_each_hosts_filter_commands_privilege_and_bounds() -> None:
    done = cli("plan", "-i", "inventory.example.toml", "-f", FLOW, "-d", "20", "--max-packets", "5000")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "nothing was contacted" in out
    # The legs the inventory gives, and each host's exact filter (the run's own).
    assert "upstream leg 1 (lb-1 -> 10.30.7.55:8443): (tcp and host 10.30.7.55 and port 8443)" in out
    assert "filter: (tcp and host 10.30.7.55 and port 8443)\n" in out  # api-1: its leg only
    # The bounds with the values given: 20 s + 10 s grace, the packet cap on every tcpdump.
    assert "stops by itself after 30 s (duration 20 + grace 10)" in out
    assert out.count("-c 5000 ") == 6  # app-1 1, fw-1 2, lb-1 2, api-1 1 interfaces
    assert "tcpdump -i ens6 " in out and "-w <dir>/ens6.pcap" in out
    # Privilege per host, the jump host, the log read, the conntrack of the firewall.
    assert "ssh root@10.20.0.2:22" in out and "privilege: none (the login user is root)" in out
    assert "ssh ops@10.30.0.55:2222 via ops@10.20.0.18:22" in out
    assert "log /var/log/haproxy.log:" in out
    assert "conntrack -L -p tcp, the entries of port(s) 443,8443" in out
    assert "ss -tanpi '( sport = :8443 or dport = :8443 )'" in out


def test_plan_json_and_verbose_session_line() -> None:
    done = cli("plan", "-i", "inventory.example.toml", "-f", FLOW, "--json")
    facts = json.loads(done.stdout)
    assert [h["name"] for h in facts["hosts"]] == ["app-1", "fw-1", "lb-1", "api-1"]
    lb = facts["hosts"][2]
    assert lb["filter"] == "((tcp and host 10.20.4.18 and port 443) or (tcp and host 10.30.7.55 and port 8443))"
    # The session exactly as sent, our scripts by name: sudo -n, the host's own timeout, the interfaces.
    assert lb["session"].startswith('echo "@@ssh $SSH_CONNECTION"; sudo -n -- timeout -k 5 ')
    assert "<CAPTURE_SCRIPT: " in lb["session"] and lb["session"].endswith(" ens5 ens6")
    verbose = cli("plan", "-i", "inventory.example.toml", "-f", FLOW, "-v", "--hosts", "fw-1").stdout
    assert "    session: echo \"@@ssh $SSH_CONNECTION\"; timeout -k 5 " in verbose  # fw-1 logs in as root: no sudo


def test_plan_refuses_what_the_run_would_refuse() -> None:
    done = cli("plan", "-i", "inventory.example.toml", "-f", FLOW, "--reproduce-on", "nope")
    assert done.returncode == 2 and done.stderr.strip() == "capture-all: --reproduce-on: nope is not a host of this run"


def test_the_tcpdump_shown_is_read_from_the_job_script() -> None:
    from remote.scripts import JOB_SCRIPT, capture_tcpdump

    line = capture_tcpdump()
    assert line.startswith('timeout -s INT -k 5 "$limit" "$tcpdump" -i "$i"') and line.endswith('"$filter"')
    assert all(word in JOB_SCRIPT for word in line.split())


@pytest.mark.parametrize("command", ["", *SUBCOMMANDS])
def test_every_help_has_examples_and_exit_statuses(command: str) -> None:
    done = cli(*([command] if command else []), "--help")
    assert done.returncode == 0, done.stderr
    assert "\nexamples:\n  capture-all " in done.stdout and "\nexit status:\n    0  " in done.stdout
    if not command:  # the top level lists every command, capture the default
        for name in ("capture", *SUBCOMMANDS):
            assert f"\n  {name:<8}  " in done.stdout
        for code in ("    1  internal", "    2  bad input", "  130  abandoned"):
            assert code in done.stdout


def test_capture_is_also_a_word() -> None:
    a = cli("capture", "-i", "inventory.example.toml", "-f", "x")
    assert a.returncode == 2 and "--flow 'x'" in a.stderr


@pytest.mark.parametrize("argv", [["--help"], ["plan", "-i", "inventory.example.toml", "-f", FLOW]])
def test_help_and_plan_load_neither_the_scanner_nor_the_ssh_stack(argv: list[str]) -> None:
    code = (
        "import sys, contextlib, io\n"
        "from orchestrator.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    try: main({argv!r})\n"
        "    except SystemExit: pass\n"
        "print(sorted(m for m in ('numba', 'numpy', 'analysis.scan', 'asyncssh') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                          env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.stdout.strip() == "[]", done.stderr


def test_quiet_progress_prints_nothing() -> None:
    import io

    from orchestrator.progress import Progress

    out = io.StringIO()
    p = Progress(["a"], out, live=False, quiet=True)
    p("a", "connecting", "10.0.0.1:22")
    p("*", "armed", "")
    assert out.getvalue() == ""
