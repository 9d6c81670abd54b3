r"""The shell that runs on a host, as constants (``remote.commands`` builds the lines around them).

Rules of this module:

- No value is ever spliced into these texts: values arrive as positional parameters and every
  word of the final line is ``shlex.quote``d (``remote.commands``). The one value that arrives
  later, the capture filter, comes over the session's stdin into ``read -r`` and is only ever
  used as one quoted argument of tcpdump: the shell never evaluates it.
- Few processes: on a host every ``fork`` costs a millisecond or more, and the controller waits
  for the slowest of many hosts. Builtins read small files (``read`` loops, not ``cat``), one
  ``stat`` and one ``sha256sum`` cover every file, the trace and reaper loops sleep long.
- Bounded whatever happens: each line runs under ``timeout``; the capture job runs detached
  (``setsid``) so neither SSH nor the controller can keep it alive or cut it short, and it ends by
  itself (its own ``timeout``, the size watchdog, the reaper); a session whose controller goes away
  sees EOF on stdin and stops there.

Output is line-oriented: ``@@section NAME`` opens a block, ``@@rc N`` closes a snapshot command,
``@@fail CODE TEXT`` explains a refusal; ``@@ready``, ``@@probe UNIT``, ``@@armed`` and
``@@listed`` are the points where a session waits for the controller (``remote.parse`` and
``orchestrator.host``).

The capture session (one per host, one shell for the whole run)::

    host: preflight, private dir, the detached job (which waits for "go")    -> @@ready
    ctl:  go FILTER                        (sent to every host at once: the start barrier)
    host: tcpdump on every interface, listening; the host's time now         -> @@probe us
    ctl:  t (x8, one answer each), then snap
    host: the kernel witness, the "before" snapshot, the witness's state     -> @@armed
    ctl:  probe                            (near the window's end, while the capture runs)
    host: the host's time now                                                -> @@probe us
    ctl:  t (x8), then snap                                                  <- @@armed
    ctl:  finish                           (once the window is over)
    host: stop, wait for the job, files and digests (and, if no probe was asked for while the
          capture ran, @@probe us; ctl: t (x8), then snap)
    host: the "after" snapshot, the small files inline                       -> @@listed
    ctl:  (pulls the others over SFTP or cat), then rm
    host: removes the directory                                              -> exit 0

After a lost connection the finishing half runs in a session of its own (``FINISH_SCRIPT``).
"""

from __future__ import annotations

# Builtins only: a small file's lines (``cat`` would be a process per file).
_READ = r"""
# A line of data that starts with @@ (a process's name in ss, a log line) is sent with a space
# before it: only our own words are markers (issue 29.7).
catf() { while IFS= read -r l || [ -n "$l" ]; do case $l in @@*) l=" $l";; esac; printf '%s\n' "$l"; done < "$1"; }
"""

# One capture-all run per network stack at a time: a lock named after the host's network namespace
# (two runs on one host would double its load and capture each other): a symlink to the holder's
# directory, made atomically by `ln -sn` (-n: never a link inside the holder's directory). The lock
# and each run's record (RUNDIR/capture-all.XXXXXXXX.holder: who; .pid: its job) live in the run
# directory (/run/capture-all), which root makes 0700 and trusts only while it is a root-owned 0700
# directory, not a link: no local user can plant a lock, point one at a file of theirs, forge a
# holder or a job there (issue 29.2). A holder whose directory is gone, whose capture ended, or
# whose job is dead (its record older than 30 s) no longer holds.
_LOCK = r"""
# rundir_ok: the run directory, made if missing, is root's alone (uses rundir).
# shellcheck disable=SC2154 # rundir: an argument of the scripts that call these (the job has the lock)
rundir_ok() {
  mkdir -m 700 -- "$rundir" 2>/dev/null
  [ "$(stat -c '%u %a %F' -- "$rundir" 2>/dev/null)" = "0 700 directory" ]
}
# lockname also learns the PID namespace (the witness's instance names, winame): one stat for both.
lockname() {
  ns=""
  # shellcheck disable=SC2034 # pidns: for the capture session's witness (winame), not every script's
  for w in $(stat -L -c '%n=%i' /proc/self/ns/net /proc/self/ns/pid 2>/dev/null); do
    case $w in */net=*) ns=${w#*=};; */pid=*) pidns=${w#*=};; esac
  done
  lock="$rundir/capture-all.lock${ns:+.$ns}"
}
# rmall: our directory, its record and, where the lock is still ours (it is our directory: -ef, no
# readlink process), the lock with it: one rm. The run directory is the lock's.
rmall() {
  set -- "$dir"
  [ -n "${lock:-}" ] && set -- "$@" "${lock%/*}/${dir##*/}.holder" "${lock%/*}/${dir##*/}.pid"
  # shellcheck disable=SC3013 # -ef (the same file through the lock's link): dash, bash and ash have it
  [ -n "${lock:-}" ] && [ "$lock" -ef "$dir" ] && set -- "$@" "$lock"
  rm -rf -- "$@"
}
"""

# held DIR: 0 while DIR's run captures (or is starting: no job yet, made in the last 30 s).
# Only the capture session's preflight asks.
_HELD = r"""
held() {
  case $1 in /*/capture-all.????????) ;; *) return 1;; esac  # a run of any tmpdir
  [ -d "$1" ] && [ ! -f "$1/done" ] || return 1
  r="$rundir/${1##*/}"
  p=""; [ -f "$r.pid" ] && read -r p < "$r.pid"
  if [ -n "$p" ]; then tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline" | grep -qF -- "capture-all-job $1 "; return; fi
  m=$(stat -c %Y -- "$r.holder" 2>/dev/null) || return 1  # gone meanwhile
  [ $(( $(date +%s) - m )) -lt 30 ]
}
"""

_NAP = r"""
# Waiting for something on this host: 10, 20, 50, 100 ms, then 200 ms naps; $n counts the
# centiseconds slept (start a wait with n=0 naps=""). Each nap is a process: polling a hundred
# hosts every 10 ms would itself be the load that keeps their captures from starting.
nap() {
  case ${naps:-} in
    "") naps=1; sleep 0.01; n=$((n + 1));; 1) naps=2; sleep 0.02; n=$((n + 2));;
    2) naps=3; sleep 0.05; n=$((n + 5));; 3) naps=4; sleep 0.1; n=$((n + 10));;
    *) sleep 0.2; n=$((n + 20));;
  esac
}
# Waiting for the capture: "listen" until every interface's tcpdump listens (0) or the job
# stopped first (1); "done" until the job marked the directory done (0). At most LIMIT
# centiseconds (then 1). Where the host has bash, one bash process sleeps on the fifo $dir/nap
# (`read -t`), which the job writes a line to whenever one of these changes (a capture listens,
# the captures stopped, done): it looks as soon as there is something to see and otherwise every
# half second, with builtins only. Elsewhere, the naps above. Uses dir.
cap_fns='
cap_state() {
  if [ "$1" = done ]; then [ -f "$dir/done" ] && return 0; return 2; fi
  shift
  for i; do
    seen=0
    if [ -f "$dir/$i.tcpdump.err" ]; then
      while IFS= read -r l; do case $l in *"listening on"*) seen=1; break;; esac; done < "$dir/$i.tcpdump.err"
    fi
    [ "$seen" = 1 ] || { [ -f "$dir/stopping" ] && return 1; return 2; }
  done
  return 0
}'
eval "$cap_fns"
await_cap() {
  if command -v bash >/dev/null 2>&1 && [ -p "$dir/nap" ]; then
    dir=$dir bash --norc --noprofile -c "$cap_fns"'
      exec 9<> "$dir/nap" || exit 1
      mode=$1 limit=$2; shift 2; k=0
      while :; do
        cap_state "$mode" "$@"; r=$?; [ "$r" = 2 ] || exit "$r"
        [ "$k" -ge "$limit" ] && exit 1
        read -r -t 0.5 -u 9 _ || k=$((k + 50))
      done' capture-all-wait "$@"
    return
  fi
  mode=$1 limit=$2; shift 2; n=0; naps=""
  while :; do
    cap_state "$mode" "$@"; r=$?; [ "$r" = 2 ] || return "$r"
    [ "$n" -ge "$limit" ] && return 1
    nap
  done
}
"""

