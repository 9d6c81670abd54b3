"""The bundle's manifest digests: taken from the bytes as they were written (or checked after a
transfer), never wrong for a file changed since, and the same as reading every file again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import orchestrator.bundle as bundle_mod
from orchestrator.bundle import Bundle, sha256_file


def _fresh(root: Path) -> dict[str, str]:
    """What a reader who has nothing but the files computes."""
    return Bundle(root).digests()


def test_the_manifest_reads_nothing_this_process_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = Bundle.create(tmp_path / "b")
    b.write("h0/before/ss.txt", "State Recv-Q\n")
    b.write("h0/eth0.tcpdump.txt", b"3 packets captured\n")
    for i in range(3):
        b.append_jsonl("h0/commands.jsonl", {"phase": "capture", "n": i})
    pulled = b.folder("h0") / "eth0.pcap"
    pulled.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(40))  # as a transfer leaves it
    b.transferred(pulled, sha256_file(pulled))
    expected = _fresh(b.root)
    read: list[Path] = []
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: read.append(p) or "")
    assert b.digests() == expected
    assert read == []


def test_a_file_changed_after_it_was_written_is_read_again(tmp_path: Path) -> None:
    b = Bundle.create(tmp_path / "b")
    b.write("h0/after/nstat.txt", "TcpOutRsts 1\n")
    b.write("h0/reproduce.txt", "ok\n")
    b.append_jsonl("h0/commands.jsonl", {"n": 1})
    (b.root / "h0/after/nstat.txt").write_text("TcpOutRsts 12345\n")  # not through the bundle
    with (b.root / "h0/commands.jsonl").open("a") as fh:  # someone else appends
        fh.write('{"n": 2}\n')
    b.append_jsonl("h0/commands.jsonl", {"n": 3})  # and we append after them
    p = b.root / "h0/reproduce.txt"
    st = p.stat()
    p.write_text("no\n")  # the same size: its mtime tells
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    got = b.digests()
    assert got == _fresh(b.root)
    assert got["h0/after/nstat.txt"] == hashlib.sha256(b"TcpOutRsts 12345\n").hexdigest()
    assert got["h0/reproduce.txt"] == hashlib.sha256(b"no\n").hexdigest()


def test_a_rewritten_log_and_the_manifest_itself_have_their_own_digests(tmp_path: Path) -> None:
    from orchestrator.manifest import Manifest

    b = Bundle.create(tmp_path / "b")
    b.append_jsonl("h0/commands.jsonl", {"n": 1})
    b.write("h0/commands.jsonl", '{"n": 9}\n')  # written anew: its running digest is gone
    b.append_jsonl("h0/commands.jsonl", {"n": 10})
    m = Manifest(version="t", created_utc="t", inventory="i", inventory_sha256="0", flow="f", legs=[], options={},
                 hosts=[])  # fmt: skip
    b.write_manifest(m)
    assert m.files == {"h0/commands.jsonl": hashlib.sha256(b'{"n": 9}\n{"n": 10}\n').hexdigest()}
    sums = dict(reversed(line.split("  ")) for line in (b.root / "SHA256SUMS").read_text().splitlines())
    assert sums["manifest.json"] == sha256_file(b.root / "manifest.json")
