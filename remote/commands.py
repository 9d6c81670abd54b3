"""What runs on a host, as data: one shell line per phase.

Rules of this module (everything that reaches a remote shell is built here):

- The scripts below are constants. No user-supplied text is ever spliced into a script; values
  travel as positional parameters (``sh -c SCRIPT capture-all ARG...``) and every word of the
  final line is ``shlex.quote``d. Values are also validated before they get here
  (``validate_interface``, ``validate_remote_dir``), so a hostile name fails early and loudly.
- Every line runs under ``timeout`` on the host, so it dies even if the controller vanishes.
- The capture itself runs detached (``setsid``) under its own ``timeout``: it stops at
  duration + grace whatever happens to SSH or the controller, and a reaper deletes its private
  directory if nobody collected it within ``keep`` seconds of the end.
- One round trip per phase: a shell start costs ~100 ms on real hosts, so phases are batched.

Output is line-oriented: ``@@section NAME`` opens a block, ``@@rc N`` closes a snapshot command,
``@@fail CODE TEXT`` explains a refusal. ``remote.parse`` reads it back.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

# Linux IFNAMSIZ is 16 including the NUL; allow what `ip link` accepts in practice.
_IFACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")
_DIR_RE = re.compile(r"^/[A-Za-z0-9_./-]*/capture-all\.[A-Za-z0-9]{8}$")
_TMPBASE_RE = re.compile(r"^/[A-Za-z0-9_./-]{0,200}$")

# Exit statuses our scripts use for their own refusals (>= 10 so they never look like sudo's 1).
EXIT_NO_TOOL = 11
EXIT_NO_INTERFACE = 12
EXIT_LOW_DISK = 13
EXIT_NO_DIR = 14
EXIT_NOT_ARMED = 15
EXIT_TIMEOUT = 124  # GNU timeout's own status when it had to stop the command


class UnsafeValue(ValueError):
    """A value that must not reach a remote shell (raised before anything is sent)."""


def validate_interface(name: str) -> str:
    if name == "any" or (_IFACE_RE.match(name) and name not in (".", "..")):
        return name
    raise UnsafeValue(f"interface name {name!r} is not a valid Linux interface name")


def _port(p: int) -> int:
    if not isinstance(p, int) or not 0 < p < 65536:
        raise UnsafeValue(f"port {p!r} is not a number from 1 to 65535")
    return p


_TOOL_RE = re.compile(r"^/[A-Za-z0-9._/+-]{1,255}$")


def validate_tool_path(path: str) -> str:
    """An absolute path to a binary, as preflight reported it: plain characters only."""
    if not _TOOL_RE.match(path) or "/../" in path + "/":
        raise UnsafeValue(f"tool path {path!r} is not a plain absolute path")
    return path


def validate_tmpbase(path: str) -> str:
    if _TMPBASE_RE.match(path) and ".." not in path.split("/"):
        return path.rstrip("/") or "/"
    raise UnsafeValue(f"remote temp directory {path!r} must be an absolute plain path")


def validate_remote_dir(path: str) -> str:
    """Only ever act on a directory our own ``mktemp`` made (``.../capture-all.XXXXXXXX``)."""
    if _DIR_RE.match(path) and ".." not in path.split("/"):
        return path
    raise UnsafeValue(f"refusing to touch remote path {path!r}: not a capture-all directory")


@dataclass(frozen=True)
class RemoteCommand:
    """One remote invocation: ``phase`` names it (tests and the fake dispatch on it),
    ``args`` are the validated values, ``line`` is exactly what the SSH server is given."""

    phase: str
    args: tuple[str, ...]
    line: str
    timeout: float  # seconds, enforced on the host by `timeout` and on the controller
    privileged: bool = field(default=True)


# A snapshot: socket table, counters, addresses, links. Each command is optional on the host
# (a missing tool shows as a non-zero @@rc in its own section, never as a failed phase).
_SNAPSHOT = r"""
snap() { name=$1; shift; echo "@@section $name"; "$@" 2>&1; echo "@@rc $?"; }
snapfile() { echo "@@section $1"; cat "$2" 2>&1; echo "@@rc $?"; }
snap clock_ns date +%s%N
snap uname uname -r
snap ip_addr ip -j addr
snap ip_link ip -j link
snap ip_s_link ip -s link
snap ss_tnpi ss -tnpi
snap ss_tlnp ss -tlnp
snap ss_s ss -s
snap nstat nstat -asz
snapfile conntrack_count /proc/sys/net/netfilter/nf_conntrack_count
snapfile conntrack_max /proc/sys/net/netfilter/nf_conntrack_max
snapfile port_range /proc/sys/net/ipv4/ip_local_port_range
"""

# Phase 1: preflight, the private directory, the "before" snapshot.
# Args: tmpbase min_free_kb iface...
PREPARE_SCRIPT = (
    r"""
