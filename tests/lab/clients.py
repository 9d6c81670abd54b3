"""Lab clients that reproduce resets plain curl cannot. Standalone (run by path over SSH).

clients.py reuse HOST PORT GAP    GET, stay idle GAP seconds on the same connection, GET again
clients.py upload HOST PORT PATH BYTES   POST a large body (the server may answer early)
clients.py hold HOST PORT PATH SECONDS   GET, read until closed/reset, keep our end open
clients.py flood HOST PORT N     open N connections at once and hold them a second (a listener
                                 that never accepts overflows its queue)
"""

from __future__ import annotations

import socket
import sys
import time


def _get(s: socket.socket, host: str) -> bytes:
    s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return s.recv(65536)


def reuse(host: str, port: int, gap: float) -> int:
    with socket.create_connection((host, port), timeout=5) as s:
        print("first:", _get(s, host).split(b"\r\n")[0].decode())
        time.sleep(gap)
        try:
            print("second:", _get(s, host).split(b"\r\n")[0].decode() or "(closed)")
        except ConnectionResetError as exc:
            print("second:", exc)
            return 1
    return 0


def upload(host: str, port: int, path: str, size: int) -> int:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < size:
                sent += s.send(chunk[: size - sent])
            print("sent", sent, "reply:", s.recv(65536).split(b"\r\n")[0].decode())
        except (ConnectionResetError, BrokenPipeError) as exc:
            print(f"after {sent} bytes: {exc}")
            return 1
    return 0


def hold(host: str, port: int, path: str, seconds: float) -> int:
    """GET, read what comes until the server closes or resets, but keep our end open a while
    (curl closes at once, which races a proxy's own close)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        got = 0
        try:
            while chunk := s.recv(65536):
                got += len(chunk)
            print(f"closed by the server after {got} bytes")
        except ConnectionResetError as exc:
            print(f"after {got} bytes: {exc}")
        time.sleep(seconds)
    return 0


def flood(host: str, port: int, n: int) -> int:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append(s)
    time.sleep(1.0)
    for s in socks:
        s.close()
    return 0


def main() -> int:
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "reuse":
        return reuse(host, port, float(sys.argv[4]))
    if cmd == "hold":
        return hold(host, port, sys.argv[4], float(sys.argv[5]))
    if cmd == "flood":
        return flood(host, port, int(sys.argv[4]))
    if cmd == "upload":
        return upload(host, port, sys.argv[4], int(sys.argv[5]))
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