# A snapshot: socket table, counters, addresses, links. Each command is optional on the host (a
# missing tool shows as a non-zero @@rc in its own section, never as a failed phase). One `ss -tanpi`
# gives both the connections and the listeners (`-p` walks every process's fds, once), only those of
# the flow's ports ($ports): a busy proxy holds tens of thousands of connections nobody asked about.
# Uses $nl (a newline).
SNAPSHOT = r"""
snap() { name=$1; shift; echo "@@section $name"; out=$("$@" 2>&1); rc=$?; esc "$out"; echo "@@rc $rc"; }
# esc TEXT: the text, a line of it that starts with @@ with a space before it (see catf). A process
# whose name is "\n@@listed" holds a socket of the flow: ss prints the name as it is.
esc() {
  case $1 in
    "") return;;
    @@*|*"$nl@@"*) ;;
    *) printf '%s\n' "$1"; return;;
  esac
  oifs=$IFS; IFS=$nl; set -f
  for l in $1; do case $l in @@*) printf ' %s\n' "$l";; *) printf '%s\n' "$l";; esac; done
  IFS=$oifs; set +f
}
# snapfiles NAME cat|read FILE...: a section of every one of the files that can be read, one after
# the other. "cat": one `cat` for them all where there is one, for larger files (the shell's `read`
# takes a byte per system call: on the development VM the loop took 4.6 ms for the three SNMP
# files, 8 KB, and a `cat` 0.9 ms); "read": the builtin loop, for a few hundred bytes (sockstat and
# sockstat6: 0.16 ms there, and a process fewer on the host, twice a run).
snapfiles() {
  echo "@@section $1"; how=$2; shift 2; r=1; all=$*
  for f; do shift; [ -r "$f" ] && { set -- "$@" "$f"; r=0; }; done
  if [ "$r" = 1 ]; then echo "cannot read $all"
  elif [ "$how" = cat ] && command -v cat >/dev/null 2>&1; then cat -- "$@" 2>/dev/null
  else for f; do catf "$f"; done; fi
  echo "@@rc $r"
}
# kfiles NAME=FILE...: a section each for the kernel's small files (/proc/sys), every one read
# whole by one process (grep prints each line after its file's name). Never the shell's `read`:
# dash reads a byte per read(2), and the kernel answers a read of an integer /proc/sys file at a
# non-zero offset with end-of-file (nf_conntrack_max 262144 came back as 2). The paths are ours,
# without spaces or colons. A file grep did not print (no grep) is read by a `cat` of its own.
kfiles() {
  kf=""; for a; do kf="$kf ${a#*=}"; done
  # shellcheck disable=SC2086 # the list of our paths, split on spaces
  kgot=$(grep -H '' $kf 2>/dev/null)
  for a; do
    n=${a%%=*}; f=${a#*=}; echo "@@section $n"
    if [ ! -r "$f" ]; then echo "cannot read $f"; echo "@@rc 1"; continue; fi
    kany=0; oifs=$IFS; IFS=$nl; set -f
    for l in $kgot; do case $l in "$f:"*) printf '%s\n' "${l#"$f:"}"; kany=1;; esac; done
    IFS=$oifs; set +f
    [ "$kany" = 1 ] || cat -- "$f"
    echo "@@rc 0"
  done
}
# snapshot [after]: "after" leaves out what does not change (addresses, kernel, limits).
snapshot() {
  [ "${clocked:-0}" = 1 ] || snap clock_ns date +%s%N
  clocked=0
  if [ "${1:-}" != after ]; then
    snap ip_addr ip -j addr
  fi
  snap ip_s_link ip -s link
  ssf=""
  oifs=$IFS; IFS=,; for p in $ports; do ssf="$ssf${ssf:+ or }sport = :$p or dport = :$p"; done; IFS=$oifs
  if [ -z "$ssf" ]; then snap ss_tanpi ss -tanpi
  else
    # The process walk (-p) only where the host holds sockets of the flow's ports: a router, a NAT
    # or a box the flow does not reach holds none, and walking every process would buy nothing.
    socks=$(ss -tani "( $ssf )" 2>&1); rc=$?
    case $socks in
      *"$nl"*) snap ss_tanpi ss -tanpi "( $ssf )";;
      *) echo "@@section ss_tanpi"; esc "$socks"; echo "@@rc $rc";;
    esac
  fi
  # The kernel's socket and SNMP counters as it prints them (what `ss -s` and `nstat -asz` read and
  # print again): one `cat`, for the larger files, instead of running those two.
  snapfiles sockstat read /proc/net/sockstat /proc/net/sockstat6
  snapfiles nstat cat /proc/net/snmp /proc/net/netstat /proc/net/snmp6
  if [ "${1:-}" != after ]; then
    kfiles uname=/proc/sys/kernel/osrelease conntrack_count=/proc/sys/net/netfilter/nf_conntrack_count \
      conntrack_max=/proc/sys/net/netfilter/nf_conntrack_max port_range=/proc/sys/net/ipv4/ip_local_port_range
    [ "${zoned:-0}" = 1 ] || snap utc_offset date +%z
  else
    kfiles conntrack_count=/proc/sys/net/netfilter/nf_conntrack_count
  fi
}
"""

# What a snapshot reads, section by section, for people (capture-all plan); "after" leaves out the
# ones marked False. tests/unit/test_scripts.py holds it to the sections SNAPSHOT prints.
SNAPSHOT_READS: tuple[tuple[str, str, bool], ...] = (
    ("clock_ns", "the host's clock (date +%s%N, or the clock probe's last answer)", True),
    ("uname", "the kernel's release (/proc/sys/kernel/osrelease)", False),
    ("ip_addr", "its addresses and links (ip -j addr)", False),
    ("ip_s_link", "the interfaces' counters (ip -s link)", True),
    ("ss_tanpi", "the sockets of the flow's ports, with their processes (ss -tanpi {ss_filter})", True),
    ("sockstat", "socket counts (/proc/net/sockstat, sockstat6)", True),
    ("nstat", "the TCP, IP and SNMP counters (/proc/net/snmp, netstat, snmp6)", True),
    ("conntrack_count", "conntrack's entries (/proc/sys/net/netfilter/nf_conntrack_count)", True),
    ("conntrack_max", "conntrack's limit (/proc/sys/net/netfilter/nf_conntrack_max)", False),
    ("port_range", "the local port range (/proc/sys/net/ipv4/ip_local_port_range)", False),
    ("utc_offset", "the time zone (date +%z)", False),
)