set -u
base=$1; minfree=$2; shift 2
echo "@@section preflight"
echo "uid=$(id -u)"
owner=${SUDO_USER:-$(id -un)}
echo "owner=$owner"
tcpdump=$(command -v tcpdump 2>/dev/null || true)
for p in /usr/sbin/tcpdump /usr/bin/tcpdump /sbin/tcpdump; do
  [ -n "$tcpdump" ] && break; [ -x "$p" ] && tcpdump=$p
done
[ -n "$tcpdump" ] || { echo "@@fail no_tcpdump tcpdump is not installed (not in PATH nor /usr/sbin)"; exit $E_NO_TOOL; }
echo "tcpdump=$tcpdump"
echo "tcpdump_version=$("$tcpdump" --version 2>&1 | head -n 1)"
for t in timeout setsid mktemp stat sha256sum; do
  command -v "$t" >/dev/null 2>&1 || { echo "@@fail no_tool $t is not installed"; exit $E_NO_TOOL; }
done
for i in "$@"; do
  [ "$i" = any ] || [ -e "/sys/class/net/$i" ] ||
    { echo "@@fail no_interface interface $i does not exist"; exit $E_NO_INTERFACE; }
done
[ -d "$base" ] || { echo "@@fail no_tmpdir $base does not exist"; exit $E_NO_DIR; }
free=$(df -Pk "$base" | awk 'NR==2 {print $4}')
echo "free_kb=$free"
[ "$free" -ge "$minfree" ] ||
  { echo "@@fail low_disk only $free KiB free in $base, need $minfree KiB"; exit $E_LOW_DISK; }
umask 077
dir=$(mktemp -d "$base/capture-all.XXXXXXXX") ||
  { echo "@@fail no_tmpdir cannot create a dir in $base"; exit $E_NO_DIR; }
