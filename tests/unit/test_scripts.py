"""The host's side of the arm and finish sessions, run for real with a local sh (no SSH) and a fake
tcpdump that records its argv: the conversation, what reaches tcpdump, and what is left behind.

These run the scripts as root (they refuse otherwise, as on a host); outside CI a non-root run
skips them, under CI=true (root) they must run.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remote import commands
from remote.parse import parse_files, parse_finish, parse_inline, parse_preflight, parse_sections
from remote.scripts import SNAPSHOT_READS
from tests.needs import root, unavailable

PCAP = bytes.fromhex("4d3cb2a10200040000000000000000000000040001000000")
FAKE_TCPDUMP = f"""#!{sys.executable}
import os, signal, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_ARGS"], "ab") as f:
    f.write(b"\\0".join(a.encode() for a in args) + b"\\n\\0\\n")
open(args[args.index("-w") + 1], "wb").write(bytes.fromhex("{PCAP.hex()}"))
def stop(*_):
    # timeout sends the INT twice (to its child, then to its process group): tcpdump's C handler
    # prints and exits; Python's exit would restore the default handler, and the second one kill it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr.write("0 packets captured\\n0 packets received by filter\\n0 packets dropped by kernel\\n")
    sys.stderr.flush()
    os._exit(0)
signal.signal(signal.SIGINT, stop)  # before it says it listens, as tcpdump does
sys.stderr.write("tcpdump: listening on " + args[args.index("-i") + 1] + ", link-type EN10MB (Ethernet)\\n")
sys.stderr.flush()
while True:
    time.sleep(0.05)
"""


def without_bash(tmp_path: Path) -> str:
    """A PATH with every command of this machine's but bash: a host whose shell is sh alone."""
    nobash = tmp_path / "nobash"
    nobash.mkdir()
    for d in os.environ["PATH"].split(":") + ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = os.path.join(d, name)
            if name not in ("bash", "rbash") and not (nobash / name).exists() and os.access(target, os.X_OK):
                (nobash / name).symlink_to(target)
    return str(nobash)


