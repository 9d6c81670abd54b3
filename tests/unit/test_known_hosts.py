"""--accept-new-host-keys learns a key only for a host known_hosts says nothing of: a key under its
name or an address, plain or hashed, a CA that signs for it, a revoked key all make it known, and
a key that does not verify there is refused as changed (issue 29.5)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import asyncssh
import pytest

from remote.ssh import _has_entry
from remote.sshconfig import KnownHosts
from remote.transport import SshTarget

pytestmark = pytest.mark.anyio

KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def hashed(name: str) -> str:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(
    ("line", "host", "known"),
    [
        (f"h1.example.net {KEY}", "h1.example.net", True),
        (f"@cert-authority *.example.net {KEY}", "h2.example.net", True),
        (f"@revoked h3.example.net {KEY}", "h3.example.net", True),
        (f"{hashed('h4.example.net')} {KEY}", "h4.example.net", True),
        (f"127.0.0.1 {KEY}", "localhost", True),  # known by its address only
        (f"[h5.example.net]:2222 {KEY}", "h5.example.net", False),  # another port's key
        (f"other.example.net {KEY}", "h6.example.net", False),
    ],
)
async def test_what_counts_as_known(tmp_path: Path, line: str, host: str, known: bool) -> None:
    kh_file = tmp_path / "known_hosts"
    kh_file.write_text(line + "\n")
    kh = KnownHosts((kh_file,), kh_file)
    assert await _has_entry(SshTarget(host, host), kh) is known


async def test_an_unreadable_known_hosts_is_never_taken_for_an_empty_one(tmp_path: Path) -> None:
    kh_file = tmp_path / "known_hosts"
    kh_file.write_text("@cert-authority\n")  # not a known_hosts line asyncssh can read
    assert await _has_entry(SshTarget("h7", "h7.example.net"), KnownHosts((kh_file,), kh_file))