chown "$owner" "$dir" 2>/dev/null || true
echo "dir=$dir"
"""
    + _SNAPSHOT
)

# The kernel reset witness, part of the job: its own ftrace instance (never the global buffer),
# named capture-all.<dir suffix>.<job pid>, with tcp:tcp_send_reset and tcp:tcp_receive_reset on,
# a bounded per-CPU buffer that keeps the first events when full (overwrite off), and the
# "mono" trace clock tied to the wall clock by trace_marker writes bracketed by wall-clock reads
# (bash's $EPOCHREALTIME, no fork, when there is a bash; else `date`). The job removes the instance
# when the capture ends, whatever the controller does; an instance of ours whose job no longer
# runs (a job killed outright) is removed by the next job on that host. tracefs is never mounted
# here: where it is missing the witness reports why and the capture goes on without it.
_WITNESS = r"""
wi=""
wstatus() { printf '%s\n' "$@" > "$dir/witness.status"; }
wset() { echo "$2" > "$wi/$1" 2>> "$dir/witness.err"; }
wsync() {
  if [ -n "$wbash" ]; then
    "$wbash" -c 'for k in 1 2 3; do
        a=$EPOCHREALTIME; echo "capture-all-sync $1 $k" > "$2/trace_marker"; b=$EPOCHREALTIME
        echo "$1 $k ${a//[!0-9]/}000 ${b//[!0-9]/}000"
      done' wsync "$1" "$wi" >> "$dir/witness.sync" 2>> "$dir/witness.err"
  else
    for k in 1 2 3; do a=$(date +%s%N); echo "capture-all-sync $1 $k" > "$wi/trace_marker"; b=$(date +%s%N)
      echo "$1 $k $a $b" >> "$dir/witness.sync"; done 2>> "$dir/witness.err"
  fi
}
witness_start() {
  tfs=""
  for t in /sys/kernel/tracing /sys/kernel/debug/tracing; do [ -d "$t/instances" ] && { tfs=$t; break; }; done
  if [ "$witness_kb" = 0 ]; then wstatus state=off "reason=turned off (--no-witness)"; return; fi
  if [ "$(id -u)" != 0 ]; then wstatus state=unavailable "reason=needs root to create an ftrace instance"; return; fi
  if [ -z "$tfs" ]; then
    wstatus state=unavailable \
      "reason=tracefs is not mounted (no /sys/kernel/tracing/instances); capture-all does not mount it on a host"
    return
  fi
  if [ ! -d "$tfs/events/tcp/tcp_send_reset" ]; then
    wstatus state=unavailable "reason=this kernel ($(uname -r)) has no tcp:tcp_send_reset tracepoint"; return
  fi
  swept=0
  for old in "$tfs"/instances/capture-all.*; do
    [ -d "$old" ] || continue
    p=${old##*.}
    case "$p" in *[!0-9]*|"") continue;; esac
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q capture-all-job && continue
    rmdir "$old" 2>/dev/null && swept=$((swept + 1))
  done
  wi="$tfs/instances/capture-all.${dir##*.}.$$"
  if ! mkdir "$wi" 2>> "$dir/witness.err"; then
    wstatus state=unavailable "reason=cannot create an ftrace instance: $(tail -n 1 "$dir/witness.err")"; wi=""; return
  fi
  ok=1
  wset tracing_on 0 && wset buffer_size_kb "$witness_kb" && wset options/overwrite 0 || ok=0
  wset options/irq-info 1
  # mono follows CLOCK_MONOTONIC; else global (one clock for all CPUs; never the per-CPU local).
  clock=""
  for c in mono global; do grep -qw "$c" "$wi/trace_clock" && wset trace_clock "$c" && { clock=$c; break; }; done
  [ -n "$clock" ] || ok=0
  events=""
  for ev in tcp_send_reset tcp_receive_reset; do
    [ -d "$wi/events/tcp/$ev" ] || continue
    cat "$wi/events/tcp/$ev/format" > "$dir/witness.$ev.format" && wset "events/tcp/$ev/enable" 1 || ok=0
    events="$events,$ev"
  done
  wset tracing_on 1 || ok=0
  if [ "$ok" != 1 ]; then
    rmdir "$wi" 2>/dev/null
    wstatus state=unavailable "reason=cannot set up the ftrace instance: $(tail -n 1 "$dir/witness.err")"; wi=""; return
  fi
  wbash=""
  b=$(command -v bash 2>/dev/null) && [ "$("$b" -c 'echo ${EPOCHREALTIME:+y}' 2>/dev/null)" = y ] && wbash=$b
  wsync start
  wstatus state=running "instance=$wi" "clock=$clock" "events=${events#,}" "buffer_kb=$witness_kb" "swept=$swept"
}
# Like tcpdump's files (-Z): owned by the SSH user, who pulls them over SFTP.
wown() { if [ -n "$zuser" ]; then chown "$zuser" "$dir"/witness.* 2>/dev/null; fi; return 0; }
witness_stop() {
  [ -n "$wi" ] || return 0
  wsync end
  wset tracing_on 0
  cat "$wi/trace" > "$dir/witness.trace" 2>> "$dir/witness.err"
  for s in "$wi"/per_cpu/cpu*/stats; do echo "@@cpu ${s%/stats}"; cat "$s"; done > "$dir/witness.stats" 2>/dev/null
  n=0
  while ! rmdir "$wi" 2>/dev/null && [ "$n" -lt 25 ]; do sleep 0.2; n=$((n + 1)); done
  if [ -d "$wi" ]; then removed=0; else removed=1; fi
  printf '%s\n' state=ran "removed=$removed" >> "$dir/witness.status"
}
"""

# The detached capture job. Args: dir limit maxpk maxbytes snaplen keep filter tcpdump owner
# witness_kb iface... Runs in its own session so neither the SSH channel nor `timeout` on the arm
# line can kill it; it is bounded by its own `timeout`, a size watchdog, and the reaper at the end.
JOB_SCRIPT = (
    _WITNESS
    + r"""