@pytest.fixture(params=["bash", "sh only", "busybox ash"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A host as root: with bash (its waits and probes in one bash each), with sh (dash) alone, or
    with busybox's ash as its sh and no bash (Alpine's, a distroless node's)."""
    root("the host scripts refuse to capture unless root")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tcpdump"
    fake.write_text(FAKE_TCPDUMP)
    fake.chmod(0o755)
    base = tmp_path / "tmp"
    base.mkdir()
    # As under sshd: SSH_CLIENT set, a login file. A bash started with these sources ~/.bashrc
    # (Debian's SSH_SOURCE_BASHRC) unless told not to; this one says so when it runs.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text(f"echo ran >> {tmp_path / 'bashrc-ran'}\n")
    path = os.environ["PATH"] if request.param == "bash" else without_bash(tmp_path)
    if request.param == "busybox ash":
        busybox = shutil.which("busybox")
        if busybox is None:
            unavailable("busybox is not installed", "scripts/bootstrap --test installs it")
        (bin_dir / "sh").symlink_to(busybox)
    env = {**os.environ, "PATH": f"{bin_dir}:{path}", "FAKE_ARGS": str(tmp_path / "argv"),
           "HOME": str(home), "SSH_CLIENT": "198.19.0.1 40000 22", "SHLVL": "0",
           "TZ": "XYZ-05:30"}  # fmt: skip  (a host 5 h 30 min east of UTC: its snapshot says +0530)
    env.pop("SUDO_USER", None)
    shell = subprocess.run(["sh", "-c", "readlink /proc/$$/exe; :"], env=env, capture_output=True, text=True).stdout
    assert shell.strip().endswith("/busybox" if request.param == "busybox ash" else "/dash"), shell
    return {"base": str(base), "run": str(tmp_path / "run"), "argv": str(tmp_path / "argv"),
            "bashrc-ran": str(tmp_path / "bashrc-ran"),
            "probe": "@@probe us" if request.param == "bash" else "@@probe ns",
            **{f"env:{k}": v for k, v in env.items()}}  # fmt: skip


class Session:
    """One remote line run by a local sh, talked to over its stdin and stdout."""

    def __init__(self, line: str, host: dict[str, str]) -> None:
        env = {k[4:]: v for k, v in host.items() if k.startswith("env:")}
        self.proc = subprocess.Popen(["sh", "-c", line], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        self.lines: list[str] = []
        self.ss = ""  # the "before" snapshot's socket table, once a capture session has said it

    def until(self, marker: str | None) -> str | None:
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            line = line.rstrip("\n")
            if marker and line.startswith(marker):
                return line
            self.lines.append(line)
        return None

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def end(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        self.until(None)
        self.stderr = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.wait(10)


def ours(remote_dir: str) -> list[str]:
    """Processes whose argv mentions the directory."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if remote_dir.encode() in argv and pid.isdigit() and int(pid) != os.getpid():
            found.append(argv.replace(b"\0", b" ").decode(errors="replace"))
    return found


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def arm_line(host: dict[str, str], **kw: object) -> str:
    values: dict[str, object] = dict(min_free_kb=1, limit_s=30, max_packets=100, max_bytes=1 << 20, snaplen=262144,
                                     keep_s=60, witness_kb=0, ports=(443,), wait_s=5, sudo=False)  # fmt: skip
    values.update(kw)
    return commands.capture(host["base"], ["lo"], rundir=host["run"], **values).line  # type: ignore[arg-type]


def start_capture(host: dict[str, str], flt: str, port: int, **kw: object) -> tuple[Session, str]:
    """A capture session up to @@armed: (the session, its remote dir)."""
    arm = Session(arm_line(host, ports=(port,), **kw), host)
    assert arm.until("@@ready") == "@@ready"
    pre = parse_preflight(parse_sections("\n".join(arm.lines)))
    assert pre.uid == 0 and pre.tcpdump.endswith("/bin/tcpdump") and pre.remote_dir.startswith(host["base"])
    assert os.stat(pre.remote_dir).st_mode & 0o777 == 0o700
    arm.say("go " + flt)
    header = arm.until("@@probe")
    assert header == host["probe"], arm.lines  # bash's $EPOCHREALTIME, or `date` where sh is all there is
    for _ in range(3):
        arm.say("t")
        assert (arm.proc.stdout.readline().strip()).isdigit()  # type: ignore[union-attr]
    arm.say("snap")
    assert arm.until("@@armed") == "@@armed", arm.lines
    sections = parse_sections("\n".join(arm.lines)).sections
    assert "nstat" in sections and "ss_tanpi" in sections and sections["witness"].body.startswith("state=off")
    # The kernel's counter files as they are, line for line (sockstat by the shell's own loop, the
    # SNMP files by one `cat`): the same lines in the same order, only the numbers move.
    for name, files in (("sockstat", ("sockstat", "sockstat6")), ("nstat", ("snmp", "netstat", "snmp6"))):
        want = [ln.split()[0] for f in files if os.path.exists(f"/proc/net/{f}")
                for ln in Path(f"/proc/net/{f}").read_text().splitlines()]  # fmt: skip
        assert [ln.split()[0] for ln in sections[name].body.splitlines()] == want, name
    # The kernel's small files, whole, as `cat` reads them (dash's `read` took a byte a call, and
    # the kernel ends an integer /proc/sys file at a non-zero offset: 262144 came back as 2).
    kernel_files_are_whole(sections, KERNEL_BEFORE)
    # Each section the plan describes (SNAPSHOT_READS) is one the snapshot prints.
    assert {n for n, _, _ in SNAPSHOT_READS} <= set(sections), set(sections)
    # The "before" snapshot's clock and UTC offset: from the probe's bash, or `date` (sh alone).
    assert _clock_ns(sections) and re.fullmatch(r"[+-]\d{4}", sections["utc_offset"].body.strip()), sections
    assert sections["utc_offset"].body.strip() == "+0530"
    arm.ss = sections["ss_tanpi"].body
    return arm, pre.remote_dir


KERNEL_BEFORE = {"uname": "/proc/sys/kernel/osrelease", "conntrack_max": "/proc/sys/net/netfilter/nf_conntrack_max",
                 "port_range": "/proc/sys/net/ipv4/ip_local_port_range",
                 "conntrack_count": "/proc/sys/net/netfilter/nf_conntrack_count"}  # fmt: skip
KERNEL_AFTER = {"conntrack_count": KERNEL_BEFORE["conntrack_count"]}


def kernel_files_are_whole(sections: dict, files: dict[str, str]) -> None:  # type: ignore[type-arg]
    """Each section holds its file as `cat` prints it (conntrack_count may move between the reads)."""
    for name, path in files.items():
        sec = sections[name]
        if not os.path.exists(path):
            assert (sec.rc, sec.body.strip()) == (1, f"cannot read {path}"), (name, sec)
            continue
        want = subprocess.run(["cat", path], capture_output=True, text=True, check=True).stdout
        assert sec.rc == 0, (name, sec)
        if name == "conntrack_count":
            assert sec.body.strip().isdigit(), (name, sec.body)
        else:
            assert sec.body.rstrip("\n") == want.rstrip("\n"), (name, sec.body, want)


def _clock_ns(sections: dict) -> bool:  # type: ignore[type-arg]
    """The snapshot's clock_ns section: one time, within a minute of this machine's."""
    sec = sections.get("clock_ns")
    text = sec.body.strip() if sec is not None else ""
    return sec is not None and sec.rc == 0 and text.isdigit() and abs(int(text) - time.time_ns()) < 60 * 10**9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def finish_in(s: Session, remote_dir: str, probed: bool = False, own_session: bool = False) -> None:
    """From "finish" to the end: the listing, the probe (unless ``probed`` while the capture
    ran), the inline files, rm. ``own_session``: FINISH_SCRIPT's, whose snapshot is a whole one
    (the "before" may never have come back)."""
    if probed:  # no probe: the listing and the "after" snapshot at once
        assert s.until("@@listed") == "@@listed", s.lines
        assert not any(line.startswith("@@probe") for line in s.lines), s.lines
        listing = parsed = parse_sections("\n".join(s.lines))
    else:
        assert s.until("@@probe"), s.lines
        listing, s.lines = parse_sections("\n".join(s.lines)), []
        s.say("snap")
        assert s.until("@@listed") == "@@listed", s.lines
        parsed = parse_sections("\n".join(s.lines))
    assert "nstat" in parsed.sections and _clock_ns(parsed.sections)  # the "after" snapshot
    kernel_files_are_whole(parsed.sections, KERNEL_AFTER)
    # "after" reads again what moves, and only that, as the plan says
    reads = {n: after for n, _, after in SNAPSHOT_READS}
    assert {n for n, after in reads.items() if after} <= set(parsed.sections)
    if not own_session:
        assert not {n for n, after in reads.items() if not after} & set(parsed.sections), set(parsed.sections)
    done = parse_finish(listing)
    assert not done.already_done and done.exit_codes == {"lo": 0} and done.stats["lo"].captured == 0
    (pcap,) = done.files
    assert (pcap.name, pcap.size, pcap.sha256) == ("lo.pcap", len(PCAP), hashlib.sha256(PCAP).hexdigest())
    inline = parse_inline(parsed, parse_files(listing))  # the small files came inside the session
    assert inline["lo.pcap"] == PCAP and inline["witness.status"].startswith(b"state=off")
    s.say("rm")
    assert s.end() == 0, s.stderr
    assert f"removed={remote_dir}" in "\n".join(s.lines)
    assert not Path(remote_dir).exists()
    assert wait_for(lambda: ours(remote_dir) == []), ours(remote_dir)


def test_a_whole_capture_in_one_session(host: dict[str, str]) -> None:
    hostile = "tcp port 443 and $(touch /tmp/PWNED-capture-all) `touch /tmp/PWNED2-capture-all`; x' \"y"
    with socket.socket() as listener:  # a socket of the flow's port: the snapshot names its process
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        arm, remote_dir = start_capture(host, hostile, listener.getsockname()[1])
    assert f"pid={os.getpid()}," in arm.ss, arm.ss
    # The filter arrived as one argument of tcpdump, never evaluated by any shell.
    argv = Path(host["argv"]).read_bytes().split(b"\n\0\n")[0].split(b"\0")
    assert argv[-1].decode() == hostile and argv[:2] == [b"-i", b"lo"]
    assert not Path("/tmp/PWNED-capture-all").exists() and not Path("/tmp/PWNED2-capture-all").exists()
    arm.say("finish")
    finish_in(arm, remote_dir)
    # The probes ran in bash, and no bash of ours ran the host's login files again.
    assert not Path(host["bashrc-ran"]).exists()


def test_the_end_probe_while_the_capture_runs_spares_the_finish_its_probe(host: dict[str, str]) -> None:
    arm, remote_dir = start_capture(host, "tcp port 443", free_port())
    for _ in range(2):  # as often as the controller asks (a watch probes every few minutes)
        arm.say("probe")
        assert arm.until("@@probe") in ("@@probe us", "@@probe ns"), arm.lines
        for _ in range(3):
            arm.say("t")
            assert (arm.proc.stdout.readline().strip()).isdigit()  # type: ignore[union-attr]
        arm.say("snap")
        assert arm.until("@@armed") == "@@armed", arm.lines
    assert Path(remote_dir).is_dir() and not Path(remote_dir, "done").exists()  # still capturing
    arm.lines = []
    arm.say("finish")
    finish_in(arm, remote_dir, probed=True)


def test_a_capture_whose_session_was_lost_is_finished_by_a_session_of_its_own(host: dict[str, str]) -> None:
    arm, remote_dir = start_capture(host, "tcp port 443", free_port())
    # No socket of the flow's port here: the snapshot says so, without walking every process.
    assert len(arm.ss.splitlines()) == 1 and "users:" not in arm.ss, arm.ss
    assert arm.end() == 0  # EOF: the session stops; the capture goes on by itself
    assert any("tcpdump" in p or "capture-all-job" in p for p in ours(remote_dir)) and Path(remote_dir).is_dir()
    fin = Session(commands.finish(remote_dir, ["lo"], wait_s=5, sudo=False, ports=(443,), rundir=host["run"]).line,
                  host)  # fmt: skip
    finish_in(fin, remote_dir, own_session=True)


def test_a_controller_that_goes_away_before_go_leaves_nothing(host: dict[str, str]) -> None:
    arm = Session(arm_line(host), host)
    assert arm.until("@@ready") == "@@ready"
    remote_dir = parse_preflight(parse_sections("\n".join(arm.lines))).remote_dir
    assert Path(remote_dir).is_dir() and ours(remote_dir)  # the job waits for "go"
    arm.end()  # EOF on its stdin, as when the SSH connection drops
    assert wait_for(lambda: not Path(remote_dir).exists() and ours(remote_dir) == []), ours(remote_dir)
    assert not Path(host["argv"]).exists()  # no capture ever started
    assert locks(host) == []  # the job's lock went with its directory


def test_refusals_name_their_reason_and_leave_no_directory(host: dict[str, str]) -> None:
    line = commands.capture(host["base"], ["nosuch0"], min_free_kb=1, limit_s=30, max_packets=1, max_bytes=1,
                            snaplen=1, keep_s=1, witness_kb=0, ports=(), wait_s=5, sudo=False,
                            rundir=host["run"]).line  # fmt: skip
    s = Session(line, host)
    assert s.until("@@ready") is None and s.end() == commands.EXIT_NO_INTERFACE
    failure = parse_sections("\n".join(s.lines)).failure
    assert failure is not None and (failure.code, failure.text) == ("no_interface", "interface nosuch0 does not exist")
    s = Session(arm_line(host, min_free_kb=1 << 40), host)
    assert s.until("@@ready") is None and s.end() == commands.EXIT_LOW_DISK
    assert "low_disk" in "\n".join(s.lines)
    assert os.listdir(host["base"]) == []


def test_inline_files_are_cut_by_the_listed_sizes() -> None:
    a, b = b"first file", b"\x00\x01 second"
    text = "\n".join(
        ["@@section files", f"size {len(a)} /d/capture-all.X/a.pcap", f"size {len(b)} /d/capture-all.X/witness.trace",
         f"{hashlib.sha256(a).hexdigest()}  /d/capture-all.X/a.pcap",
         f"{hashlib.sha256(b).hexdigest()}  /d/capture-all.X/witness.trace",
         "@@section inline", "name a.pcap", "name witness.trace", base64.b64encode(a + b).decode(), "@@rc 0"]
    )  # fmt: skip
    parsed = parse_sections(text)
    files = parse_files(parsed)
    assert {f.name for f in files} == {"a.pcap", "witness.trace"}
    assert parse_inline(parsed, files) == {"a.pcap": a, "witness.trace": b}
    broken = parse_sections(text.replace("@@rc 0", "@@rc 1"))
    assert parse_inline(broken, files) == {}  # base64 failed on the host: they come over SFTP


def test_a_second_run_on_a_host_is_refused_while_the_first_captures(host: dict[str, str]) -> None:
    line = commands.capture(host["base"], ["lo"], min_free_kb=1, limit_s=30, max_packets=100, max_bytes=1 << 20,
                            snaplen=65535, keep_s=60, witness_kb=0, ports=(443,), wait_s=5, sudo=False,
                            holder="alice@bastion-1:/srv/incident-7", rundir=host["run"]).line  # fmt: skip
    first = Session(line, host)
    assert first.until("@@ready") == "@@ready"
    mine = parse_preflight(parse_sections("\n".join(first.lines))).remote_dir
    first.say("go tcp port 443")
    assert first.until("@@probe")
    # A second run while the first captures: one line naming the holder, nothing of its own left.
    second = Session(arm_line(host), host)
    assert second.until("@@ready") is None and second.end() == commands.EXIT_BUSY
    failure = parse_sections("\n".join(second.lines)).failure
    assert failure is not None and failure.code == "busy", second.lines
    assert "run=alice@bastion-1:/srv/incident-7" in failure.text and mine in failure.text
    assert re.search(r" since=20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", failure.text), failure.text
    assert os.listdir(host["base"]) == [Path(mine).name]  # the lock and the records: in the run directory
    assert os.stat(host["run"]).st_mode & 0o777 == 0o700 and os.stat(host["run"]).st_uid == 0
    first.say("snap")
    assert first.until("@@armed") == "@@armed"
    first.say("finish")
    finish_in(first, mine)
    assert os.listdir(host["base"]) == [] and os.listdir(host["run"]) == []  # the lock went with the directory
    # A lock whose holder is gone (a run killed with its directory) does not hold.
    ns = os.stat("/proc/self/ns/net").st_ino
    os.symlink(f"{host['base']}/capture-all.GONEGONE", Path(host["run"], f"capture-all.lock.{ns}"))
    Path(host["run"], "capture-all.GONEGONE.holder").write_text("run=gone\n")
    third, remote_dir = start_capture(host, "tcp port 443", free_port())
    assert os.readlink(Path(host["run"], f"capture-all.lock.{ns}")) == remote_dir
    assert not Path(host["run"], "capture-all.GONEGONE.holder").exists()  # the stale record went with its lock
    third.say("finish")
    finish_in(third, remote_dir)


def locks(host: dict[str, str]) -> list[str]:
    run = Path(host["run"])
    return [n for n in os.listdir(run) if n.startswith("capture-all.lock")] if run.is_dir() else []


def test_the_watch_window_keeps_the_ring_files_that_overlap_it_joined_in_time_order(tmp_path: Path) -> None:
    """ringcut (remote.scripts): a ring of four files, written one after the other (tcpdump -W
    reuses the numbers, so file order is not time order); the window [12 s, 21 s] keeps the files
    whose packets reach into it, joins them into IFACE.pcap oldest first, deletes the rest."""
    import dpkt

    from remote.scripts import _RINGCUT
    from tests.pcapgen import pcap

    d = tmp_path / "capture-all.AbCd1234"
    d.mkdir()
    s = 10**9
    t0 = 1_800_000_000 * s
    # file number: (first packet, last packet) after t0, in seconds
    spans = {2: (0, 9), 3: (10, 14), 0: (15, 19), 1: (25, 29)}
    for num, (a, b) in spans.items():
        f = d / f"eth0.pcap{num}"
        f.write_bytes(pcap([(t0 + a * s + k, b"\x00" * 60) for k in range(3)] + [(t0 + b * s, b"\x01" * 60)]))
        os.utime(f, ns=(t0 + b * s, t0 + b * s))  # tcpdump's last write
    (d / "eth0.pcap4").write_bytes(pcap([]))  # a file begun, no packet yet
    script = _RINGCUT + 'nl="\n"; dir=$1 wfrom=$2 wto=$3; ringcut eth0'
    out = subprocess.run(["sh", "-c", script, "t", str(d), str(t0 + 12 * s), str(t0 + 21 * s)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.splitlines() == ["ring eth0 2 5", f"reach eth0 {t0 + 10 * s}"]
    assert sorted(p.name for p in d.iterdir()) == ["eth0.pcap"]
    with (d / "eth0.pcap").open("rb") as fh:
        times = [int(ts * s) for ts, _ in dpkt.pcap.UniversalReader(fh)]
    assert times == sorted(times) and len(times) == 8
    assert times[0] == t0 + 10 * s and times[-1] == t0 + 19 * s
    # Without a window (wto 0) every file is kept.
    for num, (a, _) in spans.items():
        (d / f"eth0.pcap{num}").write_bytes(pcap([(t0 + a * s, b"\x00" * 60)]))
    (d / "eth0.pcap").unlink()
    out = subprocess.run(["sh", "-c", script, "t", str(d), "0", "0"], capture_output=True, text=True).stdout
    assert out.splitlines()[0] == "ring eth0 4 4"
    # A window no packet falls in is an empty capture (the header alone), not a missing one.
    for num, (a, b) in spans.items():
        (d / f"eth0.pcap{num}").write_bytes(pcap([(t0 + a * s, b"\x00" * 60)]))
        os.utime(d / f"eth0.pcap{num}", ns=(t0 + b * s, t0 + b * s))
    out = subprocess.run(["sh", "-c", script, "t", str(d), str(t0 + 40 * s), str(t0 + 45 * s)],
                         capture_output=True, text=True).stdout  # fmt: skip
    assert out.splitlines() == ["ring eth0 0 4"]
    assert sorted(p.name for p in d.iterdir()) == ["eth0.pcap"] and (d / "eth0.pcap").read_bytes() == pcap([])


@pytest.mark.parametrize("source", ["file", "journal"])
def test_the_log_trigger_says_the_first_matching_line_and_ends_with_the_capture_job(
    tmp_path: Path, source: str
) -> None:
    """LOG_TRIGGER_SCRIPT against a real sh: a file followed with tail -F, or a unit's journal (a
    fake journalctl that prints lines and then waits forever, as `journalctl -f` does)."""
    d = tmp_path / "capture-all.AbCd1234"
    d.mkdir()
    job = subprocess.Popen(["sleep", "60"])  # the capture job
    (d / "job.pid").write_text(f"{job.pid}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "app.log"
    log.write_text("old: reset by peer (before the watch: not a trigger)\n")
    fake = bin_dir / "journalctl"
    # The matching line carries a backslash escape as text: dash's echo would have made it an ESC
    # (the screen cleared on the operator's terminal); it must come through as written.
    line = "upstream reset by peer; client 198.18.1.10 \\033[2J"
    fake.write_text(f"#!/bin/sh\necho \"$*\" > {tmp_path}/jargs\necho 'GET / 200'\n"
                    f"printf '%s\\n' '{line}'\nexec sleep 61.25\n")  # fmt: skip
    fake.chmod(0o755)
    src = str(log) if source == "file" else "journal=nginx.service"
    cmd = commands.log_trigger(str(d), src, "reset by peer", limit_s=60, sudo=False)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["sh", "-c", cmd.line], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "@@listening\n"
    if source == "file":
        time.sleep(0.5)  # tail -F is following the end of the file
        with log.open("a") as fh:
            fh.write(f"GET / 200\n{line}\n")
    assert proc.stdout.readline() == f"@@log {line}\n"
    if source == "journal":
        assert (tmp_path / "jargs").read_text().split() == ["-q", "-f", "-n", "0", "-o", "cat", "-u", "nginx.service"]
    job.kill()
    job.wait()
    rest, _ = proc.communicate(timeout=10)  # the job gone, the trigger ends, and all it started
    assert rest.splitlines() == ["@@section trigger", "ended=1"] and proc.returncode == 0
    left = subprocess.run(["pgrep", "-f", f"{tmp_path}|capture-all-log|sleep 61.25"], capture_output=True, text=True)
    assert left.stdout.split() == [], left.stdout


def test_the_logs_come_back_from_the_capture_start_on_bounded_with_what_could_not_be_read(
    host: dict[str, str], tmp_path: Path
) -> None:
    """What each log got while the capture ran, plus 4 KiB before; a rotated log from its start;
    a big one its latest 512 KiB; a missing one a note. Files of ours, pulled like the others."""
    grew, rotated, big = tmp_path / "grew.log", tmp_path / "rotated.log", tmp_path / "big.log"
    old = "".join(f"old line {i:05d}\n" for i in range(1000))  # 16 KB written before the capture
    for f in (grew, rotated, big):
        f.write_text(old)
    missing = tmp_path / "missing.log"
    arm, remote_dir = start_capture(host, "tcp port 443", free_port(),
                                    logs=(str(grew), str(rotated), str(big), str(missing)))  # fmt: skip
    with grew.open("a") as fh:
        fh.write("new line A\nnew line B\n")
    rotated.write_text("after rotation\n")
    with big.open("a") as fh:
        fh.write("x" * 700_000 + "\nthe last line\n")
    arm.say("finish")
    assert arm.until("@@probe"), arm.lines
    listing = parse_finish(parse_sections("\n".join(arm.lines)))
    names = sorted(f.name for f in listing.logs)
    assert names == ["log.1.meta", "log.1.txt", "log.2.meta", "log.2.txt", "log.3.meta", "log.3.txt", "log.4.meta"]
    d = Path(remote_dir)
    got = (d / "log.1.txt").read_text()
    margin = old[-4096:]  # 4 KiB before the capture's start, from its first whole line (issue 30.6)
    assert got == margin[margin.index("\n") + 1 :] + "new line A\nnew line B\n"
    assert f"source={grew}" in (d / "log.1.meta").read_text() and "to_byte=" in (d / "log.1.meta").read_text()
    assert (d / "log.2.txt").read_text() == "after rotation\n" and "rotated=1" in (d / "log.2.meta").read_text()
    b = (d / "log.3.txt").read_bytes()
    # Its latest 512 KiB fall inside the 700 KB line: the line's tail is no record, the last line is.
    assert b == b"the last line\n" and "truncated=1" in (d / "log.3.meta").read_text()
    assert "error=no such file" in (d / "log.4.meta").read_text() and not (d / "log.4.txt").exists()
    arm.say("snap")
    assert arm.until("@@listed") == "@@listed", arm.lines
    arm.say("rm")
    assert arm.end() == 0, arm.stderr
    assert not d.exists()


def test_a_journal_source_returns_its_units_lines_of_the_window(host: dict[str, str], tmp_path: Path) -> None:
    """journal=UNIT: journalctl for that unit only, from 2 s before the capture's start to its end
    (a fake journalctl on the PATH records what it was asked and prints two lines)."""
    fake = tmp_path / "bin" / "journalctl"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "jargs"}\n'
                    'echo "2026-12-02T04:34:39.611000+0000 lb haproxy[7]: 10.0.0.1:5 ..."\n'
                    'echo "second line"\n')  # fmt: skip
    fake.chmod(0o755)
    before = int(time.time())
    arm, remote_dir = start_capture(host, "tcp port 443", free_port(), logs=("journal=haproxy.service",))
    arm.say("finish")
    assert arm.until("@@probe"), arm.lines
    after = int(time.time())
    d = Path(remote_dir)
    assert (d / "log.1.txt").read_text().splitlines()[1] == "second line"
    args = (tmp_path / "jargs").read_text().split("\n")
    assert args[args.index("-u") + 1] == "haproxy.service" and "--no-pager" in args
    since = int(args[args.index("--since") + 1].lstrip("@"))
    until = int(args[args.index("--until") + 1].lstrip("@"))
    assert before - 3 <= since <= after - 2 and since < until <= after + 1
    meta = (d / "log.1.meta").read_text()
    assert "source=journal=haproxy.service" in meta and "error=" not in meta
    arm.say("snap")
    assert arm.until("@@listed") == "@@listed", arm.lines
    arm.say("rm")
    assert arm.end() == 0, arm.stderr


def test_the_audit_reads_a_running_haproxys_files_and_directories_and_nothing_unsafe(tmp_path: Path) -> None:
    """A root-owned binary named haproxy, run as root, with `-f DIR -f FILE`: the directory's *.cfg
    files in order, the file; not a symlinked cfg, a FIFO, nor more than 16 files (under sh)."""
    root("the audit trusts root's processes only")
    conf = tmp_path / "conf.d"
    conf.mkdir()
    for i in range(3):
        (conf / f"{i:02d}-part.cfg").write_text(f"# part {i}\n")
    (conf / "notes.txt").write_text("not a cfg\n")
    (conf / "03-link.cfg").symlink_to(tmp_path / "elsewhere.cfg")
    (tmp_path / "elsewhere.cfg").write_text("# SECRET through a link\n")
    os.mkfifo(conf / "04-fifo.cfg")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(20):
        (many / f"{i:02d}.cfg").write_text(f"# many {i}\n")
    main_cfg = tmp_path / "haproxy.cfg"
    main_cfg.write_text("# main\n")
    exe = tmp_path / "bin" / "haproxy"
    exe.parent.mkdir()
    shutil.copy("/usr/bin/python3.11", exe)
    proc = subprocess.Popen([str(exe), "-c", "import time; time.sleep(60)", "-f", str(conf), "-f", str(main_cfg),
                             "-f", str(many)])  # fmt: skip
    try:
        wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "haproxy")
        done = subprocess.run(["sh", "-c", commands.audit(sudo=False).line], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    finally:
        proc.kill()
        proc.wait(10)
    section = parse_sections(done.stdout).sections["haproxy"].body
    read = [ln.split(": ", 1)[1] for ln in section.splitlines() if ln.startswith("# capture-all file: ")]
    ours = [f for f in read if f.startswith(f"{tmp_path}/")]  # the lab's own HAProxy may run beside it
    n = len(ours) - 4
    assert ours[:4] == [str(conf / f"{i:02d}-part.cfg") for i in range(3)] + [str(main_cfg)], section
    assert ours[4:] == [str(many / f"{i:02d}.cfg") for i in range(n)] and len(read) == 16 and n > 0, read
    assert "SECRET" not in section and "not a cfg" not in section
    assert f"# capture-all unreadable: {conf / '03-link.cfg'}" in section
    assert f"# capture-all unreadable: {conf / '04-fifo.cfg'}" in section
    assert f"# capture-all skipped: {many / f'{n:02d}.cfg'} (16 files read already)" in section


NOBODY = 65534


def test_a_local_user_can_neither_plant_the_lock_nor_make_root_read_for_them(host: dict[str, str],
                                                                           tmp_path: Path) -> None:  # fmt: skip
    """Issue 29.2: in a shared tmpdir (1777, as /tmp) an unprivileged user plants what 87a3ac3
    trusted: the run lock (tmpdir/capture-all.lock.NETNS, a predictable name) pointing at a
    fresh-looking directory of theirs, whose `holder` is a link to a root-only file and whose
    `job.pid` names a process of theirs dressed as our job. The old script read the secret as root
    into its `@@fail busy` line, and refused every run while the user's process lived. The lock
    and the records are in the run directory now, root's alone: the run captures, reads nothing of
    theirs."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="capture-all-test-"))  # pytest's tmp_path: 0700 under a 0700 dir
    base = shared / "tmp"
    base.mkdir()
    shared.chmod(0o755)
    base.chmod(0o1777)
    host = {**host, "base": str(base)}
    secret = tmp_path / "secret"
    secret.write_text("root-only-SECRET-7f3a\n")
    secret.chmod(0o600)
    ns = os.stat("/proc/self/ns/net").st_ino
    fake = f"{base}/capture-all.EVILEVIL"
    plant = (f"mkdir -m 755 {fake} && ln -s {secret} {fake}/holder && "
             f"ln -s {fake} {base}/capture-all.lock.{ns}")  # fmt: skip
    subprocess.run(["sh", "-c", plant], check=True, user=NOBODY, group=NOBODY)
    dressed = subprocess.Popen(["sh", "-c", "sleep 60", "capture-all-job", fake, "x"], user=NOBODY, group=NOBODY)
    try:
        Path(fake, "job.pid").write_text(f"{dressed.pid}\n")  # as if the user wrote it (root does, for the test)
        arm, remote_dir = start_capture(host, "tcp port 443", free_port())
        assert "SECRET" not in "\n".join(arm.lines)
        arm.say("finish")
        finish_in(arm, remote_dir)
        assert Path(base, f"capture-all.lock.{ns}").is_symlink()  # theirs, untouched: not ours to trust or remove
    finally:
        dressed.kill()
        dressed.wait()
        shutil.rmtree(shared)


@pytest.mark.parametrize("case", ["tmpdir writable by all, not sticky", "tmpdir of another user",
                                  "run directory of another user", "run directory a link"])  # fmt: skip
def test_a_tmpdir_or_run_directory_another_user_controls_is_refused(host: dict[str, str], tmp_path: Path,
                                                                    case: str) -> None:  # fmt: skip
    """Issue 29.9 and 29.2: where another user could rename our directory away (a world-writable
    tmpdir without the sticky bit, one they own) or hold the lock's directory, the run refuses
    with one line, before it makes anything."""
    base, run = Path(host["base"]), Path(host["run"])
    if case == "tmpdir writable by all, not sticky":
        base.chmod(0o777)
    elif case == "tmpdir of another user":
        os.chown(base, NOBODY, NOBODY)
    elif case == "run directory of another user":
        run.mkdir(mode=0o700)
        os.chown(run, NOBODY, NOBODY)
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        run.symlink_to(tmp_path / "elsewhere")
    s = Session(arm_line(host), host)
    assert s.until("@@ready") is None and s.end() == commands.EXIT_NO_DIR
    failure = parse_sections("\n".join(s.lines)).failure
    want = "no_tmpdir" if case.startswith("tmpdir") else "no_rundir"
    assert failure is not None and failure.code == want, s.lines
    assert os.listdir(base) == []


def test_a_process_named_like_a_marker_does_not_end_the_dialogue(host: dict[str, str]) -> None:
    """Issue 29.7: any local user can name a process "\\n@@listed" (its comm) and hold a socket of
    the flow's port; ss prints the name as it is, so on 87a3ac3 the finish's snapshot said
    @@listed half way and the controller took the rest of it for the next step. Data lines that
    start with @@ are sent with a space before them now."""
    port = free_port()
    code = ("import socket,sys;s=socket.socket();s.bind(('127.0.0.1',int(sys.argv[1])));s.listen();"
            "open('/proc/self/comm','w').write('\\n@@listed');print('up',flush=True);sys.stdin.read()")  # fmt: skip
    # (as root here: the name is the user's to choose whoever they are; this Python is root's alone)
    named = subprocess.Popen([sys.executable, "-c", code, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert named.stdout is not None and named.stdout.readline().strip() == "up"
        assert Path(f"/proc/{named.pid}/comm").read_text() == "\n@@listed\n"
        arm, remote_dir = start_capture(host, "tcp port 443", port)
        assert "\n @@listed" in arm.ss and f"pid={named.pid}," in arm.ss, arm.ss
        arm.say("finish")
        finish_in(arm, remote_dir)  # its "after" snapshot whole (nstat after the sockets), then rm
    finally:
        named.kill()
        named.communicate()


def test_a_log_swapped_for_a_link_or_a_fifo_is_not_read(host: dict[str, str], tmp_path: Path) -> None:
    """Issue 29.4: a service account that owns its log directory swaps its log, while the capture
    runs, for a link to a root-only file (87a3ac3 took it for a rotated log and read the secret
    from byte 0 into the bundle), or for a FIFO (which held the finish until its one-hour
    timeout); a log that is a link or a FIFO from the start is refused at once. Each is a note in
    its meta file; the finish goes on, quickly, and the good log still comes back."""
    secret = tmp_path / "secret"
    secret.write_text("root-only-SECRET-7f3a\n" * 10)
    secret.chmod(0o600)
    good, swapped, fifo_later = tmp_path / "good.log", tmp_path / "swapped.log", tmp_path / "fifo-later.log"
    for f in (good, swapped, fifo_later):
        f.write_text("before\n" * 100)
    linked, fifo = tmp_path / "linked.log", tmp_path / "fifo.log"
    linked.symlink_to(secret)
    os.mkfifo(fifo)
    empty = tmp_path / "empty.log"  # a log that was empty at the start (HAProxy's, in the lab) is read
    empty.write_text("")
    logs = (str(good), str(swapped), str(fifo_later), str(linked), str(fifo), str(empty))
    arm, remote_dir = start_capture(host, "tcp port 443", free_port(), logs=logs)
    with good.open("a") as fh:
        fh.write("during\n")
    empty.write_text("its first line\n")
    swapped.unlink()
    swapped.symlink_to(secret)
    fifo_later.unlink()
    os.mkfifo(fifo_later)
    started = time.monotonic()
    arm.say("finish")
    assert arm.until("@@probe"), arm.lines
    assert time.monotonic() - started < 15  # no FIFO held it
    d = Path(remote_dir)
    assert (d / "log.1.txt").read_text().endswith("before\nduring\n")
    assert (d / "log.6.txt").read_text() == "its first line\n"
    metas = {n: (d / f"log.{n}.meta").read_text() for n in range(1, 6)}
    assert "not a regular file at the end" in metas[2] and "not a regular file at the end" in metas[3], metas
    assert "error=a symbolic link" in metas[4] and "error=not a regular file (a FIFO" in metas[5], metas
    for n in range(2, 6):
        assert not (d / f"log.{n}.txt").exists(), n
    assert not any("SECRET" in p.read_text(errors="replace") for p in d.iterdir() if p.is_file())
    assert "SECRET" not in "\n".join(arm.lines)
    arm.say("snap")
    assert arm.until("@@listed") == "@@listed", arm.lines
    arm.say("rm")
    assert arm.end() == 0, arm.stderr


def test_logread_reads_only_through_a_checked_descriptor(tmp_path: Path) -> None:
    """logread itself (the finish's reader): a regular file's bytes; a link, a FIFO (no writer:
    within its `timeout`, not forever) and a missing file give nothing and a non-zero status."""
    from remote.scripts import _LOGS

    f = tmp_path / "a.log"
    f.write_bytes(b"0123456789")
    link = tmp_path / "link.log"
    link.symlink_to(f)
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)

    def logread(path: Path, start: int, n: int) -> subprocess.CompletedProcess[bytes]:
        script = _LOGS.replace("timeout 20 ", "timeout 2 ") + '\nlogread "$@"'
        return subprocess.run(["sh", "-c", script, "sh", str(path), str(start), str(n)], capture_output=True,
                              timeout=30)  # fmt: skip
    assert logread(f, 0, 4).stdout == b"0123" and logread(f, 0, 4).returncode == 0
    lines = tmp_path / "lines.log"
    lines.write_bytes(b"first line\nsecond\nthird\n")
    assert logread(lines, 3, 21).stdout == b"second\nthird\n"  # a cut inside a line: from the next one
    assert logread(lines, 11, 7).stdout == b"second\n"  # a cut at a line's start keeps that line
    empty = tmp_path / "empty.log"  # stat's %F says "regular empty file" of it: a regular file all the same
    empty.write_bytes(b"")
    assert logread(empty, 0, 0).returncode == 0
    for bad in (link, fifo, tmp_path / "missing.log"):
        done = logread(bad, 0, 10)
        assert done.returncode != 0 and done.stdout == b"", bad


def test_the_log_trigger_never_follows_a_link_and_follows_a_rotation(tmp_path: Path) -> None:
    """Issue 29.4, the trigger's side: 87a3ac3 followed the log with `tail -F` as root, by name, so
    a log swapped for a link to a root-only file had that file's matching lines sent back. Now a
    link (from the start) is refused; swapped in later, it is never read; the regular file that
    takes the name again (a rotation) is followed from its first line."""
    import select

    d = tmp_path / "capture-all.AbCd1234"
    d.mkdir()
    job = subprocess.Popen(["sleep", "60"])
    (d / "job.pid").write_text(f"{job.pid}\n")
    secret = tmp_path / "secret"
    secret.write_text("reset by peer SECRET-7f3a\n")
    secret.chmod(0o600)
    log = tmp_path / "app.log"
    log.symlink_to(secret)
    refused = subprocess.run(["sh", "-c", commands.log_trigger(str(d), str(log), "reset by peer", limit_s=60,
                                                               sudo=False).line],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert refused.returncode == commands.EXIT_NO_TOOL and "@@fail no_log" in refused.stdout, refused.stdout
    log.unlink()
    log.write_text("old line\n")
    cmd = commands.log_trigger(str(d), str(log), "reset by peer", limit_s=60, sudo=False)
    proc = subprocess.Popen(["sh", "-c", cmd.line], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "@@listening\n"
        time.sleep(0.5)
        log.rename(tmp_path / "app.log.1")  # rotated away, and a link to the secret in its place
        log.symlink_to(secret)
        with secret.open("a") as fh:
            fh.write("reset by peer SECRET-again\n")
        ready, _, _ = select.select([proc.stdout], [], [], 3.0)
        assert ready == [], proc.stdout.readline()  # nothing read through the link
        log.unlink()
        log.write_text("first line of the new log: reset by peer\n")  # the rotation's new file
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready and proc.stdout.readline() == "@@log first line of the new log: reset by peer\n"
    finally:
        job.kill()
        job.wait()
        rest, _ = proc.communicate(timeout=15)
    assert rest.splitlines() == ["@@section trigger", "ended=1"] and proc.returncode == 0
    assert not any(p.name.startswith("log-trigger.") for p in d.iterdir())
    left = subprocess.run(["pgrep", "-f", f"{tmp_path}|capture-all-log"], capture_output=True, text=True)
    assert left.stdout.split() == [], left.stdout
