"""Generate a benchmark bundle: three vantages (client, proxy, backend), each a pcap of
N packets over thousands of connections, with a handful of resets, written with numpy.

    python bench/generate.py OUT --packets 2000000 --flows 5000 --resets 5 [--syns]

Each vantage is an Ethernet capture with nanosecond timestamps, variable-size records (pure
ACKs and data segments), IPv4/TCP. The client leg (client <-> proxy:443) is seen at the client
and the proxy; the upstream leg (proxy <-> backend:8443) at the proxy and the backend. A few
backend connections end in a reset that the backend sends and the proxy receives. With
``--syns`` every connection opens inside the capture (its first packet is the client's SYN), the
case where the analysis reads every SYN to learn address translations.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

CLIENT, PROXY_F, PROXY_B, BACKEND = (0xC6120110, 0xC612020A, 0xC6120301, 0xC612030A)  # 198.18.x.y
MAC = {name: bytes([2, 0, 0, 0, 0, i + 1]) for i, name in enumerate(("client", "proxy", "backend", "peer"))}
T0 = 1_795_000_000 * 10**9


def build(
    shared: dict[str, np.ndarray],
    src_ip: np.ndarray,
    dst_ip: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    is_rst: np.ndarray,
    is_syn: np.ndarray,
    ts: np.ndarray,
    out_mask: np.ndarray,
    own_mac: bytes,
    ttl_out: int,
    ttl_in: int,
) -> bytes:
    """One vantage's pcap. ``shared`` holds what every vantage sees alike for packet i (payload
    length, seq, ack, IP ID), so the same packet at two vantages is recognisably the same."""
    n = len(ts)
    payload = np.where(is_rst | is_syn, 0, shared["payload"])
    frame = 14 + 20 + 20 + payload
    rec = 16 + frame
    offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(rec, out=offs[1:])
    buf = np.zeros(int(offs[-1]), dtype=np.uint8)
    o = offs[:-1]

    def put(pos: np.ndarray, value: np.ndarray, width: int, big: bool) -> None:
        v = value.astype(np.uint64)
        for k in range(width):
            shift = 8 * (width - 1 - k) if big else 8 * k
            buf[pos + k] = ((v >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.uint8)

    put(o, ts // 10**9, 4, False)
    put(o + 4, ts % 10**9, 4, False)
    put(o + 8, frame, 4, False)
    put(o + 12, frame, 4, False)
    e = o + 16
    peer = np.frombuffer(MAC["peer"], dtype=np.uint8)
    mine = np.frombuffer(own_mac, dtype=np.uint8)
    for k in range(6):
        buf[e + k] = np.where(out_mask, peer[k], mine[k])  # dst
        buf[e + 6 + k] = np.where(out_mask, mine[k], peer[k])  # src
    put(e + 12, np.full(n, 0x0800), 2, True)
    ip = e + 14
    buf[ip] = 0x45
    put(ip + 2, 40 + payload, 2, True)
    put(ip + 4, shared["ip_id"], 2, True)
    put(ip + 6, np.full(n, 0x4000), 2, True)
    buf[ip + 8] = np.where(out_mask, ttl_out, ttl_in).astype(np.uint8)
    buf[ip + 9] = 6
    put(ip + 12, src_ip, 4, True)
    put(ip + 16, dst_ip, 4, True)
    tcp = ip + 20
    put(tcp, sport, 2, True)
    put(tcp + 2, dport, 2, True)
    put(tcp + 4, shared["seq"], 4, True)
    put(tcp + 8, shared["ack"], 4, True)
    buf[tcp + 12] = 0x50
    buf[tcp + 13] = np.where(is_rst, 0x14, np.where(is_syn, 0x02, np.where(payload > 0, 0x18, 0x10))).astype(np.uint8)
    put(tcp + 14, np.full(n, 502), 2, True)
    head = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)
    return head + buf.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=5000)
    ap.add_argument("--resets", type=int, default=5)
    ap.add_argument("--syns", action="store_true", help="every connection's first packet is its SYN")
    args = ap.parse_args()
    n, flows = args.packets, args.flows
    rng = np.random.default_rng(1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ts = T0 + np.sort(rng.integers(0, 300 * 10**9, n))  # five minutes of traffic
    client_port = 20000 + np.arange(flows)
    upstream_port = 40000 + np.arange(flows)
    flow_of = rng.integers(0, flows, n)
    toward_server = rng.random(n) < 0.5
    reset_flows = rng.choice(flows, args.resets, replace=False)
    # The last packet of each reset flow on the upstream leg becomes the backend's RST.
    last_of = {f: np.flatnonzero(flow_of == f)[-1] for f in reset_flows}
    is_rst = np.zeros(n, dtype=bool)
    for i in last_of.values():
        is_rst[i] = True
        toward_server[i] = False
    is_syn = np.zeros(n, dtype=bool)
    if args.syns:
        is_syn[np.unique(flow_of, return_index=True)[1]] = True
        toward_server[is_syn] = True
    hosts = {
        "client": dict(
            src=np.where(toward_server, CLIENT, PROXY_F),
            dst=np.where(toward_server, PROXY_F, CLIENT),
            sport=np.where(toward_server, client_port[flow_of], 443),
            dport=np.where(toward_server, 443, client_port[flow_of]),
            out=toward_server,
            rst=np.zeros(n, dtype=bool),
            ttl=(64, 63),
        ),
        "backend": dict(
            src=np.where(toward_server, PROXY_B, BACKEND),
            dst=np.where(toward_server, BACKEND, PROXY_B),
            sport=np.where(toward_server, upstream_port[flow_of], 8443),
            dport=np.where(toward_server, 8443, upstream_port[flow_of]),
            out=~toward_server,
            rst=is_rst,
            ttl=(64, 64),
        ),
    }
    # The proxy sees both legs: here, half its packets from each.
    leg = rng.random(n) < 0.5
    leg[is_rst] = False
    c, b = hosts["client"], hosts["backend"]
    hosts["proxy"] = dict(
        src=np.where(leg, c["src"], b["src"]),
        dst=np.where(leg, c["dst"], b["dst"]),
        sport=np.where(leg, c["sport"], b["sport"]),
        dport=np.where(leg, c["dport"], b["dport"]),
        out=np.where(leg, ~toward_server, toward_server),
        rst=is_rst,
        ttl=(64, 64),
    )
    payload = np.where(rng.random(n) < 0.4, rng.integers(1, 1200, n), 0).astype(np.int64)

    def numbers() -> dict[str, np.ndarray]:
        return {"payload": payload, "seq": rng.integers(0, 2**32 - 1, n), "ack": rng.integers(0, 2**32 - 1, n),
                "ip_id": rng.integers(0, 65535, n)}  # fmt: skip

    # The proxy terminates TCP: its two legs are two connections with sequence spaces of their own
    # (the same numbers on both legs would make every client-leg packet look NAT-translated).
    client_leg, upstream_leg = numbers(), numbers()
    shared_by = {
        "client": client_leg,
        "backend": upstream_leg,
        "proxy": {k: np.where(leg, client_leg[k], upstream_leg[k]) for k in client_leg},
    }
    macs = {"client": MAC["client"], "proxy": MAC["proxy"], "backend": MAC["backend"]}
    manifest_hosts = []
    for i, (name, h) in enumerate(hosts.items()):
        (out / name).mkdir(exist_ok=True)
        data = build(
            shared_by[name],
            h["src"],
            h["dst"],
            h["sport"],
            h["dport"],
            h["rst"],
            is_syn,
            ts + i * 1000,
            h["out"],
            macs[name],
            *h["ttl"],
        )
        (out / name / "eth0.pcap").write_bytes(data)
        manifest_hosts.append(
            {
                "name": name,
                "role": "proxy" if name == "proxy" else name,
                "status": "ok",
                "addresses": {
                    "client": ["198.18.1.16"],
                    "proxy": ["198.18.2.10", "198.18.3.1"],
                    "backend": ["198.18.3.10"],
                }[name],
                "captures": [
                    {
                        "interface": "eth0",
                        "path": f"{name}/eth0.pcap",
                        "bytes": len(data),
                        "packets": n,
                        "kernel_drops": 0,
                    }
                ],
            }
        )
        (out / name / "before").mkdir(exist_ok=True)
        (out / name / "before" / "ip_link.txt").write_text(
            json.dumps([{"ifindex": 2, "ifname": "eth0", "address": ":".join(f"{x:02x}" for x in macs[name])}])
        )
    (out / "manifest.json").write_text(
        json.dumps({"schema": "capture-all/manifest/1", "flow": "bench", "hosts": manifest_hosts, "files": {}})
    )
    print(f"{out}: 3 vantages x {n} packets, {flows} connections, {args.resets} resets")


if __name__ == "__main__":
    main()