dir=$1 limit=$2 maxpk=$3 maxbytes=$4 snaplen=$5 keep=$6 filter=$7 tcpdump=$8 owner=$9
shift 9
witness_kb=$1
shift
zuser=""
[ "$(id -u)" = 0 ] && zuser=$owner
echo $$ > "$dir/job.pid"
witness_start
wown
pids=""
for i in "$@"; do
  timeout -s INT -k 5 "$limit" "$tcpdump" -i "$i" -nn -U -s "$snaplen" -c "$maxpk" \
    ${zuser:+-Z "$zuser"} --immediate-mode --time-stamp-precision=nano -w "$dir/$i.pcap" "$filter" \
    2> "$dir/$i.tcpdump.err" < /dev/null &
  echo "$!" > "$dir/$i.pid"
  pids="$pids $!"
done
# Size cap over all our files, checked every 0.2 s; bounded by the capture limit itself.
(
  n=$(( (limit + 10) * 5 ))
  while [ "$n" -gt 0 ]; do
    [ -f "$dir/done" ] && exit 0
    total=0
    for f in "$dir"/*.pcap; do [ -f "$f" ] && total=$((total + $(stat -c %s "$f"))); done
    if [ "$total" -ge "$maxbytes" ]; then
      echo size > "$dir/stop.reason"
      for p in $pids; do kill -INT "$p" 2>/dev/null; done
      exit 0
    fi
    sleep 0.2; n=$((n - 1))
  done
) &
wd=$!
for i in "$@"; do wait "$(cat "$dir/$i.pid")"; echo "$?" > "$dir/$i.rc"; done
kill "$wd" 2>/dev/null
witness_stop
wown
date +%s%N > "$dir/done"
# Reaper: whatever the controller does, nothing of ours stays on the disk beyond `keep` seconds
# after the capture ended (the controller renews the lease while it collects).
while [ -d "$dir" ]; do
  now=$(date +%s)
  last=$(stat -c %Y "$dir/lease" 2>/dev/null || stat -c %Y "$dir/done" 2>/dev/null || echo "$now")
  if [ $((now - last)) -ge "$keep" ]; then rm -rf -- "$dir"; break; fi
  sleep 1
done
"""
)

# Phase 2: start the job and return once every tcpdump says "listening on" (or failed).
# Args: job dir limit maxpk maxbytes snaplen keep filter tcpdump witness_kb iface...
# (tcpdump: the path preflight found, so that arm runs the very binary preflight checked)
ARM_SCRIPT = r"""
set -u
job=$1; dir=$2; limit=$3; maxpk=$4; maxbytes=$5; snaplen=$6; keep=$7; filter=$8; tcpdump=$9; witness_kb=${10}
shift 10
case "$dir" in */capture-all.????????) ;; *) echo "@@fail no_dir refusing $dir"; exit $E_NO_DIR;; esac
[ -d "$dir" ] || { echo "@@fail no_dir $dir is gone (reaped or removed)"; exit $E_NO_DIR; }
owner=$(stat -c %U "$dir")
umask 077
setsid sh -c "$job" capture-all-job "$dir" "$limit" "$maxpk" "$maxbytes" "$snaplen" "$keep" \
  "$filter" "$tcpdump" "$owner" "$witness_kb" "$@" < /dev/null > /dev/null 2>&1 &
n=0; ready=0
while [ "$n" -lt 200 ]; do
  ready=1
  for i in "$@"; do grep -q 'listening on' "$dir/$i.tcpdump.err" 2>/dev/null || ready=0; done
  [ "$ready" = 1 ] && break
  [ -f "$dir/done" ] && break
  sleep 0.05; n=$((n + 1))
done
echo "@@section arm"
echo "armed_ns=$(date +%s%N)"
echo "job_pid=$(cat "$dir/job.pid" 2>/dev/null)"
for i in "$@"; do echo "pid $i $(cat "$dir/$i.pid" 2>/dev/null)"; done
echo "@@section witness"
cat "$dir/witness.status" 2>/dev/null
if [ "$ready" != 1 ]; then
  for i in "$@"; do echo "@@section tcpdump_err $i"; cat "$dir/$i.tcpdump.err" 2>/dev/null; done
  echo "@@fail not_armed tcpdump did not start listening"
  exit $E_NOT_ARMED
