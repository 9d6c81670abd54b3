"""``capture-all plan``: what a capture would do on each host, shown without contacting anyone.

Everything shown is built by the code the run itself uses: the legs and filters by
``orchestrator.plan``, each host's session by ``orchestrator.host.capture_command`` (so a value the
run would refuse is refused here too), the tcpdump and snapshot commands read out of the scripts
in ``remote.scripts``. Nothing here opens a socket.
"""

from __future__ import annotations

import shlex
from typing import Any

from orchestrator.options import RunOptions, capture_command, finish_wait_s, flow_ports
from orchestrator.plan import TRANSLATING_ROLES, HostPlan, Plan
from remote import commands
from remote.scripts import SNAPSHOT_READS, capture_tcpdump
from remote.sshconfig import known_hosts_for

_SSH_PLACEHOLDER = "not (host <controller> and host <host> and port <ssh port> and port <our source port>)"


def snapshot_reads(ports: tuple[int, ...]) -> list[str]:
    """What the snapshot reads, in words (remote.scripts.SNAPSHOT_READS), before and after."""
    ssf = " or ".join(f"sport = :{p} or dport = :{p}" for p in ports)
    flt = shlex.quote(f"( {ssf} )") if ports else "(every socket)"  # the host has no port to filter by
    out = []
    for _, what, after in SNAPSHOT_READS:
        out.append(what.replace("{ss_filter}", flt) + ("" if after else " (before only)"))
    return out


def _ssh_line(h: HostPlan) -> str:
    t = h.target
    who = f"{t.user}@" if t.user else ""
    via = " via " + ",".join(f"{j.user + '@' if j.user else ''}{j.host}:{j.port}" for j in t.jumps) if t.jumps else ""
    keys = known_hosts_for(t).describe()
    trust = "new keys accepted and recorded (--accept-new-host-keys)" if t.accept_new_host_key else "verified"
    return f"ssh {who}{t.host}:{t.port}{via}; host key {trust} against {keys}"


def _bounds(opts: RunOptions) -> list[str]:
    o = opts
    return [
        f"each capture stops by itself after {o.limit_s} s (duration {o.duration:g} + grace {o.grace}), "
        f"at {o.max_packets} packets per interface or {o.max_bytes >> 20} MiB per host, whichever comes first",
        f"each host needs {o.min_free_kb >> 10} MiB free in its tmpdir (refused otherwise); evidence not "
        f"collected is deleted {o.keep} s after the capture ends",
        "kernel reset witness: off (--no-witness)"
        if not o.witness_kb
        else f"kernel reset witness: an ftrace instance of our own (tcp:tcp_send_reset, tcp:tcp_receive_reset), "
        f"{o.witness_kb} KiB per CPU, where tracefs is already mounted (never mounted by capture-all)",
    ]


def host_facts(h: HostPlan, opts: RunOptions) -> dict[str, Any]:
    """One host's part of the plan (raises UnsafeValue where the run would)."""
    cmd = capture_command(h, opts)
    filt = h.bpf(None)
    tcpdump = capture_tcpdump()
    words = {
        '"$limit"': str(opts.limit_s), '"$tcpdump"': "tcpdump", '"$snaplen"': str(opts.snaplen),
        '"$maxpk"': str(opts.max_packets), '"$owner"': "<login user>",
        '"$filter"': shlex.quote(f"{filt} and {_SSH_PLACEHOLDER}"),
    }  # fmt: skip
    for k, v in words.items():
        tcpdump = tcpdump.replace(k, v)
    per_iface = [tcpdump.replace('"$dir/$i.pcap"', f"<dir>/{i}.pcap").replace('"$i"', i) for i in h.interfaces]
    ports = flow_ports(h)
    then = ["snapshot before and after: " + "; ".join(snapshot_reads(ports))]
    if h.role in TRANSLATING_ROLES:
        then.append(f"conntrack -L -p tcp, the entries of port(s) {','.join(map(str, ports))} (at most 5000 lines)")
    for src in h.logs:
        then.append(f"log {src.replace('journal=', 'journal:')}: the lines written during the capture, "
                    "at most 512 KiB (the latest), read once at the end")  # fmt: skip
    then.append(
        f"finish: stop the capture (waits {finish_wait_s(opts)} s at most), pull the files back (small ones "
        f"inline, the rest over SFTP, or `cat` where the host has none; SHA-256 checked), remove <dir>"
    )
    return {
        "name": h.name,
        "role": h.role,
        "ssh": _ssh_line(h),
        "privilege": "sudo -n (never prompts; needs passwordless sudo)" if h.sudo else "none (the login user is root)",
        "interfaces": list(h.interfaces),
        "legs": [leg.name for leg in h.legs],
        "filter": filt,
        "filter_note": f"and {_SSH_PLACEHOLDER}: our own SSH session, as the host reports it once connected",
        "dir": f"<dir> = a private mktemp -d {h.tmpdir}/capture-all.XXXXXXXX (mode 700)",
        "session": commands.shown(cmd),
        "tcpdump": per_iface,
        "then": then,
        "notes": list(h.notes),
    }


def plan_facts(plan: Plan, opts: RunOptions, inventory: str) -> dict[str, Any]:
    return {
        "flow": plan.flow.text,
        "inventory": inventory,
        "inventory_sha256": plan.inventory_sha256,
        "legs": [f"{leg.name}: {leg.bpf()}" for leg in plan.legs],
        "bounds": _bounds(opts),
        "warnings": list(plan.warnings),
        "hosts": [host_facts(h, opts) for h in plan.hosts],
    }


def plan_lines(facts: dict[str, Any], *, verbose: bool = False) -> list[str]:
    """The plan for a person. ``verbose``: each host's session line too (long: its arguments)."""
    lines = [
        f"plan for {facts['flow']} from {facts['inventory']} (sha256 {facts['inventory_sha256'][:12]}); "
        "nothing was contacted",
        "legs:",
        *(f"  {leg}" for leg in facts["legs"]),
        "bounds (every host enforces them itself, even if this controller goes away):",
        *(f"  {b}" for b in facts["bounds"]),
    ]
    lines += [f"warning: {w}" for w in facts["warnings"]]
    lines.append(f"hosts ({len(facts['hosts'])}), all at once:")
    for h in facts["hosts"]:
        lines += [
            f"  {h['name']} ({h['role']})",
            f"    {h['ssh']}",
            f"    privilege: {h['privilege']}",
            f"    interfaces: {', '.join(h['interfaces'])}; legs: {'; '.join(h['legs'])}",
            f"    filter: {h['filter']}",
            f"      {h['filter_note']}",
            f"    {h['dir']}",
            *(f"    capture: {t}" for t in h["tcpdump"]),
            *(f"    {t}" for t in h["then"]),
            *(f"    note: {n}" for n in h["notes"]),
        ]
        if verbose:
            lines.append(f"    session: {h['session']}")
    return lines