# The clock probe: answers each "t" line with the host's clock until another line comes. bash's
# $EPOCHREALTIME needs no process (microseconds); otherwise `date` (nanoseconds, a process each).
# Every bash of ours runs with --norc: a bash started under an SSH session (SSH_CLIENT set) sources
# ~/.bashrc otherwise (Debian's SSH_SOURCE_BASHRC), the host's slow login files once more each time.
PROBE = r"""
# It first says the host's time now (section "probe": in the capture session that is the moment
# its capture listens, "armed"). probe start|late|end: after the start's and the end's, the
# snapshot that follows needs no `date` where bash answered: bash says the clock there (section
# clock_ns) and, at the start, the UTC offset (two processes fewer a host; clocked, zoned).
probe() {
  if command -v bash >/dev/null 2>&1; then
    bash --norc --noprofile -c 'if [ -n "${EPOCHREALTIME:-}" ]; then
      echo "@@section probe"; echo "now_ns=${EPOCHREALTIME//[!0-9]/}000"; echo "@@probe us"
      while IFS= read -r l && [ "$l" = t ]; do echo "${EPOCHREALTIME//[!0-9]/}"; done
      [ "$1" = late ] && exit 0
      echo "@@section clock_ns"; echo "${EPOCHREALTIME//[!0-9]/}000"; echo "@@rc 0"
      [ "$1" = start ] && { echo "@@section utc_offset"; printf "%(%z)T\n" -1; echo "@@rc 0"; }
      exit 3
    else echo "@@section probe"; echo "now_ns=$(date +%s%N)"; echo "@@probe ns"
      while IFS= read -r l && [ "$l" = t ]; do date +%s%N; done; fi' capture-all-probe "$1"
    [ $? = 3 ] && { clocked=1; [ "$1" = start ] && zoned=1; }
  else
    echo "@@section probe"; echo "now_ns=$(date +%s%N)"; echo "@@probe ns"
    while IFS= read -r l && [ "$l" = t ]; do date +%s%N; done
  fi
}
"""

# The kernel reset witness. Its own ftrace instance (never the global buffer, never another's),
# named capture-all.p<PID namespace>.<dir suffix>.<job PID>: tcp:tcp_send_reset and tcp:tcp_receive_reset on, a
# bounded per-CPU buffer that keeps the first events when full (overwrite off), the "mono" trace
# clock tied to the wall clock by trace_marker writes bracketed by wall-clock reads. The arm
# session sets it up once tcpdump listens (an instance costs the kernel tens of milliseconds, and
# the capture must not wait for it); the job removes it when the capture ends, whatever the
# controller does. Who removes it when the two race: the session creates it and then looks for the
# job's "stopping" mark; the job writes that mark and then looks for the instance: one of them
# always sees the other. An instance of ours whose job is gone is removed by the next job's session
# in that PID namespace on that host. tracefs is never mounted here: where it is missing the witness says why.
_WITNESS = r"""
wstatus() { printf '%s\n' "$@" > "$dir/witness.status"; }
wset() { echo "$2" > "$wi/$1" 2>> "$dir/witness.err"; }
wremove() {
  echo 0 > "$1/tracing_on" 2>/dev/null
  n=0
  while ! rmdir "$1" 2>/dev/null && [ "$n" -lt 25 ]; do sleep 0.2; n=$((n + 1)); done
}
# Our instances are named capture-all.p<PID namespace>.<dir suffix>.<job PID>: a job's PID means
# something only in its own PID namespace (containers may share one tracefs).
winame() {
  [ -n "${pidns:-}" ] || pidns=$(stat -L -c %i /proc/self/ns/pid 2>/dev/null) || pidns=0
  wname="$tfs/instances/capture-all.p$pidns.${dir##*.}.$1"
}
tracefs() {
  tfs=""
  for t in /sys/kernel/tracing /sys/kernel/debug/tracing; do [ -d "$t/instances" ] && { tfs=$t; return 0; }; done
  return 1
}
wsync() {
  if command -v bash >/dev/null 2>&1; then
    bash --norc --noprofile -c 'for k in 1 2 3; do [ -n "${EPOCHREALTIME:-}" ] || exit 1
        a=$EPOCHREALTIME; echo "capture-all-sync $1 $k" > "$2/trace_marker"; b=$EPOCHREALTIME
        echo "$1 $k ${a//[!0-9]/}000 ${b//[!0-9]/}000"
      done' wsync "$1" "$wi" >> "$dir/witness.sync" 2>> "$dir/witness.err" && return 0
  fi
  for k in 1 2 3; do a=$(date +%s%N); echo "capture-all-sync $1 $k" > "$wi/trace_marker"; b=$(date +%s%N)
    echo "$1 $k $a $b" >> "$dir/witness.sync"; done 2>> "$dir/witness.err"
}
"""

_WITNESS_START = r"""
witness_start() {
  wi=""
  if [ "$witness_kb" = 0 ]; then wstatus state=off "reason=turned off (--no-witness)"; return; fi
  if ! tracefs; then
    wstatus state=unavailable \
      "reason=tracefs is not mounted (no /sys/kernel/tracing/instances); capture-all does not mount it on a host"
    return
  fi
  if [ ! -d "$tfs/events/tcp/tcp_send_reset" ]; then
    wstatus state=unavailable "reason=this kernel ($(uname -r)) has no tcp:tcp_send_reset tracepoint"; return
  fi
  # Sweep the instances of our PID namespace whose job is gone: a PID no longer there, or one
  # reused by something else (one grep over those cmdlines: never a process per instance).
  winame "$jobpid"
  swept=0; alive=""
  for old in "$tfs"/instances/capture-all.p"$pidns".*; do
    [ -d "$old" ] || continue
    p=${old##*.}
    case "$p" in *[!0-9]*|"") continue;; esac
    if [ -d "/proc/$p" ]; then alive="$alive $p"; else rmdir "$old" 2>/dev/null && swept=$((swept + 1)); fi
  done
  if [ -n "$alive" ]; then
    # shellcheck disable=SC2046 # the PIDs, split on purpose (digits only)
    for p in $(cd /proc && grep -L -a -s -F capture-all-job $(for q in $alive; do echo "$q/cmdline"; done)); do
      p=${p%/cmdline}
      for old in "$tfs"/instances/capture-all.p"$pidns".*."$p"; do
        [ -d "$old" ] && rmdir "$old" 2>/dev/null && swept=$((swept + 1))
      done
    done
  fi
  wi=$wname
  if ! mkdir "$wi" 2>> "$dir/witness.err"; then
    wstatus state=unavailable "reason=cannot create an ftrace instance: $(tail -n 1 "$dir/witness.err")"; wi=""; return
  fi
  ok=1
  wset tracing_on 0 && wset buffer_size_kb "$witness_kb" && wset options/overwrite "${woverwrite:-0}" || ok=0
  wset options/irq-info 1
  # mono follows CLOCK_MONOTONIC; else global (one clock for all CPUs; never the per-CPU local).
  clock=""; clocks=""
  read -r clocks < "$wi/trace_clock"
  for c in mono global; do
    case " $clocks " in *" $c "*|*" [$c] "*) wset trace_clock "$c" && { clock=$c; break; };; esac
  done
  [ -n "$clock" ] || ok=0
  events=""
  for ev in tcp_send_reset tcp_receive_reset; do
    [ -d "$wi/events/tcp/$ev" ] || continue
    catf "$wi/events/tcp/$ev/format" > "$dir/witness.$ev.format" && wset "events/tcp/$ev/enable" 1 || ok=0
    events="$events,$ev"
  done
  wset tracing_on 1 || ok=0
  if [ -f "$dir/stopping" ]; then
    wremove "$wi"
    wstatus state=unavailable "reason=the capture ended before the witness was set up"; wi=""; return
  fi
  if [ "$ok" != 1 ]; then
    rmdir "$wi" 2>/dev/null
    wstatus state=unavailable "reason=cannot set up the ftrace instance: $(tail -n 1 "$dir/witness.err")"; wi=""; return
  fi
  wsync start
  wstatus state=running "instance=$wi" "clock=$clock" "events=${events#,}" "buffer_kb=$witness_kb" "swept=$swept"
  [ "$owner" = root ] || chown -- "$owner" "$dir"/witness.* 2>/dev/null
}
"""

