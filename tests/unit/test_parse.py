"""Parsers against real output recorded from the lab (tests/data/remote/)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from remote.parse import (
    SNAPSHOT_SECTIONS,
    parse_arm,
    parse_cleanup,
    parse_finish,
    parse_inline,
    parse_preflight,
    parse_sections,
    parse_ssh_connection,
    parse_tcpdump_stats,
    snapshot_files,
)
from remote.snapshot import host_addresses, parse_conntrack, parse_nstat

DATA = Path(__file__).resolve().parents[1] / "data" / "remote"


def load(name: str) -> str:
    return (DATA / name).read_text()


def parts() -> list[str]:
    """The recorded capture session (tests/lab/record.py) cut at the points where the host waited
    for the controller: preflight | arm | start probe + "before" snapshot | finish listing |
    end probe + "after" snapshot + inline files | cleanup."""
    text = load("capture-proxy-sudo.txt")
    out = []
    for marker in ("@@ready\n", "@@probe us\n", "@@armed\n", "@@probe us\n", "@@listed\n"):
        head, _, text = text.partition(marker)
        out.append(head)
    return out + [text]


def test_capture_session_up_to_armed() -> None:
    """On the lab's proxy (sudo): preflight, the capture, the probe, the "before" snapshot and
    the witness."""
    preflight, armed_part, after_probe, *_ = parts()
    pre = parse_preflight(parse_sections(preflight))
    assert pre.uid == 0 and pre.owner == "root" and pre.tcpdump.endswith("/tcpdump")
    assert pre.remote_dir.rsplit("/", 1)[1].startswith("capture-all.") and pre.free_kb > 0
    assert pre.ssh is not None and pre.ssh.server_port == 22
    armed = parse_arm(parse_sections(armed_part))
    assert set(armed.pids) == {"eth1", "eth2"} and armed.armed_ns > 1_700_000_000 * 10**9 and armed.job_pid
    assert all(a.isdigit() and len(a) == 16 for a in after_probe.splitlines()[:8])  # microseconds since the epoch
    parsed = parse_sections(after_probe)
    assert parsed.failure is None
    files = snapshot_files(parsed)
    assert set(files) == {f"{s}.txt" for s in SNAPSHOT_SECTIONS} - {"conntrack_flow.txt", "ip_link.txt", "ss_s.txt"}
    counters = parse_nstat(files["nstat.txt"])
    assert {"TcpExtListenOverflows", "TcpOutRsts", "TcpEstabResets", "Ip6InReceives"} <= set(counters)
    assert counters["TcpMaxConn"] == -1 and counters["IpDefaultTTL"] == 64
    assert files["sockstat.txt"].startswith("sockets: used ")
    ips, macs = host_addresses(files["ip_addr.txt"])
    assert {"198.18.2.10", "198.18.3.1", "198.19.0.13", "127.0.0.1"} <= ips
    assert len(macs) == 3  # mgmt, eth1, eth2 (loopback's all-zero MAC is not one)
    # Only the flow's ports are listed: HAProxy's :8080 listener, not its :8081-8083 ones.
    assert "198.18.2.10:8080" in files["ss_tanpi.txt"] and ":8081" not in files["ss_tanpi.txt"]
    assert parse_arm(parsed).witness.state == "running" and parse_arm(parsed).tcpdump == pre.tcpdump


def test_refusals_carry_their_reason() -> None:
    parsed = parse_sections(load("arm-no-interface.txt"))
    assert parsed.failure is not None
    assert (parsed.failure.code, parsed.failure.text) == ("no_interface", "interface eth7 does not exist")
    low = parse_sections(load("arm-low-disk.txt")).failure
    assert low is not None and low.code == "low_disk" and "KiB free" in low.text


def test_finish_in_the_capture_session() -> None:
    *_, listing, rest, cleanup = parts()
    fin = parse_finish(parse_sections(listing))
    assert not fin.already_done and fin.stop_reason == ""
    assert fin.exit_codes == {"eth1": 0, "eth2": 0}
    assert [f.name for f in fin.files] == ["eth1.pcap", "eth2.pcap"]
    assert all(len(f.sha256) == 64 for f in fin.files) and fin.files[0].size > 24
    assert fin.stats["eth1"].captured == fin.stats["eth1"].received > 0 and fin.stats["eth1"].dropped == 0
    assert fin.witness.state == "ran" and "witness.trace" in [f.name for f in fin.witness.files]
    # Every file came back inside the session, each matching the digest the host computed.
    inline = parse_inline(parse_sections(rest), fin.files + fin.witness.files)
    assert set(inline) == {f.name for f in fin.files + fin.witness.files}
    for f in fin.files + fin.witness.files:
        assert hashlib.sha256(inline[f.name]).hexdigest() == f.sha256
    done = parse_cleanup(parse_sections(cleanup))
    assert done.removed and (done.instance_removed or done.instance_pending)


def test_tcpdump_stats_singular_and_missing() -> None:
    s = parse_tcpdump_stats("1 packet captured\n1 packet received by filter\n0 packets dropped by kernel\n")
    assert (s.captured, s.received, s.dropped) == (1, 1, 0)
    assert parse_tcpdump_stats("tcpdump: eth9: No such device exists").captured is None


def test_ssh_connection() -> None:
    ep = parse_ssh_connection("198.19.0.1 51234 198.19.0.13 22")
    assert ep is not None and (ep.client_ip, ep.client_port, ep.server_port) == ("198.19.0.1", 51234, 22)
    assert parse_ssh_connection("") is None and parse_ssh_connection("a b c d") is None


def test_clock_probe_keeps_the_shortest_round_trip_and_drops_the_first() -> None:
    from remote.parse import parse_probe

    samples = [
        (1_000_000_000, "999", 1_090_000_000),  # the shell's start-up: dropped whatever it says
        (2_000_000_000, "2500001500", 2_000_004_000),  # rtt 4 us: the best
        (3_000_000_000, "3500000000", 3_000_900_000),
        (4_000_000_000, "not a number", 4_000_001_000),
    ]
    got = parse_probe("@@probe us", [(s, t[:-3] if t.isdigit() else t, r) for s, t, r in samples])
    assert got is not None
    assert (got.at_ns, got.rtt_ns, got.samples, got.resolution_ns) == (2_000_002_000, 4_000, 2, 1000)
    # host 2.500001 s (us resolution) at controller 2.000002 s: +500 ms -0.5 us, within rtt/2 + 1 us
    assert got.offset_ns == 2_500_001_000 - 2_000_002_000 and got.bound_ns == 3_000
    assert parse_probe("@@probe ns", [(1, "x", 2), (3, "", 4)]) is None


def test_interface_drop_counters_are_read_by_their_column_names() -> None:
    from remote.snapshot import parse_ip_s_link

    text = (
        "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\n"
        "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
        "    RX:  bytes packets errors dropped  missed   mcast\n"
        "          9631      88      0       0       0       0\n"
        "    TX:  bytes packets errors dropped carrier collsns\n"
        "          9631      88      0       0       0       0\n"
        "7: eth1@if8: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT\n"
        "    link/ether 02:00:00:00:00:0b brd ff:ff:ff:ff:ff:ff link-netns router\n"
        "    RX: bytes  packets  errors  dropped overrun mcast\n"
        "    1000       10       0       3       0       0\n"
        "    TX: bytes  packets  errors  dropped carrier collsns\n"
        "    2000       20       1       0       0       0\n"
    )
    links = parse_ip_s_link(text)
    assert links["eth1"]["rx_dropped"] == 3 and links["eth1"]["tx_errors"] == 1 and links["lo"]["rx_missed"] == 0


def test_each_connection_maps_to_its_process() -> None:
    from remote.snapshot import parse_listener_names, parse_sockets

    ss = (
        "State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n"
        'ESTAB 0      0        198.18.2.10:8081  198.18.1.10:47008 users:(("haproxy",pid=98,fd=12))\n'
        "\t bbr wscale:10,10 rto:204 rtt:1.39/1.397\n"
        "ESTAB 0      0     [::ffff:198.18.3.10]:80 [::ffff:198.18.3.1]:50286 "
        'users:(("nginx",pid=7,fd=3),("nginx",pid=8,fd=3))\n'
    )
    socks = parse_sockets(ss)
    assert socks[("198.18.2.10", 8081, "198.18.1.10", 47008)] == [("haproxy", 98)]
    assert socks[("198.18.3.10", 80, "198.18.3.1", 50286)] == [("nginx", 7), ("nginx", 8)]
    tlnp = 'LISTEN 0      512      198.18.2.10:8083      0.0.0.0:*    users:(("haproxy",pid=98,fd=7))\n'
    assert parse_listener_names(tlnp) == {8083: [("haproxy", 98)]}


def test_the_witness_section_of_finish() -> None:
    from remote.parse import parse_witness

    sha = "a" * 64
    out = (
        "@@section witness\n"
        "state=running\ninstance=/sys/kernel/tracing/instances/capture-all.2zDAHZNT.249\nclock=mono\n"
        "events=tcp_send_reset,tcp_receive_reset\nbuffer_kb=256\nswept=1\nstate=ran\nremoved=1\n"
        "error=sh: 1: echo: I/O error\n"
        "@@section files\nsize 1200 /d/capture-all.X/witness.trace\n"
        "size 2100 /d/capture-all.X/witness.tcp_send_reset.format\nsize 10 /etc/passwd\n"
        f"{sha}  /d/capture-all.X/witness.trace\n{sha}  /d/capture-all.X/witness.tcp_send_reset.format\n"
        f"{sha}  /etc/passwd\n"
    )
    w = parse_witness(parse_sections(out))
    assert (w.state, w.clock, w.removed, w.swept) == ("ran", "mono", True, 1)
    assert w.events == ["tcp_send_reset", "tcp_receive_reset"]
    assert [f.name for f in w.files] == ["witness.trace", "witness.tcp_send_reset.format"]  # nothing else is pulled
    assert w.error == "sh: 1: echo: I/O error"
    off = parse_witness(parse_sections("@@section witness\nstate=off\nreason=turned off (--no-witness)\n"))
    assert (off.state, off.reason, off.removed) == ("off", "turned off (--no-witness)", None)


def test_conntrack_entries_name_both_sides_of_a_translation() -> None:
    # From the lab's masquerading NAT (/proc/net/nf_conntrack, kernel 6.18): a new source port.
    proc = parse_conntrack(load("conntrack-proc.txt"))
    assert proc[0] == (("198.18.4.10", 60174, "198.18.2.10", 8080), ("198.18.5.2", 26035, "198.18.2.10", 8080))
    # `conntrack -L` prints the same tuples without the family columns (lines written from its
    # documented format, not captured here: the lab has no conntrack tool). A DNAT VIP and an
    # SNAT at once; an untranslated entry names itself twice.
    dnat, plain = parse_conntrack(load("conntrack-L.txt"))
    assert dnat == (("10.20.2.17", 51644, "10.20.4.18", 443), ("10.20.0.2", 51644, "10.30.7.55", 8443))
    assert plain[0] == plain[1]
    assert parse_conntrack("no conntrack tool and no /proc/net/nf_conntrack\n") == []


def test_counters_read_from_the_kernel_are_nstat_s_own() -> None:
    """The snapshot reads /proc/net/snmp, netstat and snmp6 itself (no process); parsed, they are
    the counters `nstat -asz` prints from the same files on this machine: every name nstat prints,
    and its value between ours read just before and just after it (the counters only grow); nstat's
    own output (older bundles) still parses."""
    import json
    import subprocess

    def ours() -> dict[str, int]:
        files = [Path(f"/proc/net/{f}") for f in ("snmp", "netstat", "snmp6")]
        return parse_nstat("".join(f.read_text() for f in files if f.exists()))

    before = ours()
    out = subprocess.run(["nstat", "-asz", "--json"], capture_output=True, text=True, check=True).stdout
    plain = subprocess.run(["nstat", "-asz"], capture_output=True, text=True, check=True).stdout
    after = ours()
    theirs = {k: v for table in json.loads(out).values() for k, v in table.items() if not k.startswith("Sctp")}
    assert len(theirs) > 100 and set(theirs) <= set(before)
    gauges = {"TcpCurrEstab"}  # goes up and down
    assert [k for k in theirs if k not in gauges and not before[k] <= theirs[k] <= after[k]] == []
    assert set(parse_nstat(plain)) == set(theirs) | {k for k in parse_nstat(plain) if k.startswith("Sctp")}