fi
"""

# Phase 3: stop (if still running), wait for the job, report, then the "after" snapshot, and on a
# translating box (ports given) its conntrack entries for the flow's server ports: the host's own
# record of which name it gave each connection (read-only, at most 5000 lines).
# Args: dir wait_s ports(comma-separated, may be empty) iface...
FINISH_SCRIPT = (
    r"""
set -u
dir=$1; wait_s=$2; ports=$3; shift 3
case "$dir" in */capture-all.????????) ;; *) echo "@@fail no_dir refusing $dir"; exit $E_NO_DIR;; esac
[ -d "$dir" ] || { echo "@@fail no_dir $dir is gone (reaped or removed)"; exit $E_NO_DIR; }
touch "$dir/lease"
echo "@@section finish"
if [ -f "$dir/done" ]; then echo "already_done=1"; else
  echo "already_done=0"
  for i in "$@"; do
    p=$(cat "$dir/$i.pid" 2>/dev/null || true)
    # Only signal a PID that is still our own `timeout` for this directory (PIDs get reused).
    if [ -n "$p" ] && tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline" | grep -qF -- "$dir/"; then
      kill -INT "$p" 2>/dev/null
    fi
  done
fi
n=0
while [ ! -f "$dir/done" ] && [ "$n" -lt $((wait_s * 10)) ]; do sleep 0.1; n=$((n + 1)); done
echo "done_ns=$(cat "$dir/done" 2>/dev/null)"
echo "stop_reason=$(cat "$dir/stop.reason" 2>/dev/null)"
for i in "$@"; do
  echo "rc $i $(cat "$dir/$i.rc" 2>/dev/null)"
  f="$dir/$i.pcap"
  [ -f "$f" ] && echo "file $i.pcap $(stat -c %s "$f") $(sha256sum < "$f" | cut -d' ' -f1)"
done
for i in "$@"; do echo "@@section tcpdump_err $i"; cat "$dir/$i.tcpdump.err" 2>/dev/null; done
echo "@@section witness"
cat "$dir/witness.status" 2>/dev/null
for f in "$dir"/witness.*; do
  [ -f "$f" ] && echo "file ${f##*/} $(stat -c %s "$f") $(sha256sum < "$f" | cut -d' ' -f1)"
done
[ -s "$dir/witness.err" ] && echo "error=$(tail -n 1 "$dir/witness.err")"
"""
    + _SNAPSHOT
    + r"""
if [ -n "$ports" ]; then
  echo "@@section conntrack_flow"
  pat=" dport=($(echo "$ports" | tr , '|')) "
  if command -v conntrack >/dev/null 2>&1; then
    conntrack -L -p tcp 2>/dev/null | grep -E "$pat" | head -n 5000; echo "@@rc 0"
  elif [ -r /proc/net/nf_conntrack ]; then
    grep -E " tcp .*$pat" /proc/net/nf_conntrack | head -n 5000; echo "@@rc 0"
  else
    echo "no conntrack tool and no /proc/net/nf_conntrack"; echo "@@rc 1"
  fi
fi
"""
)

# Phase 4: remove our directory (the reaper then exits by itself). Args: dir
CLEANUP_SCRIPT = r"""
set -u
dir=$1
case "$dir" in */capture-all.????????) ;; *) echo "@@fail no_dir refusing $dir"; exit $E_NO_DIR;; esac
rm -rf -- "$dir"
[ -e "$dir" ] && { echo "@@fail cleanup $dir still exists"; exit $E_NO_DIR; }
echo "@@section cleanup"
echo "removed=$dir"
"""


# The SSH clock probe: answers each line it reads with the host's clock, until stdin closes.
# bash's $EPOCHREALTIME needs no fork (microseconds); otherwise `date` (nanoseconds, a fork).
PROBE_SCRIPT = r"""
if command -v bash >/dev/null 2>&1 && [ "$(bash -c 'echo ${EPOCHREALTIME:+y}' 2>/dev/null)" = y ]; then
  exec bash -c 'echo "@@clock us"; while read -r _; do echo "${EPOCHREALTIME//[!0-9]/}"; done'