# Watch mode's ring (tcpdump -C/-W: IFACE.pcap0, IFACE.pcap1, ...), once the capture stopped: the
# files that overlap the window [wfrom, wto] (host clock, ns; wto=0: every file) are joined in
# time order into IFACE.pcap (each file's first packet from its record header, its last by its
# mtime, to the second: a file is kept when in doubt), the others deleted unread: only the window
# is ever pulled. Says how far back the kept files reach ("reach IFACE NS": the first packet).
_RINGCUT = r"""
ringcut() {
  keep=""; all=0; kept=0
  for f in "$dir/$1".pcap[0-9]*; do
    [ -f "$f" ] || continue
    all=$((all + 1))
    [ "$all" = 1 ] && head -c 24 -- "$f" > "$dir/$1.hdr"  # the file header, for a window without packets
    set -f
    # shellcheck disable=SC2046 # od's two numbers, split on purpose
    set -- "$1" $(od -An -tu4 -j24 -N8 -- "$f" 2>/dev/null); set +f
    if [ $# != 3 ]; then rm -f -- "$f"; continue; fi  # no packet in it
    first=$(( $2 * 1000000000 + $3 ))
    m=$(stat -c %Y -- "$f") || m=0
    last=$(( (m + 1) * 1000000000 ))
    if [ "${wto:-0}" != 0 ] && { [ "$first" -gt "$wto" ] || [ "$last" -lt "$wfrom" ]; }; then
      rm -f -- "$f"; continue
    fi
    keep="$keep$first $f$nl"; kept=$((kept + 1))
  done
  [ "$all" = 0 ] && return 0
  echo "ring $1 $kept $all"
  out="$dir/$1.pcap"; (umask 077; : > "$out"); n=0
  oifs=$IFS; IFS=$nl; set -f
  for line in $(printf '%s' "$keep" | sort -n); do
    f=${line#* }
    if [ "$n" = 0 ]; then echo "reach $1 ${line%% *}"; cat -- "$f" >> "$out"; else tail -c +25 -- "$f" >> "$out"; fi
    rm -f -- "$f"; n=$((n + 1))
  done
  IFS=$oifs; set +f
  # No packet in the window: an empty capture (its header alone) says so, as a quiet one-shot does.
  if [ "$n" = 0 ]; then mv -f -- "$dir/$1.hdr" "$out"; else rm -f -- "$dir/$1.hdr"; fi
  [ -f "$out" ] && chown --reference="$dir" -- "$out" 2>/dev/null  # the login user pulls it
  return 0
}
"""

# Finishing, in the capture session once the window is over (or in a session of its own after a
# reconnect): stop (if still running), wait for the job, list the files with their digests; then
# the clock probe (unless the session took it while the capture ran: probed=1), the "after"
# snapshot, on a translating box (conntrack=1) its conntrack entries for the flow's server ports
# (read-only, at most 5000 lines), and the small files themselves (base64, at most inline_kb in
# all: no transfer session for them); then wait for the controller to pull the others and say
# "rm". Uses dir wait_s ports conntrack inline_kb nl; "$@" the interfaces.
# The proxies' logs of the window (issue 14). At arm, logs_start records each source's end: a
# file's size, a journal's time (log.N.meta: source=, start=). At finish, logs_cut keeps what came
# after it, plus LOG_MARGIN bytes before (a file) or seconds (a journal), at most LOG_MAX bytes (the
# latest: the window's end is nearest the reset), in log.N.txt, and says so in log.N.meta. A file
# that shrank was rotated: its start is 0. A source that is missing or unreadable is a note there,
# never a failure. Read as the capture runs (root under sudo).
_LOGS = r"""
LOG_MAX=524288 LOG_MARGIN=4096
# shellcheck disable=SC2154 # logs: an argument of CAPTURE_SCRIPT, its one caller
logs_start() {
  n=0; oifs=$IFS; IFS=,; set -f
  for src in $logs; do
    n=$((n + 1)); m="$dir/log.$n.meta"
    printf 'source=%s\n' "$src" > "$m"
    case $src in
      journal=*) echo "start=$(date +%s)" >> "$m";;
      *) if [ -L "$src" ]; then echo "error=a symbolic link: not followed (name the file itself)" >> "$m"
         elif [ -e "$src" ] && [ ! -f "$src" ]; then echo "error=not a regular file (a FIFO, a device...)" >> "$m"
         elif [ -r "$src" ]; then echo "start=$(stat -c %s -- "$src")" >> "$m"
         elif [ -e "$src" ]; then echo "error=not readable (permission)" >> "$m"
         else echo "error=no such file" >> "$m"; fi;;
    esac
  done
  IFS=$oifs; set +f
}
# logread FILE FROM LEN: LEN bytes of FILE from byte FROM, from the first line that starts there or
# after (read from FROM - 1 to the first newline, dropped: a cut inside a line kept its tail as a
# record of its own, issue 30.6), through one descriptor checked to be FILE itself and a regular
# file: a log's owner may swap it for a link to a file of root's, a FIFO or a device at any moment
# (issue 29.4). In a child under `timeout`: opening a FIFO waits for a writer, and the finish must
# never wait for one.
logread() {
  timeout 20 sh -c 'nl="
"
    exec < "$1" || exit 3
    [ ! -L "$1" ] || exit 4
    s=$(stat -L -c "%d:%i:%f" -- "$1" /proc/self/fd/0 2>/dev/null) || exit 4
    case ${s##*:} in 8???) ;; *) exit 4;; esac  # the raw mode, in hex: 8 is a regular file
    [ "${s%%"$nl"*}" = "${s#*"$nl"}" ] && [ ! -L "$1" ] || exit 4
    if [ "$2" = 0 ]; then head -c "$3"; else tail -c +"$2" | head -c $(($3 + 1)) | tail -n +2; fi' \
    capture-all-log "$@" 2>/dev/null
}
logs_cut() {
  for m in "$dir"/log.*.meta; do
    [ -f "$m" ] || continue
    t="${m%.meta}.txt"; src=""; start=""
    while IFS= read -r l; do case $l in source=*) src=${l#source=};; start=*) start=${l#start=};; esac; done < "$m"
    [ -n "$start" ] || continue
    case $src in
      journal=*)
        if ! command -v journalctl >/dev/null 2>&1; then echo "error=no journalctl" >> "$m"; continue; fi
        journalctl -q --no-pager -o short-iso-precise -u "${src#journal=}" --since "@$((start - 2))" \
          --until "@$(( $(date +%s) + 1 ))" 2>> "$m.err" | tail -c "$LOG_MAX" > "$t"
        echo "to=$(date +%s)" >> "$m";;
      *)
        if [ -L "$src" ] || { [ -e "$src" ] && [ ! -f "$src" ]; }; then
          echo "error=not a regular file at the end (a link, a FIFO, a device): not read" >> "$m"; continue
        fi
        [ -r "$src" ] || { echo "error=not readable at the end" >> "$m"; continue; }
        end=$(stat -c %s -- "$src")
        if [ "$end" -lt "$start" ]; then echo "rotated=1" >> "$m"; start=0; fi
        from=$((start - LOG_MARGIN)); [ "$from" -ge 0 ] || from=0
        if [ $((end - from)) -gt "$LOG_MAX" ]; then from=$((end - LOG_MAX)); echo "truncated=1" >> "$m"; fi
        if ! logread "$src" "$from" $((end - from)) > "$t"; then
          rm -f -- "$t"; echo "error=changed while opened (a link, a FIFO, another file): not read" >> "$m"; continue
        fi
        echo "from_byte=$from" >> "$m"; echo "to_byte=$end" >> "$m";;  # from: the first whole line on
    esac
    [ -s "$m.err" ] && { e=""; while IFS= read -r l; do e=$l; done < "$m.err"; printf 'error=%s\n' "$e" >> "$m"; }
    rm -f -- "$m.err"
  done
  [ "${owner:-root}" = root ] || chown -- "$owner" "$dir"/log.* 2>/dev/null
}
"""

