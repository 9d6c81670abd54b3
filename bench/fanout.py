"""Fan-out benchmark: N real OpenSSH sshd hosts (stock limits, network namespaces), bare asyncssh
`date` on all of them against capture-all arming all of them, side by side, alternating.

    scripts/bench-fanout [--hosts 100] [--runs 3] [--duration 2] [--no-witness] [--login-files] [--keep]
                         [--baseline DIR] [--tmp tmpfs|machine]

Runs inside tests/lab/enter (a private network, mount and PID namespace: nothing leaks, every
sshd dies with it). Each host: its own namespace with a management veth on one bridge
(198.19.0.0/16), a capture interface `eth1` (one end of a veth pair that carries nothing), sshd
with OpenSSH's default MaxSessions and MaxStartups and the kernel's tracefs in its mount namespace
(so the witness runs, as it does by default). root's ~/.bashrc is empty unless --login-files (the
lab's slow one, tests/lab/labnet.py SLOW_LOGIN: 80 processes, about 0.13 s a shell). The bundles
and the hosts' capture folders go to a tmpfs of the lab's own (``--tmp machine``: the bundles to the
machine's /tmp, the hosts' folders to /tmp itself). The development VM's root file system is ext4
without a journal, where ext4 looks at the deletion time of free inodes before it reuses one: the
cost of a new file there varies with what was deleted before it (2,000 small files took 0.04-0.91 s
in eight tries within an hour; on a journaled ext4 image on the same disk, 0.04-0.06 s in eight),
and each run follows the last one's deletions (the hosts' capture folders). Both sides
run as their own process, timed from its start (Python's start-up and imports included on both),
each once the last run's processes are gone (sshd's sessions wind down after a run: the next one
must not pay for them). The hosts' keys, inventory and bundles are removed unless --keep.

Per repetition, printed as medians:
- bare asyncssh: connect, run `date +%s%N` on every host at once: time to the last answer, and the
  spread of the hosts' clocks when they answered (its "start skew");
- bare asyncssh + tcpdump: connect, run one command on every host at once that starts tcpdump as
  capture-all's job does (its options, under `timeout`, stopping by itself after 3 s): time to the
  last host's "listening on", the smallest arming there is (a capture's start costs the host CPU,
  and the lab's hosts share two cores);
- capture-all (its defaults, `-d DURATION`): time from the process start to the last host
  armed (manifest `armed_ns`: its capture listens), its start skew (manifest), the spread of the
  captures' starts by the hosts' own clocks (computed here from the manifest's `remote_armed_ns`
  and start probes, the same way for a baseline that reported another skew), end-to-end overhead
  (wall time minus the duration) and the controller's CPU seconds per host (the process's rusage);
  and where the time to arming goes: the first and the last host connected, the last host ready
  (preflight done, waiting at the start barrier);
- with ``--baseline DIR`` (a checkout of capture-all at another commit, e.g. ``git worktree add
  /tmp/base HEAD~1``), that version's capture-all too, in the same repetitions, alternating with
  this one: the ratio of the two medians is the change's effect on this machine at this hour;
- with the witness, the kernel alone: N ftrace instances set up with the witness's writes and
  removed, all at once, by sh without SSH (the lab's hosts share one kernel, which does that work
  one instance at a time under its tracing locks; on a fleet each host does its own at once), and
  one instance alone, set up and removed the same way (what each host of a fleet pays).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.lab.labnet import REPO, in_lab, private_mounts, sh, wait_banner

FLOW = "198.18.250.1->198.18.250.2:80"


def address(i: int) -> str:
    return f"198.19.{1 + i // 200}.{10 + i % 200}"


def build(n: int, root: Path, login_files: bool = False, remote_tmp: str = "/tmp") -> Path:
    """N hosts with sshd; returns the inventory (the hosts' capture folders in ``remote_tmp``)."""
    private_mounts(root, login_files=login_files)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "id"))
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "hostkey"))
    pub = " ".join((root / "hostkey.pub").read_text().split()[:2])
    (root / "authorized_keys").write_text((root / "id.pub").read_text())
    (root / "known_hosts").write_text("".join(f"{address(i)} {pub}\n" for i in range(n)))
    (root / "ssh_config").write_text("# empty\n")
    batch = ["link set lo up", "link add fan0 type bridge", "link set fan0 up", "addr add 198.19.0.1/16 dev fan0"]
    for i in range(n):
        batch += [f"netns add h{i}", f"link add f{i} type veth peer name mgmt netns h{i}",
                  f"link set f{i} master fan0 up"]  # fmt: skip
    sh("ip", "-batch", "-", input="\n".join(batch) + "\n")
    for i in range(n):
        inside = ["link set lo up", "link set mgmt up", f"addr add {address(i)}/16 dev mgmt",
                  "link add eth1 type veth peer name eth1p", "link set eth1 up", "link set eth1p up"]  # fmt: skip
        sh("ip", "-n", f"h{i}", "-batch", "-", input="\n".join(inside) + "\n")
    procs = []
    for i in range(n):
        cfg = root / f"sshd-{i}.conf"
        cfg.write_text(
            f"ListenAddress {address(i)}:22\nHostKey {root / 'hostkey'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            "PidFile none\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n"  # and OpenSSH's default MaxSessions 10, MaxStartups 10:30:100
        )
        argv = ["ip", "netns", "exec", f"h{i}", "sh", "-c", 'mount -t tracefs nodev /sys/kernel/tracing && exec "$@"',
                "fanout-sshd", "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for i in range(n):
        wait_banner(address(i))
    hosts = "".join(
        f'\n[[hosts]]\nname = "h{i}"\nrole = "other"\naddress = "{address(i)}"\ninterfaces = ["eth1"]\n'
        f'addresses = ["198.18.{i // 200}.{1 + i % 200}"]\n'
        for i in range(n)
    )
    inv = root / "inventory.toml"
    inv.write_text(
        f'[ssh]\nuser = "root"\nidentity_file = "{root / "id"}"\nknown_hosts = "{root / "known_hosts"}"\n'
        f'config_file = "{root / "ssh_config"}"\nsudo = false\nconnect_timeout = 20\n'
        f'[capture]\ntmpdir = "{remote_tmp}"\n{hosts}'
    )
    return inv


def bare(n: int, root: Path, capture: bool = False) -> tuple[float, float]:
    """(seconds from its process's start to the last host's answer, spread of the hosts' clocks
    in their answers, ms). ``capture``: each host's one command starts tcpdump as capture-all's
    job does and answers once it listens (the clock: when it started it)."""
    start_ns = time.time_ns()
    argv = [sys.executable, "-m", "bench.fanout", "--bare", str(root), "--hosts", str(n),
            *(["--bare-capture"] if capture else [])]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout
    last_ns, spread_ms = json.loads(out)
    return (last_ns - start_ns) / 1e9, spread_ms


# The smallest arming there is: one command that starts a capture the way capture-all's job does
# (the same tcpdump options, under `timeout`, stopping by itself) and says when it listens.
BARE_CAPTURE = (
    "date +%s%N; exec timeout -s INT -k 5 3 tcpdump -i eth1 -nn -U -s 262144 -c 1000000 --immediate-mode "
    "--time-stamp-precision=nano -w /dev/null 'tcp and host 198.18.250.2 and port 80' 2>&1"
)


async def _bare(n: int, root: Path, capture: bool = False) -> None:
    import asyncssh

    async def one(i: int) -> tuple[int, int]:
        """(the host's clock in its answer, the controller's when the answer came)."""
        opts = {"username": "root", "client_keys": [str(root / "id")], "known_hosts": str(root / "known_hosts"),
                "config": [str(root / "ssh_config")]}  # fmt: skip
        async with asyncssh.connect(address(i), **opts) as c:
            if not capture:
                return int((await c.run("date +%s%N", check=True)).stdout), time.time_ns()
            async with c.create_process(BARE_CAPTURE) as p:
                stamp = int(await p.stdout.readline())
                while "listening on" not in (line := await p.stdout.readline()):
                    if not line:
                        raise SystemExit(f"h{i}: tcpdump never listened")
                # Heard now: leaving the block waits for the capture's own end (3 s), not counted.
                return stamp, time.time_ns()

    got = await asyncio.gather(*(one(i) for i in range(n)))
    stamps = [s for s, _ in got]
    print(json.dumps([max(t for _, t in got), (max(stamps) - min(stamps)) / 1e6]))


def capture_all(n: int, inv: Path, out: Path, duration: float, witness: bool, code: Path = REPO) -> dict[str, float]:
    """One capture-all run; ``code``: the checkout whose capture-all runs (``-m`` from there: its
    own packages come first on the path)."""
    argv = [sys.executable, "-m", "orchestrator.cli", "--plain", "-i", str(inv), "-f", FLOW, "-d", str(duration),
            "-o", str(out), *([] if witness else ["--no-witness"])]  # fmt: skip
    start_ns = time.time_ns()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=code)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.time_ns() - start_ns) / 1e9
    m = json.loads((out / "manifest.json").read_text())
    armed = [h["armed_ns"] for h in m["hosts"] if h.get("armed_ns")]
    connected = [h["connected_ns"] for h in m["hosts"] if h.get("connected_ns")]
    ready = []
    for h in m["hosts"]:
        for line in (out / h["name"] / "commands.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["phase"] == "capture" and "preflight" in rec.get("steps_ns", {}):
                ready.append(rec["started_ns"] + rec["steps_ns"]["preflight"])
    # When each capture started by its host's own clock, on the controller's clock by its start probe
    # (the lab's hosts share the machine's clock: the probe's offset is its error alone).
    starts = []
    for h in m["hosts"]:
        probe = next((p for p in h.get("clock_probes") or [] if p["phase"] == "start"), None)
        if h.get("remote_armed_ns") and probe is not None:
            starts.append(h["remote_armed_ns"] - probe["offset_ns"])
    since = lambda ns: (ns - start_ns) / 1e9 if ns else float("nan")  # noqa: E731
    return {
        "exit": float(os.waitstatus_to_exitcode(status)),
        "armed_hosts": float(len(armed)),
        "first_connected_s": since(min(connected, default=0)),
        "last_connected_s": since(max(connected, default=0)),
        "last_ready_s": since(max(ready, default=0)),
        "last_armed_s": since(max(armed, default=0)),
        "skew_ms": float(m.get("start_skew_ms") or float("nan")),
        "start_spread_ms": (max(starts) - min(starts)) / 1e6 if starts else float("nan"),
        "overhead_s": wall - duration,
        "cpu_ms_per_host": (usage.ru_utime + usage.ru_stime) / n * 1e3,
    }


# The kernel's own part of N witnesses: N ftrace instances set up with the witness's writes
# (buffer size, no overwrite, the mono clock, the two reset events) and removed, all at once, by sh
# alone: no SSH, no capture-all. The lab's hosts share one kernel, which does this work under its
# global tracing locks one instance at a time; a fleet's hosts each do their one at the same time.
KERNEL_ONLY = r"""
t=/sys/kernel/tracing/instances
for i in $(seq "$1"); do
  (d=$t/capture-all-bench.$i; mkdir "$d"; echo 256 > "$d/buffer_size_kb"; echo 0 > "$d/options/overwrite"
   echo mono > "$d/trace_clock"; echo 1 > "$d/events/tcp/tcp_send_reset/enable"
   echo 1 > "$d/events/tcp/tcp_receive_reset/enable") &
done
wait; date +%s%N
for i in $(seq "$1"); do (d=$t/capture-all-bench.$i; echo 0 > "$d/tracing_on"; rmdir "$d") & done
wait; date +%s%N
"""


def kernel_only(n: int) -> tuple[float, float]:
    """Seconds to set up and to remove n witness instances in the lab's one kernel, nothing else."""
    start = time.time_ns()
    out = subprocess.run(["sh", "-c", KERNEL_ONLY, "sh", str(n)], check=True, capture_output=True, text=True)
    set_up, removed = (int(x) for x in out.stdout.split())
    return (set_up - start) / 1e9, (removed - set_up) / 1e9


def processes() -> list[bytes]:
    """Every live process's argv in the lab's own PID namespace (the bench's, the hosts' sshd).
    Not zombies: the lab's PID 1 is this process, which reaps only its own children."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                    continue
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except (OSError, IndexError):
                continue
    return found


def settle(baseline: int, limit_s: float = 60.0) -> None:
    """Wait until nothing of the last run is left on the hosts: no job of ours (they remove a
    witness instance each, which the one kernel of the lab does one at a time) and no more
    processes than the idle hosts had (sshd's sessions of the last run winding down). The next
    run, ours or bare asyncssh's, must not pay for the last one."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        now = processes()
        if len(now) <= baseline and not any(b"capture-all-job" in argv for argv in now):
            return
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument(
        "--no-witness",
        action="store_true",
        help="capture-all without the kernel witness: the lab's hosts "
        "share one kernel, so N witnesses are N ftrace instances in one kernel (on real hosts: one each)",
    )
    ap.add_argument(
        "--tmp",
        choices=("tmpfs", "machine"),
        default="tmpfs",
        help="where the bundles and the hosts' capture folders go: a tmpfs of the lab's own (default), or the "
        "machine's /tmp (this VM's root file system: ext4 without a journal, where a new file's cost varies "
        "with what was deleted before it)",
    )
    ap.add_argument("--login-files", action="store_true", help="root's ~/.bashrc the lab's slow one (else empty)")
    ap.add_argument("--keep", action="store_true", help="keep the hosts' keys, inventory and bundles (else removed)")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="a checkout of capture-all at another commit, run alternately with this one")  # fmt: skip
    ap.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # the bare side, in its own process
    ap.add_argument("--bare-capture", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        asyncio.run(_bare(args.hosts, args.bare, args.bare_capture))
        return
    if args.baseline and not (args.baseline / "orchestrator" / "cli.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: not a checkout of capture-all (no orchestrator/cli.py)")
    if not in_lab():
        raise SystemExit("bench/fanout.py runs inside tests/lab/enter (scripts/bench-fanout does that)")
    root = Path(tempfile.mkdtemp(prefix="capture-all-fanout-"))
    root.chmod(0o755)
    remote_tmp = "/tmp"
    if args.tmp == "tmpfs":  # inside the lab's private mount namespace: gone with it
        sh("mount", "-t", "tmpfs", "-o", "mode=755", "fanout-tmp", str(root))
        (root / "remote-tmp").mkdir(mode=0o700)
        remote_tmp = str(root / "remote-tmp")
    t = time.monotonic()
    inv = build(args.hosts, root, args.login_files, remote_tmp)
    print(f"{args.hosts} sshd hosts up in {time.monotonic() - t:.1f} s")
    time.sleep(1.0)
    baseline = len(processes())  # the idle hosts, and this process
    bares, captures, ours, kernel, base = [], [], [], [], []
    try:
        for k in range(args.runs):  # alternating: the machine's drift hits both alike
            bares.append(bare(args.hosts, root))
            settle(baseline)
            captures.append(bare(args.hosts, root, capture=True))
            settle(baseline)
            if not args.no_witness:
                kernel.append((*kernel_only(args.hosts), *kernel_only(1)))
            # This version first in repetitions 1, 3, ..., the baseline first in 2, 4, ...: neither
            # always follows bare.
            order = ["ours"] if not args.baseline else ["ours", "base"] if k % 2 == 0 else ["base", "ours"]
            for who in order:
                code = args.baseline.resolve() if who == "base" else REPO
                got = capture_all(args.hosts, inv, root / f"{who}-{k}", args.duration, not args.no_witness, code)
                (base if who == "base" else ours).append(got)
                settle(baseline)
            print(f"run {k + 1}: bare {bares[-1][0]:.2f} s (skew {bares[-1][1]:.0f} ms); bare + tcpdump "
                  f"{captures[-1][0]:.2f} s (skew {captures[-1][1]:.0f} ms); capture-all {ours[-1]}"
                  + (f"; baseline {base[-1]}" if base else "")
                  + (f"; kernel only: set up {kernel[-1][0]:.2f} s, removed {kernel[-1][1]:.2f} s (one instance: "
                     f"{kernel[-1][2] * 1e3:.0f} ms, {kernel[-1][3] * 1e3:.0f} ms)" if kernel else ""))
    finally:
        if args.keep and args.tmp == "machine":
            print(f"kept: {root}")
        else:
            if args.keep:
                print("--keep: the files were on the lab's tmpfs, gone with it (--tmp machine keeps them)")
            if args.tmp == "tmpfs":  # its files go with it (lazily: the hosts' sshd still run)
                subprocess.run(["umount", "-l", str(root)], check=False)
            shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    b_last, b_skew = med(b for b, _ in bares), med(s for _, s in bares)
    o = {key: med(r[key] for r in ours) for key in ours[0]}
    witness = "without" if args.no_witness else "with"
    logins = "the lab's slow login files" if args.login_files else "empty login files"
    logins += ", files on a tmpfs" if args.tmp == "tmpfs" else ", files on the machine's /tmp"
    print(f"\nmedians over {args.runs} runs, {args.hosts} hosts, {args.duration:g} s captures, {witness} the witness, "
          f"{logins}:")
    c_last, c_skew = med(b for b, _ in captures), med(s for _, s in captures)
    print(f"  bare asyncssh connect + date: last answer {b_last:.2f} s, clock spread {b_skew:.0f} ms")
    print(f"  bare asyncssh connect + one command starting tcpdump: last listening {c_last:.2f} s, "
          f"spread of the starts {c_skew:.0f} ms")

    def summary(label: str, r: dict[str, float]) -> str:
        return (f"  {label}: last host armed {r['last_armed_s']:.2f} s ({r['last_armed_s'] / b_last:.1f}x bare, "
                f"{r['last_armed_s'] / c_last:.1f}x bare + tcpdump), "
                f"start skew {r['skew_ms']:.0f} ms (hosts' clocks: {r['start_spread_ms']:.0f} ms), "
                f"overhead {r['overhead_s']:.2f} s, "
                f"controller CPU {r['cpu_ms_per_host']:.0f} ms/host, armed {r['armed_hosts']:.0f}/{args.hosts}")

    print(summary("capture-all", o))
    print(f"  capture-all, to arming: first host connected {o['first_connected_s']:.2f} s, last "
          f"{o['last_connected_s']:.2f} s, last ready {o['last_ready_s']:.2f} s, "
          f"last armed {o['last_armed_s']:.2f} s")  # fmt: skip
    if base:
        b = {key: med(r[key] for r in base) for key in base[0]}
        print(summary(f"baseline ({args.baseline})", b))
        print(f"  this / baseline: last host armed {o['last_armed_s'] / b['last_armed_s']:.2f}x, overhead "
              f"{o['overhead_s'] / b['overhead_s']:.2f}x, start spread (hosts' clocks) "
              f"{o['start_spread_ms'] / b['start_spread_ms']:.2f}x, "
              f"controller CPU {o['cpu_ms_per_host'] / b['cpu_ms_per_host']:.2f}x")
    if kernel:
        k_up, k_rm, one_up, one_rm = (med(k[i] for k in kernel) for i in range(4))
        print(f"  the kernel alone, {args.hosts} witness instances at once in the lab's one kernel (sh, no SSH): "
              f"set up {k_up:.2f} s, removed {k_rm:.2f} s; one instance alone (what each host of a fleet "
              f"pays, at the same time as the others): set up {one_up * 1e3:.0f} ms, removed {one_rm * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
