"""What reaches a remote shell: constant scripts, values as single quoted words, validated."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from remote import commands
from remote.commands import UnsafeValue

HOSTILE = ["$(reboot)", "`id`", "a; rm -rf /", "x' 'y", 'q"q', "new\nline", "--help", "*"]


def argv_after_script(line: str, script: str) -> list[str]:
    """What the remote `sh -c SCRIPT capture-all ...` receives as $1..."""
    words = shlex.split(line.split("; ", 1)[-1] if line.startswith("echo") else line)
    i = next(k for k, w in enumerate(words) if w.endswith(script))  # after the exit-code preamble
    assert words[i - 1] == "-c" and words[i + 1] == "capture-all"
    return words[i + 2 :]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_filter_and_command_stay_single_words(value: str) -> None:
    cmd = commands.arm(
        "/tmp/capture-all.AbCdEf12",
        ["eth0"],
        value,
        tcpdump="/usr/sbin/tcpdump",
        limit_s=10,
        max_packets=1,
        max_bytes=1,
        snaplen=1,
        keep_s=1,
        witness_kb=256,
        sudo=True,
    )
    assert argv_after_script(cmd.line, commands.ARM_SCRIPT)[7] == value
    assert shlex.split(cmd.line)[:3] == ["sudo", "-n", "--"]
    rep = commands.reproduce(value, timeout_s=5)
    assert shlex.split(rep.line)[-1] == value and shlex.split(rep.line)[-2] == "-c"


@pytest.mark.parametrize("value", HOSTILE + ["", "eth0/../x", "a" * 16, ".."])
def test_hostile_interface_names_never_reach_a_shell(value: str) -> None:
    with pytest.raises(UnsafeValue):
        commands.prepare("/tmp", [value], min_free_kb=1, sudo=False)


@pytest.mark.parametrize(
    "path",
    [
        "/etc",
        "/tmp/capture-all.AbCdEf12/..",
        "/tmp/../etc/capture-all.AbCdEf12",
        "tmp/capture-all.AbCdEf12",
        "/tmp/capture-all.AbCdEf1",
        "/tmp/capture-all.$(id)xx",
        "/tmp/x/capture-all.AbCdEf12/y",
    ],
)
def test_only_our_own_mktemp_dirs_are_touched(path: str) -> None:
    with pytest.raises(UnsafeValue):
        commands.cleanup(path, sudo=False)
    with pytest.raises(UnsafeValue):
        commands.finish(path, ["eth0"], wait_s=1, sudo=False)


def test_every_line_is_bounded_on_the_host() -> None:
    lines = [
        commands.prepare("/tmp", ["eth0"], min_free_kb=1, sudo=True),
        commands.arm(
            "/tmp/capture-all.AbCdEf12",
            ["eth0"],
            "tcp",
            tcpdump="/usr/sbin/tcpdump",
            limit_s=40,
            max_packets=1,
            max_bytes=1,
            snaplen=1,
            keep_s=1,
            witness_kb=0,
            sudo=False,
        ),
        commands.finish("/tmp/capture-all.AbCdEf12", ["eth0"], wait_s=15, sudo=False, conntrack_ports=(443, 8443)),
        commands.cleanup("/tmp/capture-all.AbCdEf12", sudo=False),
        commands.reproduce("true", timeout_s=7),
    ]
    for cmd in lines:
        words = shlex.split(cmd.line.split("; ", 1)[1] if cmd.line.startswith("echo") else cmd.line)
        words = words[3:] if words[0] == "sudo" else words
        assert words[0] == "timeout" and int(words[3]) <= cmd.timeout
    # The capture job itself carries its own limit: duration + grace, whatever the controller does.
    arm = argv_after_script(lines[1].line, commands.ARM_SCRIPT)
    assert arm[0] == commands.JOB_SCRIPT and arm[2] == "40"
    assert 'timeout -s INT -k 5 "$limit"' in commands.JOB_SCRIPT


def test_cleanup_script_removes_only_its_dir(tmp_path: Path) -> None:
    """Run the real cleanup line with a local sh: the dir goes, its sibling stays."""
    target = tmp_path / "capture-all.AbCdEf12"
    target.mkdir()
    (target / "x.pcap").write_bytes(b"x")
    sibling = tmp_path / "keep"
    sibling.mkdir()
    cmd = commands.cleanup(str(target), sudo=False)
    done = subprocess.run(["sh", "-c", cmd.line], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not target.exists() and sibling.exists()
    assert f"removed={target}" in done.stdout


def test_conntrack_ports_are_integers_in_range() -> None:
    cmd = commands.finish("/tmp/capture-all.AbCdEf12", ["eth0"], wait_s=1, sudo=False, conntrack_ports=(443, 8443))
    assert cmd.args[2] == "443,8443"
    assert commands.finish("/tmp/capture-all.AbCdEf12", ["eth0"], wait_s=1, sudo=False).args[2] == ""
    for bad in (0, 70000):
        with pytest.raises(UnsafeValue):
            commands.finish("/tmp/capture-all.AbCdEf12", ["eth0"], wait_s=1, sudo=False, conntrack_ports=(bad,))


def test_the_scripts_exit_codes_are_the_python_constants() -> None:
    line = commands.prepare("/tmp", ["eth0"], min_free_kb=1, sudo=False).line
    script = shlex.split(line.split("; ", 1)[1])[6]
    assert script.startswith(f"E_NO_TOOL={commands.EXIT_NO_TOOL} ") and "exit $E_NO_TOOL" in script
    for code in (11, 12, 13, 14, 15):
        assert f"exit {code}" not in commands.PREPARE_SCRIPT + commands.ARM_SCRIPT + commands.FINISH_SCRIPT


@pytest.mark.parametrize("path", ["tcpdump", "/usr/sbin/tcpdump; reboot", "/usr/../bin/sh", "/a b"])
def test_the_tcpdump_path_is_a_plain_absolute_path(path: str) -> None:
    with pytest.raises(UnsafeValue):
        commands.validate_tool_path(path)