fi
echo "@@clock ns"
while read -r _; do date +%s%N; done
"""


# The scripts' exit codes come from the constants above (the parsers and the orchestrator read the
# same ones): each script starts by defining them.
_EXIT_CODES = (
    f"E_NO_TOOL={EXIT_NO_TOOL} E_NO_INTERFACE={EXIT_NO_INTERFACE} E_LOW_DISK={EXIT_LOW_DISK} "
    f"E_NO_DIR={EXIT_NO_DIR} E_NOT_ARMED={EXIT_NOT_ARMED}"
)


def _line(script: str, args: tuple[str, ...], *, timeout: float, sudo: bool, prefix: str = "") -> str:
    argv = ["timeout", "-k", "5", str(int(timeout)), "sh", "-c", _EXIT_CODES + "\n" + script, "capture-all", *args]
    if sudo:
        argv = ["sudo", "-n", "--", *argv]
    return prefix + " ".join(shlex.quote(a) for a in argv)


def prepare(tmpbase: str, interfaces: list[str], *, min_free_kb: int, sudo: bool) -> RemoteCommand:
    args = (validate_tmpbase(tmpbase), str(int(min_free_kb)), *map(validate_interface, interfaces))
    # SSH_CONNECTION is read before sudo (which clears it): it is how the host sees our session,
    # and the capture filter excludes exactly that 4-tuple.
    prefix = 'echo "@@ssh $SSH_CONNECTION"; '
    return RemoteCommand("prepare", args, _line(PREPARE_SCRIPT, args, timeout=60, sudo=sudo, prefix=prefix), 60)


def arm(
    remote_dir: str,
    interfaces: list[str],
    bpf_filter: str,
    *,
    tcpdump: str,
    limit_s: int,
    max_packets: int,
    max_bytes: int,
    snaplen: int,
    keep_s: int,
    witness_kb: int,
    sudo: bool,
) -> RemoteCommand:
    """``witness_kb`` is the witness's per-CPU trace buffer; 0 turns the witness off."""
    args = (
        JOB_SCRIPT,
        validate_remote_dir(remote_dir),
        str(int(limit_s)),
        str(int(max_packets)),
        str(int(max_bytes)),
        str(int(snaplen)),
        str(int(keep_s)),
        bpf_filter,
        validate_tool_path(tcpdump),
        str(int(witness_kb)),
        *map(validate_interface, interfaces),
    )
    return RemoteCommand("arm", args, _line(ARM_SCRIPT, args, timeout=30, sudo=sudo), 30)


def finish(
    remote_dir: str, interfaces: list[str], *, wait_s: int, sudo: bool, conntrack_ports: tuple[int, ...] = ()
) -> RemoteCommand:
    """``conntrack_ports``: the flow's server ports, on a translating box (its conntrack entries
    for them are read after the capture); empty elsewhere."""
    ports = ",".join(str(_port(p)) for p in conntrack_ports)
    args = (validate_remote_dir(remote_dir), str(int(wait_s)), ports, *map(validate_interface, interfaces))
    timeout = wait_s + 60
    return RemoteCommand("finish", args, _line(FINISH_SCRIPT, args, timeout=timeout, sudo=sudo), timeout)


def cleanup(remote_dir: str, *, sudo: bool) -> RemoteCommand:
    args = (validate_remote_dir(remote_dir),)
    return RemoteCommand("cleanup", args, _line(CLEANUP_SCRIPT, args, timeout=30, sudo=sudo), 30)


def reproduce(command: str, *, timeout_s: int) -> RemoteCommand:
    """The user's own reproduction command, run on purpose by a shell on the client host.

    It is the one place a user string is meant to be a shell command: it is passed as a single
    quoted argument to ``sh -c`` (never spliced into our scripts), bounded by ``timeout``, and
    run without sudo."""
    if "\x00" in command or not command.strip():
        raise UnsafeValue("--reproduce needs a non-empty command without NUL bytes")
    args = (command,)
    argv = ["timeout", "-k", "2", str(int(timeout_s)), "sh", "-c", command]
    line = " ".join(shlex.quote(a) for a in argv)
    return RemoteCommand("reproduce", args, line, timeout_s + 5, privileged=False)


def clock_probe(*, timeout_s: int = 20) -> RemoteCommand:
    """Reads the host's clock on request (see PROBE_SCRIPT); needs no privilege."""
    return RemoteCommand("probe", (), _line(PROBE_SCRIPT, (), timeout=timeout_s, sudo=False), timeout_s,
                         privileged=False)  # fmt: skip
