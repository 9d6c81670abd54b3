"""The controller is bounded against a hostile host (issue 29.5): a line, a session's transcript,
a pulled file. SshSession and SshTransport._cat read from stand-ins for asyncssh's process (its
``stdout.read``), the orchestrator's Talk from the fake transport; asyncssh itself is not patched."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from remote.commands import RemoteCommand
from remote.errors import ProtocolError
from remote.ssh import SshSession, SshTransport
from remote.transport import MAX_LINE

pytestmark = pytest.mark.anyio
CMD = RemoteCommand("capture", (), "true", 10)


class Stream:
    """A process's stdout that hands out the given chunks, then end-of-file."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks
        self.end = type(chunks[0])() if chunks else ""  # "" or b"": what asyncssh's read gives at the end

    async def read(self, n: int) -> Any:
        return self.chunks.pop(0) if self.chunks else self.end


class Proc:
    def __init__(self, chunks: list[Any], exit_status: int = 0) -> None:
        self.stdout = Stream(chunks)
        self.exit_status = exit_status
        self.closed = False

    async def wait(self, check: bool = False) -> Any:
        return self

    stderr = b""

    def close(self) -> None:
        self.closed = True


def session(chunks: list[str]) -> SshSession:
    return SshSession("evil", Proc(chunks), CMD, lambda: None)


async def test_lines_across_chunks_come_whole() -> None:
    s = session(["@@sec", "tion a\nbody", " line\n", "last"])
    assert [await s.readline() for _ in range(4)] == ["@@section a", "body line", "last", None]


async def test_a_line_without_end_is_that_hosts_error_after_a_mebibyte_and_costs_linear_time() -> None:
    """87a3ac3 joined the partial line again with each 64 KiB chunk: 64 MiB without a newline took
    36 s, 128 MiB 131 s. Now the line is refused once past MAX_LINE, and reading up to there is
    one join."""
    chunk = "x" * (1 << 16)
    s = session([chunk] * ((MAX_LINE >> 16) + 2))
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="a line of more than 1 MiB"):
        await s.readline()
    assert time.monotonic() - started < 5  # generous: linear work is milliseconds here
    ok = session([chunk] * ((MAX_LINE >> 16) - 1) + ["\n"])
    assert len(await ok.readline() or "") == MAX_LINE - (1 << 16)


async def test_cat_stops_at_the_listed_size(tmp_path: Path) -> None:
    """A host without SFTP: the file comes over `cat`; a host that sends more than the size it
    listed is refused at that size, the bastion's disk is not filled."""

    class Conn:
        def __init__(self, chunks: list[bytes]) -> None:
            self.proc = Proc(chunks)

        async def create_process(self, line: str, encoding: Any = None) -> Proc:
            return self.proc

    t = SshTransport.__new__(SshTransport)
    conn = Conn([b"a" * 1000, b"b" * 1000, b"c" * 1000])
    t._conn = conn  # type: ignore[assignment]
    with pytest.raises(OSError, match="more than the 1500 bytes the host listed"):
        await t._cat("/tmp/capture-all.AAAAAAAA/x.pcap", tmp_path / "x", 1500)
    assert (tmp_path / "x").stat().st_size <= 1500 and conn.proc.closed
    good = Conn([b"a" * 1000, b"b" * 500])
    t._conn = good  # type: ignore[assignment]
    await t._cat("/tmp/capture-all.AAAAAAAA/x.pcap", tmp_path / "y", 1500)
    assert (tmp_path / "y").read_bytes() == b"a" * 1000 + b"b" * 500
