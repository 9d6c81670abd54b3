"""What reaches a remote shell: constant scripts, values as single quoted words, validated."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from remote import commands, scripts
from remote.commands import UnsafeValue

HOSTILE = ["$(reboot)", "`id`", "a; rm -rf /", "x' 'y", 'q"q', "new\nline", "--help", "*"]


def arm(interfaces: list[str] | None = None, sudo: bool = False, **kw: object) -> commands.RemoteCommand:
    values: dict[str, object] = dict(min_free_kb=1, limit_s=40, max_packets=1, max_bytes=1, snaplen=1, keep_s=1,
                                     witness_kb=0, ports=(443,), wait_s=15, sudo=sudo)  # fmt: skip
    values.update(kw)
    return commands.capture("/tmp", interfaces or ["eth0"], **values)  # type: ignore[arg-type]


def argv_after_script(line: str, script: str) -> list[str]:
    """What the remote `sh -c SCRIPT capture-all ...` receives as $1..."""
    words = shlex.split(line.split("; ", 1)[-1] if line.startswith("echo") else line)
    i = next(k for k, w in enumerate(words) if w.endswith(script))  # after the exit-code preamble
    assert words[i - 1] == "-c" and words[i + 1] == "capture-all"
    return words[i + 2 :]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_reproduce_command_stays_one_word(value: str) -> None:
    rep = commands.reproduce(value, timeout_s=5)
    assert shlex.split(rep.line)[-1] == value and shlex.split(rep.line)[-2] == "-c"


def test_the_filter_is_never_on_a_command_line() -> None:
    """The capture filter reaches the host over the session's stdin (``go FILTER``), where `read -r`
    takes it as data; no command line carries it (see test_scripts for what the host does with it)."""
    cmd = arm()
    assert "go " not in " ".join(cmd.args[:4] + cmd.args[5:])
    assert 'IFS= read -r said' in scripts.CAPTURE_SCRIPT and 'printf \'%s\\n\' "$said" >&3' in scripts.CAPTURE_SCRIPT
    assert '"$filter" 2>' in scripts.JOB_SCRIPT  # one quoted argument of tcpdump, never evaluated


@pytest.mark.parametrize("value", HOSTILE + ["", "eth0/../x", "a" * 16, ".."])
def test_hostile_interface_names_never_reach_a_shell(value: str) -> None:
    with pytest.raises(UnsafeValue):
        arm([value])


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
        arm(sudo=True),
        commands.finish("/tmp/capture-all.AbCdEf12", ["eth0"], wait_s=15, sudo=False, ports=(443, 8443)),
        commands.cleanup("/tmp/capture-all.AbCdEf12", sudo=False),
        commands.reproduce("true", timeout_s=7),
    ]
    for cmd in lines:
        words = shlex.split(cmd.line.split("; ", 1)[1] if cmd.line.startswith("echo") else cmd.line)
        words = words[3:] if words[0] == "sudo" else words
        assert words[0] == "timeout" and int(words[3]) <= cmd.timeout
    # The capture job itself carries its own limit: duration + grace, whatever the controller does,
    # and waits for "go" at most go_wait_s.
    job = argv_after_script(lines[0].line, scripts.CAPTURE_SCRIPT)
    assert job[4] == scripts.JOB_SCRIPT and job[5] == "40" and job[3] == str(commands.GO_WAIT_S)
    assert job[1] == commands.RUN_DIR
    assert 'timeout -s INT -k 5 "$limit"' in scripts.JOB_SCRIPT
    assert 'timeout "$gowait" head -n 1' in scripts.JOB_SCRIPT
    assert shlex.split(lines[0].line.split("; ", 1)[1])[:3] == ["sudo", "-n", "--"]


def test_cleanup_script_removes_only_its_dir(tmp_path: Path) -> None:
    """Run the real cleanup line with a local sh: the dir goes, its sibling stays."""
    target = tmp_path / "capture-all.AbCdEf12"
    target.mkdir()
    (target / "x.pcap").write_bytes(b"x")
    sibling = tmp_path / "keep"
    sibling.mkdir()
    cmd = commands.cleanup(str(target), sudo=False, rundir=str(tmp_path / "run"))
    done = subprocess.run(["sh", "-c", cmd.line], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not target.exists() and sibling.exists()
    assert f"removed={target}" in done.stdout


def test_ports_are_integers_in_range() -> None:
    cmd = commands.finish("/tmp/capture-all.AbCdEf12", ["eth0"], wait_s=1, sudo=False, ports=(443, 8443),
                          conntrack=True)  # fmt: skip
    assert cmd.args[3:5] == ("443,8443", "1")
    assert commands.finish("/tmp/capture-all.AbCdEf12", ["eth0"], wait_s=1, sudo=False).args[3:5] == ("", "0")
    for bad in (0, 70000):
        with pytest.raises(UnsafeValue):
            commands.finish("/tmp/capture-all.AbCdEf12", ["eth0"], wait_s=1, sudo=False, ports=(bad,))
        with pytest.raises(UnsafeValue):
            arm(ports=(bad,))


def test_the_scripts_exit_codes_are_the_python_constants() -> None:
    line = arm().line
    script = shlex.split(line.split("; ", 1)[1])[6]
    assert script.startswith(f"E_NO_TOOL={commands.EXIT_NO_TOOL} ") and "exit $E_NO_TOOL" in script
    for code in (11, 12, 13, 14, 15, 16):
        assert f"exit {code}" not in scripts.CAPTURE_SCRIPT + scripts.FINISH_SCRIPT + scripts.CLEANUP_SCRIPT


@pytest.mark.parametrize("value", [v for v in HOSTILE if v != "--help"] + ["a b", "x" * 201])
def test_a_hostile_run_label_never_reaches_a_shell(value: str) -> None:
    with pytest.raises(UnsafeValue):
        arm(holder=value)


def test_the_run_label_is_made_of_what_the_lock_file_takes(tmp_path: Path) -> None:
    from orchestrator.cli import holder_label

    label = holder_label(tmp_path / "pay resets; $(id)")
    assert commands.validate_holder(label) == label and label.endswith("/pay_resets____id_"), label
    assert "@" in label and str(tmp_path) in label