_FINISH = r"""
finish() {
  case "$dir" in */capture-all.????????) ;; *) echo "@@fail no_dir refusing $dir"; exit $E_NO_DIR;; esac
  [ -d "$dir" ] || { echo "@@fail no_dir $dir is gone (reaped or removed)"; exit $E_NO_DIR; }
  : > "$dir/lease"
  echo "@@section finish"
  if [ -f "$dir/done" ]; then echo "already_done=1"; else
    echo "already_done=0"
    for i; do
      p=""; [ -f "$dir/$i.pid" ] && read -r p < "$dir/$i.pid"
      # Only signal a PID that is still our own `timeout` for this directory (PIDs get reused).
      # `read` drops the NULs between its arguments: "-w" and the file's path run together.
      c=""; [ -n "$p" ] && { IFS= read -r c < "/proc/$p/cmdline"; } 2>/dev/null
      case $c in *"$dir/"*) kill -INT "$p" 2>/dev/null;; esac
    done
  fi
  await_cap "done" $((wait_s * 100))
  for i; do ringcut "$i"; done
  logs_cut
  v=""; [ -f "$dir/done" ] && read -r v < "$dir/done.ns"; echo "done_ns=$v"
  v=""; [ -f "$dir/stop.reason" ] && read -r v < "$dir/stop.reason"; echo "stop_reason=$v"
  for i; do v=""; [ -f "$dir/$i.rc" ] && read -r v < "$dir/$i.rc"; echo "rc $i $v"; done
  echo "@@section files"
  list=$(stat -c '%s %n' -- "$dir"/*.pcap "$dir"/witness.* "$dir"/log.* 2>/dev/null)
  small=""; room=$((inline_kb * 1024))
  for i; do ifaces="${ifaces:-} $i"; done
  oifs=$IFS; IFS=$nl; set -f
  for line in $list; do
    IFS=' '; set -- $line; IFS=$nl
    echo "size $1 $2"
    [ "$1" -le "$room" ] && { small="$small$nl$2"; room=$((room - $1)); }
  done
  IFS=$oifs; set +f
  sha256sum -- "$dir"/*.pcap "$dir"/witness.* "$dir"/log.* 2>/dev/null
  set -- ${ifaces:-}
  for i; do echo "@@section tcpdump_err $i"; [ -f "$dir/$i.tcpdump.err" ] && catf "$dir/$i.tcpdump.err"; done
  echo "@@section witness"
  [ -f "$dir/witness.status" ] && catf "$dir/witness.status"
  if [ -s "$dir/witness.err" ]; then e=""; while IFS= read -r l; do e=$l; done < "$dir/witness.err"; echo "error=$e"; fi
  [ "${probed:-0}" = 1 ] || probe end
  snapshot "${after:-}"
  if [ -n "$small" ] && command -v base64 >/dev/null 2>&1; then
    echo "@@section inline"
    oifs=$IFS; IFS=$nl; set -f
    for f in $small; do echo "name ${f##*/}"; done
    cat -- $small | base64; echo "@@rc $?"
    IFS=$oifs; set +f
  fi
  if [ "$conntrack" = 1 ] && [ -n "$ports" ]; then
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
  echo "@@listed"
  IFS= read -r said || exit 0
  [ "$said" = rm ] || exit 0
  wi=""; jobpid=""
  if [ -f "$dir/witness.status" ]; then
    while IFS= read -r l; do case $l in instance=*) wi=${l#instance=};; esac; done < "$dir/witness.status"
  fi
  [ -f "$dir/job.pid" ] && read -r jobpid < "$dir/job.pid"
  # The capture session's preflight named the lock already; elsewhere, only a trusted run directory's.
  [ -n "${lock:-}" ] || { rundir_ok && lockname; }
  rmall
  [ -e "$dir" ] && { echo "@@fail cleanup $dir still exists"; exit $E_NO_DIR; }
  echo "@@section cleanup"
  echo "removed=$dir"
  if [ -n "$wi" ]; then
    # The job removes its instance once the capture ended; the kernel takes a moment (tens of ms:
    # waited for up to a second; after that "pending": the job goes on, bounded, by itself).
    n=0; while [ -d "$wi" ] && [ "$n" -lt 10 ]; do sleep 0.1; n=$((n + 1)); done
    if [ ! -d "$wi" ]; then echo "instance_removed=1"
    elif [ -n "$jobpid" ] && [ -d "/proc/$jobpid" ]; then echo "instance_removed=pending"
    else echo "instance_removed=0"; fi
  fi
  exit 0
}
"""

