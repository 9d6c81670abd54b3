"""The lab's backend: a small HTTP/1.1 server whose paths reproduce the resets we study.

    GET  /            200, keep-alive (the connection is closed with a FIN after --idle seconds)
    ANY  /reset       reads the request, then aborts the connection: SO_LINGER 0 + close -> RST
    GET  /partial     sends the headers and part of the body, then aborts (RST mid-response)
    POST /early       answers 413 at once and closes without reading the body: a close with
                      unread data, so the kernel sends RST (TCP_ABORT_ON_CLOSE)
    GET  /slow?s=N    answers after N seconds

Run inside a lab namespace: ``python -m tests.lab.backend --listen 198.18.3.10:80``.
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading
import time


def _abort(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _read_head(conn: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _body_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip() or 0)
    return 0


def serve(conn: socket.socket, idle: float) -> None:
    buf = b""
    try:
        while True:
            conn.settimeout(idle)
            try:
                got = _read_head(conn, buf)
            except TimeoutError:
                conn.close()  # keep-alive idle timeout: a graceful FIN
                return
            if got is None:
                conn.close()
                return
            head, buf = got
            path = head.split(b" ")[1].decode(errors="replace") if head.count(b" ") >= 2 else "/"
            if path.startswith("/early"):
                conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                time.sleep(0.05)
                conn.close()  # unread body in the receive queue -> RST
                return
            need = _body_length(head)
            conn.settimeout(10)
            while len(buf) < need:
                chunk = conn.recv(65536)
                if not chunk:
                    conn.close()
                    return
                buf += chunk
            buf = buf[need:]
            if path.startswith("/reset"):
                _abort(conn)
                return
            if path.startswith("/partial"):
                # Promise a large body, send a little of it, then abort: a reset mid-response.
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
                time.sleep(0.1)
                _abort(conn)
                return
            if path.startswith("/slow"):
                secs = float(path.partition("s=")[2] or 1)
                time.sleep(min(secs, 30))
            body = b"ok\n"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(body), body)
            )
    except OSError:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, help="ADDR:PORT")
    ap.add_argument("--idle", type=float, default=5.0, help="keep-alive idle timeout, seconds")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host.strip("[]"), int(port)))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, args.idle), daemon=True).start()


if __name__ == "__main__":
    main()