# The capture session: preflight, the private directory, the detached job; on "go", the capture,
# the probe, the witness, the "before" snapshot; on "finish", the finish above. One shell for the
# whole run: a host's login files run once.
# Args: tmpbase rundir min_free_kb go_wait_s job limit maxpk maxbytes snaplen keep witness_kb ports
#       wait_s conntrack(0|1) inline_kb holder ring logs(comma list, "" none) iface...
CAPTURE_SCRIPT = (
    _READ
    + _LOCK
    + _HELD
    + _NAP
    + SNAPSHOT
    + PROBE
    + _WITNESS
    + _WITNESS_START
    + _RINGCUT
    + _LOGS
    + _FINISH
    + r"""
set -u
base=$1 rundir=$2 minfree=$3 gowait=$4 job=$5 limit=$6 maxpk=$7 maxbytes=$8 snaplen=$9
shift 9
keep=$1 witness_kb=$2 ports=$3 wait_s=$4 conntrack=$5 inline_kb=$6 holder=$7 ring=$8 logs=$9
shift 9
# Armed for hours (watch mode), the witness keeps the latest events: those before the trigger.
woverwrite=0; [ "$ring" = 0 ] || woverwrite=1
nl='
'
echo "@@section preflight"
uid=""
if [ -r /proc/self/status ]; then
  while read -r k r e _; do [ "$k" = Uid: ] && { uid=$e; break; }; done < /proc/self/status
fi
[ -n "$uid" ] || uid=$(id -u)
echo "uid=$uid"
owner=${SUDO_USER:-${LOGNAME:-${USER:-}}}
[ -n "$owner" ] || owner=$(id -un)
echo "owner=$owner"
[ "$uid" = 0 ] ||
  { echo "@@fail no_root commands run as uid $uid; tcpdump needs root: set sudo = true"; exit $E_NO_ROOT; }
tcpdump=""
oifs=$IFS; IFS=:; set -f
for d in $PATH /usr/sbin /usr/bin /sbin; do
  [ -f "$d/tcpdump" ] && [ -x "$d/tcpdump" ] && { tcpdump=$d/tcpdump; break; }
done
IFS=$oifs; set +f
[ -n "$tcpdump" ] || { echo "@@fail no_tcpdump tcpdump is not installed (not in PATH nor /usr/sbin)"; exit $E_NO_TOOL; }
echo "tcpdump=$tcpdump"
for t in timeout setsid mktemp stat sha256sum head df mkfifo; do
  command -v "$t" >/dev/null 2>&1 || { echo "@@fail no_tool $t is not installed"; exit $E_NO_TOOL; }
done
for i; do
  [ "$i" = any ] || [ -e "/sys/class/net/$i" ] ||
    { echo "@@fail no_interface interface $i does not exist"; exit $E_NO_INTERFACE; }
done
[ -d "$base" ] || { echo "@@fail no_tmpdir $base does not exist"; exit $E_NO_DIR; }
# Our directory is only ours where no other user can rename it away and put theirs in its place:
# tmpdir is root's (or the sudo user's), and writable by others only with the sticky bit (/tmp).
basesafe() {
  # shellcheck disable=SC2046 # owner and mode, split on purpose
  set -- $(stat -L -c '%u %a' -- "$base" 2>/dev/null)
  [ "${1:-x}" = 0 ] || [ "${1:-x}" = "${SUDO_UID:-0}" ] || return 1
  m=${2:-0}; s=0; case $m in ????) s=${m%???}; m=${m#?};; esac
  [ $((0$m & 022)) = 0 ] || [ $((s & 1)) = 1 ]
}
basesafe || { printf '%s\n' "@@fail no_tmpdir $base is not root's, or others may write in it without the \
sticky bit: another user could swap our directory (set tmpdir)"; exit $E_NO_DIR; }
rundir_ok || { printf '%s\n' "@@fail no_rundir $rundir is not a root-owned 0700 directory: refusing \
(another user could plant the run lock)"; exit $E_NO_DIR; }
dfo=$(df -Pk -- "$base" 2>/dev/null) || dfo=""
f4() { free=${4:-0}; }
set -f; f4 ${dfo##*"$nl"}; set +f
case $free in ""|*[!0-9]*) free=0;; esac
echo "free_kb=$free"
[ "$free" -ge "$minfree" ] ||
  { echo "@@fail low_disk only $free KiB free in $base, need $minfree KiB"; exit $E_LOW_DISK; }
umask 077
dir=$(mktemp -d "$base/capture-all.XXXXXXXX") ||
  { echo "@@fail no_tmpdir cannot create a dir in $base"; exit $E_NO_DIR; }
[ "$owner" = root ] || chown -- "$owner" "$dir" 2>/dev/null
echo "dir=$dir"
# Who holds the lock, in the run directory (its time is the file's own: a second run that finds it
# busy says it).
printf 'run=%s\nowner=%s\n' "$holder" "$owner" > "$rundir/${dir##*/}.holder"
lockname
if ! ln -sn -- "$dir" "$lock" 2>/dev/null; then
  other=$(readlink -- "$lock" 2>/dev/null) || other=""
  o="$rundir/${other##*/}"
  if held "$other" || { rm -f -- "$lock" "$o.holder" "$o.pid"; ! ln -sn -- "$dir" "$lock" 2>/dev/null; }; then
    who=""
    if [ -f "$o.holder" ]; then
      while IFS= read -r l; do who="$who${who:+ }$l"; done < "$o.holder"
      since=$(date -u -r "$o.holder" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null) && who="$who since=$since"
    fi
    rmall
    printf '%s\n' "@@fail busy another capture-all run captures on this host (${who:-holder unknown}; its dir $other)"
    exit $E_BUSY
  fi
fi
# go, nap, each interface's tcpdump stderr (read by the job, see there), and a watch's trig: one mkfifo.
fifos() { d=$1; shift; for i; do set -- "$@" "$d/$i.errp"; shift; done; [ "$ring" = 0 ] || set -- "$@" "$d/trig"
  mkfifo "$d/go" "$d/nap" "$@"; }
fifos "$dir" "$@" ||
  { rm -rf -- "$dir"; echo "@@fail no_tmpdir cannot create a fifo in $dir"; exit $E_NO_DIR; }
pidns=${pidns:-} setsid sh -c "$job" capture-all-job "$dir" "$limit" "$maxpk" "$maxbytes" "$snaplen" "$keep" "$gowait" \
  "$tcpdump" "$owner" "$ring" "$lock" "$@" < /dev/null > /dev/null 2>&1 &
# Opening the fifo waits for the job to open its end: ready means the job listens. This session
# then holds the write end until the capture listens: if it ends first (the controller went away,
# or said anything but go), the job reads EOF and removes the directory.
exec 3> "$dir/go"
echo "@@ready"
IFS= read -r said || exit 0
case $said in "go "*) ;; *) exit 0;; esac
printf '%s\n' "$said" >&3
ready=0; await_cap listen 2000 "$@" && ready=1
exec 3>&-
echo "@@section arm"
jobpid=""; [ -f "$dir/job.pid" ] && read -r jobpid < "$dir/job.pid"
echo "job_pid=$jobpid"
for i; do p=""; [ -f "$dir/$i.pid" ] && read -r p < "$dir/$i.pid"; echo "pid $i $p"; done
if [ "$ready" != 1 ]; then
  for i; do echo "@@section tcpdump_err $i"; [ -f "$dir/$i.tcpdump.err" ] && catf "$dir/$i.tcpdump.err"; done
  echo "@@fail not_armed tcpdump did not start listening"
  exit $E_NOT_ARMED
fi
capifs="$*"
probe start
echo "@@section tcpdump"; echo "path=$tcpdump"
witness_start
logs_start
"""
    + r"""
snapshot
echo "@@section witness"
[ -f "$dir/witness.status" ] && catf "$dir/witness.status"
echo "@@armed"
# While the capture runs: "probe" (the end's clock probe, taken before the window ends so that
# the finish need not wait for it) as often as asked, then "finish" (in watch mode "finish FROM
# TO": the window to keep, host clock, ns).
probed=0 wfrom=0 wto=0
while :; do
  IFS= read -r said || exit 0
  case $said in
    probe) probe late; probed=1; echo "@@armed";;
    finish) break;;
    "finish "*" "*)
      set -f; set -- $said; set +f
      case $2$3 in *[!0-9]*) exit 0;; esac
      wfrom=$2 wto=$3
      set -f; set -- $capifs; set +f
      break;;
    *) exit 0;;
  esac
done
after=after  # its "before" snapshot is in: the "after" one leaves out what does not change
finish "$@"
"""
)

# The detached capture job. Args: dir limit maxpk maxbytes snaplen keep go_wait_s tcpdump owner ring
# lock (the session's lock path) iface...
# It waits (at most go_wait_s) for the capture session's "go FILTER" on the fifo, captures every
# interface under its own `timeout` of duration + grace, with a size watchdog, then stops the
# witness, marks the directory done, and reaps it if nobody collected it within `keep` seconds.
# ring "FILES,MB" (watch mode; "0" otherwise): each interface's capture is a ring of FILES files
# of MB million bytes (tcpdump -C/-W), and a second tcpdump per interface, RSTs of the flow
# only, prints the first it sees (-c 1) into the fifo "trig" (the trigger; the job holds it
# open read-write, so a writer never blocks nor dies for want of a reader).
JOB_SCRIPT = (
    _READ
    + _LOCK
    + _WITNESS
    + r"""
dir=$1 limit=$2 maxpk=$3 maxbytes=$4 snaplen=$5 keep=$6 gowait=$7 tcpdump=$8 owner=$9
shift 9
ring=$1 lock=$2; shift 2
echo $$ > "$dir/job.pid"; echo $$ > "${lock%/*}/${dir##*/}.pid"
said=$(timeout "$gowait" head -n 1 -- "$dir/go" 2>/dev/null) || said=""
case $said in "go "*) filter=${said#go } ;; *) rmall; exit 0 ;; esac
pids=""; tpids=""; rpids=""
# A line into the fifo nap wakes whoever waits on this host (the capture session, see await_cap):
# a capture listens, the captures stopped, done. Read-write: a write never blocks, waiter or not.
exec 7<> "$dir/nap"
if [ "$ring" != 0 ]; then
  exec 8<> "$dir/trig"
  # Read from a file of ours (-F): the filter is never an argument, and our tcpdumps all name our dir.
  printf '%s\n' "( $filter ) and ((ip and tcp[13] & 4 != 0) or (ip6 and ip6[6] = 6 and ip6[53] & 4 != 0))" \
    > "$dir/trigger.filter"
fi
for i; do
  # tcpdump's stderr (its fifo) is read by a subshell of ours, to its end: each line into
  # $i.tcpdump.err, and a wake-up on nap once it says it listens. No process polls for that.
  { while IFS= read -r l; do
      printf '%s\n' "$l"; case $l in *"listening on"*) echo "up $i" >&7;; esac
    done > "$dir/$i.tcpdump.err"; } < "$dir/$i.errp" &
  rpids="$rpids $!"
  if [ "$ring" = 0 ]; then
    timeout -s INT -k 5 "$limit" "$tcpdump" -i "$i" -nn -U -s "$snaplen" -c "$maxpk" -Z "$owner" \
      --immediate-mode --time-stamp-precision=nano -w "$dir/$i.pcap" "$filter" 2> "$dir/$i.errp" < /dev/null &
  else
    timeout -s INT -k 5 "$limit" "$tcpdump" -i "$i" -nn -U -s "$snaplen" -C "${ring#*,}" -W "${ring%,*}" \
      -Z "$owner" --immediate-mode --time-stamp-precision=nano -w "$dir/$i.pcap" "$filter" \
      2> "$dir/$i.errp" < /dev/null &
  fi
  echo "$!" > "$dir/$i.pid"
  pids="$pids $!"
  if [ "$ring" != 0 ]; then
    timeout -s INT -k 5 "$limit" "$tcpdump" -i "$i" -nn -l -tt -c 1 -Z "$owner" --immediate-mode \
      --time-stamp-precision=nano -F "$dir/trigger.filter" >&8 2> "$dir/$i.trigger.err" < /dev/null &
    tpids="$tpids $!"
  fi
done
# The size cap over all our captures: checked every second, every 0.2 s once past half the cap;
# bounded by the capture limit itself.
(
  t=0; end=$(( (limit + 10) * 10 ))
  sleep 0.2; t=2  # not while the other hosts' captures start
  while [ "$t" -lt "$end" ]; do
    [ -f "$dir/done" ] && exit 0
    total=0
    # shellcheck disable=SC2046 # the sizes, split on purpose
    set -- $(stat -c %s -- "$dir"/*.pcap* 2>/dev/null)
    for s; do total=$((total + s)); done
    if [ "$total" -ge "$maxbytes" ]; then
      echo size > "$dir/stop.reason"
      for p in $pids; do kill -INT "$p" 2>/dev/null; done
      exit 0
    fi
    if [ $((total * 2)) -lt "$maxbytes" ]; then sleep 1; t=$((t + 10)); else sleep 0.2; t=$((t + 2)); fi
  done
) &
wd=$!
for i; do p=""; read -r p < "$dir/$i.pid"; wait "$p"; echo "$?" > "$dir/$i.rc"; done
kill "$wd" 2>/dev/null
for p in $tpids; do kill -INT "$p" 2>/dev/null; done
[ -n "$tpids" ] && { wait; echo end >&8; exec 8>&-; }  # the trigger's reader ends too
for p in $rpids; do wait "$p"; done  # tcpdump's last words (its counts) are in its .err file
: > "$dir/stopping"
echo stopping >&7
wi=""; wname=""
if tracefs; then winame $$; [ -d "$wname" ] && wi=$wname; fi
if [ -n "$wi" ]; then
  wsync end
  echo 0 > "$wi/tracing_on"
  cat "$wi/trace" > "$dir/witness.trace" 2>> "$dir/witness.err"
  for s in "$wi"/per_cpu/cpu*/stats; do echo "@@cpu ${s%/stats}"; catf "$s"; done > "$dir/witness.stats" 2>/dev/null
  echo state=ran >> "$dir/witness.status"
fi
[ "$owner" = root ] || chown -- "$owner" "$dir"/witness.* 2>/dev/null
# The time first, then the mark: whoever sees "done" finds its time whole in done.ns (no `mv`: a
# process fewer while a hundred hosts stop at once).
date +%s%N > "$dir/done.ns"; : > "$dir/done"
echo "done" >&7
# The instance goes after "done": the kernel takes tens of milliseconds to remove one, and the
# collection need not wait for that.
[ -n "$wi" ] && wremove "$wi"
# Reaper: whatever the controller does, nothing of ours stays on the disk beyond `keep` seconds
# after the capture ended (the controller renews the lease while it collects), and an instance the
# capture session made too late for the check above goes too.
# Its first look is 4 s on, then every 5 s: the lease and "done" are new now (two processes fewer
# while the host collects).
k=1
while [ -d "$dir" ]; do
  [ -n "$wname" ] && [ -d "$wname" ] && { echo 0 > "$wname/tracing_on"; rmdir "$wname"; } 2>/dev/null
  if [ $((k % 5)) = 0 ]; then
    now=$(date +%s)
    # shellcheck disable=SC2046 # the two times, split on purpose
    set -- $(stat -c %Y -- "$dir/lease" "$dir/done" 2>/dev/null) "$now"
    if [ $((now - $1)) -ge "$keep" ]; then rmall; break; fi
  fi
  k=$((k + 1)); sleep 1
done
"""
)

# Phase "finish" on its own (after a reconnect). Args: dir rundir wait_s ports conntrack(0|1)
# inline_kb wfrom wto (watch mode's window, host ns; 0 0: all) iface...
FINISH_SCRIPT = (
    _READ
    + _LOCK
    + _NAP
    + SNAPSHOT
    + PROBE
    + _RINGCUT
    + _LOGS
    + _FINISH
    + r"""
set -u
umask 077  # what the finish writes (a ring's joined window, the inline list) is ours alone
dir=$1; rundir=$2; wait_s=$3; ports=$4; conntrack=$5; inline_kb=$6; wfrom=$7; wto=$8; shift 8
nl='
'
finish "$@"
"""
)

# Watch mode's trigger, a session of its own: every line the job's RST-only tcpdumps print
# (the first RST of the flow on each interface), as "@@rst LINE", until the job says "end". The
# fifo is opened read-write: that never blocks (a job already gone leaves a reader that ends at
# its line's timeout, the capture's own limit, or at its next write once the controller is gone).
# Args: dir
TRIGGER_SCRIPT = r"""
set -u
dir=$1
case "$dir" in */capture-all.????????) ;; *) echo "@@fail no_dir refusing $dir"; exit $E_NO_DIR;; esac
[ -p "$dir/trig" ] && exec 9<> "$dir/trig" ||
  { echo "@@fail no_dir $dir has no trigger (the capture ended, or is not a watch)"; exit $E_NO_DIR; }
echo "@@listening"
while IFS= read -r l <&9; do
  [ "$l" = end ] && break
  printf '@@rst %s\n' "$l"
done
echo "@@section trigger"
echo "ended=1"
"""

# Watch mode's log trigger, a session of its own: the first line of a file on the host (or of a
# systemd unit's journal, "journal=UNIT") that matches an extended regex, as "@@log LINE". The
# source and the pattern arrive as positional parameters and are only ever one quoted argument
# (of tail, journalctl, grep). Nothing of it outlives the capture job: `tail --pid` ends with the
# job; journalctl has no such option, so its pipeline runs in a session of its own (setsid) that
# is ended, as a process group, once the job is gone. Args: dir source pattern
LOG_TRIGGER_SCRIPT = r"""
set -u
dir=$1 src=$2 pat=$3
nl='
'
case "$dir" in */capture-all.????????) ;; *) echo "@@fail no_dir refusing $dir"; exit $E_NO_DIR;; esac
jp=""; [ -f "$dir/job.pid" ] && read -r jp < "$dir/job.pid"
[ -n "$jp" ] && [ -d "/proc/$jp" ] || { echo "@@fail no_dir the capture job of $dir is gone"; exit $E_NO_DIR; }
case $src in
  journal=*)
    command -v journalctl >/dev/null 2>&1 || { echo "@@fail no_tool journalctl is not installed"; exit $E_NO_TOOL; }
    echo "@@listening"
    setsid sh -c 'journalctl -q -f -n 0 -o cat -u "$1" 2>/dev/null | grep -m 1 -E -e "$2" |
      while IFS= read -r l; do printf "@@log %s\\n" "$l"; done' capture-all-log "${src#journal=}" "$pat" &
    pg=$!
    while kill -0 "$pg" 2>/dev/null && [ -d "/proc/$jp" ]; do sleep 1; done
    kill -- "-$pg" 2>/dev/null
    ;;
  *)
    # The file itself, never a link's target, a FIFO or a device (its owner may swap it for one,
    # issue 29.4): each version of it is opened once (fd 4) and checked through that descriptor,
    # then followed by a tail of its own (setsid, as the journal's) on that descriptor. When the
    # name stops being that file (rotated, or swapped), the tail ends; a new regular file of that
    # name is followed from its start.
    regular() { [ -f "$src" ] && [ ! -L "$src" ]; }
    same() { st=$(stat -L -c '%d:%i' -- "$src" 2>/dev/null) && [ "$st" = "$id" ]; }  # the name is still that file
    regular && [ -r "$src" ] ||
      { printf '%s\n' "@@fail no_log cannot read $src (not a readable regular file: links, FIFOs refused)"
        exit $E_NO_TOOL; }
    echo "@@listening"
    from=0
    while [ -d "/proc/$jp" ]; do
      id=""
      if regular && exec 4< "$src"; then
        s=$(stat -L -c '%d:%i:%f' -- "$src" /proc/self/fd/4 2>/dev/null) || s=""
        case ${s##*:} in 8???) ;; *) s="";; esac  # the raw mode, in hex: 8 is a regular file
        [ -n "$s" ] && [ "${s%%"$nl"*}" = "${s#*"$nl"}" ] && regular && { id=${s%%"$nl"*}; id=${id%:*}; }
      fi
      if [ -z "$id" ]; then exec 4<&- 2>/dev/null; sleep 1; from=+1; continue; fi
      # from 0: the end of the file as it is now; +1: a new file, from its first line. Once it has
      # said its line, the follower ends its own process group (USR1: its status says "matched").
      setsid sh -c 'tail -n "$1" -f --pid="$2" <&4 4<&- 2>/dev/null | grep -m 1 -E -e "$3" |
        while IFS= read -r l; do printf "@@log %s\n" "$l"; kill -USR1 -- "-$$"; done' capture-all-log \
        "$from" "$jp" "$pat" &
      pg=$!; exec 4<&-
      while kill -0 "$pg" 2>/dev/null && [ -d "/proc/$jp" ] && regular && same; do sleep 1; done
      kill -- "-$pg" 2>/dev/null
      wait "$pg"; rc=$?
      # It said its line (USR1), or ended of itself, or the job is gone: the trigger is over. Else
      # the name is another file now (a rotation, or a swap): that one is followed, if regular.
      [ "$rc" = $((128 + 10)) ] && break
      { [ -d "/proc/$jp" ] && ! same; } || break
      from=+1
    done
    ;;
esac
echo "@@section trigger"
echo "ended=1"
"""

# Remove our directory, for a host that failed after making it (the reaper then exits by
# itself). Args: dir rundir
CLEANUP_SCRIPT = (
    _LOCK
    + r"""
set -u
dir=$1 rundir=$2 lock=""
case "$dir" in */capture-all.????????) ;; *) echo "@@fail no_dir refusing $dir"; exit $E_NO_DIR;; esac
rundir_ok && lockname; rmall
[ -e "$dir" ] && { echo "@@fail cleanup $dir still exists"; exit $E_NO_DIR; }
echo "@@section cleanup"
echo "removed=$dir"
"""
)

# The idle-timeout audit (capture-all audit): read-only. The kernel's keep-alive and conntrack
# timeouts; the config files of every running HAProxy (its -f arguments, files or directories of
# *.cfg; at most 16 files of 256 KiB); nginx's whole config (nginx -T; at most 512 KiB) where nginx
# runs. Root follows a process's arguments only where the process is the service itself: the
# root-owned binary of that name (/proc/PID/exe), run as root. Any local user can name a process
# haproxy and give it `-f /etc/shadow`. A config file is read only where it is a regular file, not
# a link, owned by root. Nothing is changed, nothing is started but the readers.
AUDIT_SCRIPT = r"""
echo "@@section sysctl"
for k in net/ipv4/tcp_keepalive_time net/netfilter/nf_conntrack_tcp_timeout_established; do
  # cat, never `read`: under dash an integer /proc/sys file ends after its first byte (see kfiles)
  if [ -r "/proc/sys/$k" ]; then printf '%s %s\n' "$k" "$(cat -- "/proc/sys/$k")"; fi
done
# service DIR NAME: DIR (/proc/PID) runs the root-owned binary NAME, as root or as the system user
# of that name (HAProxy's daemon drops to it).
service() {
  c=""; read -r c < "$1/comm" 2>/dev/null && [ "$c" = "$2" ] || return 1
  e=$(readlink -- "$1/exe" 2>/dev/null) && [ "${e##*/}" = "$2" ] || return 1
  # shellcheck disable=SC2046 # the two owners, split on purpose
  set -- "$2" $(stat -L -c %u -- "$1" "$1/exe" 2>/dev/null)
  [ "${3:-}" = 0 ] && { [ "${2:-}" = 0 ] || [ "${2:-}" = "$(id -u "$1" 2>/dev/null)" ]; }
}
# cfgfile FILE: a running service's config file, with a header, where it is safe to read: a
# regular file (not a link, a FIFO or a device) owned by root, opened once and checked through
# the open descriptor (what is checked is what is read), at most 256 KiB, 16 files in all.
nread=0
cfgfile() {
  if [ "$nread" -ge 16 ]; then echo "# capture-all skipped: $1 (16 files read already)"; return 0; fi
  [ -f "$1" ] && [ ! -L "$1" ] && { cfgopen "$1"; } < "$1" 2>/dev/null && return 0
  echo "# capture-all unreadable: $1 (not a regular file owned by root)"
}
cfgopen() {
  case $(stat -L -c %u:%f /proc/self/fd/0) in 0:8???) ;; *) return 1;; esac  # root's, a regular file (raw mode 8...)
  nread=$((nread + 1)); echo "# capture-all file: $1"; head -c 262144; echo
}
echo "@@section haproxy"
seen=" "
for d in /proc/[0-9]*; do
  service "$d" haproxy || continue
  set -f
  # shellcheck disable=SC2046 # its arguments, split on purpose (globbing off)
  set -- $(tr '\0' ' ' < "$d/cmdline" 2>/dev/null); set +f
  while [ $# -gt 0 ]; do
    if [ "$1" = -f ] && [ $# -gt 1 ]; then
      f=$2
      case $seen in *" $f "*) ;; *)
        seen="$seen$f "
        if [ -d "$f" ] && [ ! -L "$f" ]; then for g in "$f"/*.cfg; do [ -e "$g" ] && cfgfile "$g"; done
        else cfgfile "$f"; fi;;
      esac
    fi
    shift
  done
done
echo "@@section nginx"
running=0
for d in /proc/[0-9]*; do service "$d" nginx && { running=1; break; }; done
if [ "$running" = 1 ] && command -v nginx >/dev/null 2>&1; then nginx -T 2>&1 | head -c 524288; fi
echo "@@end"
"""


def capture_tcpdump() -> str:
    """The job's capture command for one interface (a fixed window), as JOB_SCRIPT runs it:
    ``capture-all plan`` shows it with the values put in."""
    import re

    m = re.search(r'^ *(timeout -s INT -k 5 "\$limit" "\$tcpdump" -i "\$i" .*-c "\$maxpk".*\\\n.*)$', JOB_SCRIPT, re.M)
    if m is None:  # pragma: no cover - a test reads it
        raise LookupError("JOB_SCRIPT's capture tcpdump line changed: update capture_tcpdump")
    text = re.sub(r"\\\n\s*", "", m.group(1))
    return text.split(" 2>", 1)[0]
