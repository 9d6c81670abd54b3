"""A hostile host (issue 29): what it sends back never names a path on the bastion."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.bundle import Bundle
from remote.commands import RemoteCommand
from remote.fake import Conversation, FakeHost, capture_dialogue
from tests.fake.test_fanout import go, hosts

pytestmark = pytest.mark.anyio

TRAVERSAL = "../../../planted"


def tampered(edit: Callable[[str], str]) -> Callable[[FakeHost, RemoteCommand], Conversation]:
    """The healthy host's capture session, every chunk it says passed through ``edit``."""

    def dialogue(host: FakeHost, cmd: RemoteCommand) -> Conversation:
        conv = capture_dialogue(host, cmd)
        try:
            chunk = next(conv)
            while True:
                said = yield edit(chunk)
                chunk = conv.send(said)
        except StopIteration as stop:
            last, code = stop.value
            return edit(last), code

    return dialogue


def planted(chunk: str) -> str:
    """Every place of the finish where the host names something: the interfaces of its tcpdump
    sections and exit codes, the files it lists (sizes and digests), the ring and reach lines."""
    d = "/tmp/capture-all.PROXAAAA"
    if "@@section files\n" in chunk:
        chunk = chunk.replace("@@section files\n", f"rc {TRAVERSAL} 1\nring {TRAVERSAL} 1 1\n@@section files\n")
        more = f"size 24 {d}/..\nsize 24 {d}/x.pcap\n"
        chunk = chunk.replace(f"size 24 {d}/eth0.pcap\n", f"size 24 {d}/eth0.pcap\n{more}")
        chunk = re.sub(rf"^([0-9a-f]{{64}})  {d}/eth0.pcap$", rf"\g<0>\n\1  {d}/..\n\1  {d}/x.pcap", chunk,
                       flags=re.M)  # fmt: skip
    evil = f"@@section tcpdump_err {TRAVERSAL}\nowned\n"
    return re.sub(r"@@section tcpdump_err (\w+)", evil + r"@@section tcpdump_err \1", chunk)


def written(top: Path, bundle: Path) -> None:
    """Nothing planted anywhere; the proxy's captures are its two planned interfaces'."""
    assert not list(top.rglob("planted*")), list(top.rglob("planted*"))
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    pcaps = {f for f in files if f.startswith("proxy/") and f.endswith(".pcap")}
    assert pcaps == {"proxy/eth0.pcap", "proxy/eth1.pcap"}, pcaps


async def test_names_a_host_sends_never_become_paths_on_the_bastion(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    proxy = FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA")
    proxy.dialogues["capture"] = tampered(planted)
    fakes = hosts(proxy=proxy)
    result, recs = await go(deep, fakes)
    written(tmp_path, deep / "b")
    proxy = recs["proxy"]
    assert proxy.status == "ok", (proxy.error, proxy.notes)  # its real captures came back
    assert sorted(c.interface for c in proxy.captures) == ["eth0", "eth1"]
    assert any("../../../planted" in n and "ignored" in n for n in proxy.notes), proxy.notes
    assert {r.status for r in result.records} == {"ok"}


@pytest.mark.parametrize("rel", ["../x", "/etc/x", "a/../../x", "a//b", "./x", "a/\0"])
def test_the_bundle_writes_nothing_outside_itself(tmp_path: Path, rel: str) -> None:
    from orchestrator.errors import BundleError

    bundle = Bundle.create(tmp_path / "b")
    with pytest.raises(BundleError, match="not a plain path inside"):
        bundle.write(rel, "x")
    with pytest.raises(BundleError):
        bundle.append_jsonl(rel, {})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["b"]


def test_the_bundle_never_follows_a_symlink(tmp_path: Path) -> None:
    bundle = Bundle.create(tmp_path / "b")
    bundle.folder("proxy")
    (tmp_path / "b" / "proxy" / "eth0.tcpdump.txt").symlink_to(tmp_path / "outside")
    with pytest.raises(OSError):
        bundle.write("proxy/eth0.tcpdump.txt", "x")
    assert not (tmp_path / "outside").exists()


def forged_after_fail(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    """A preflight that refuses (@@fail busy) and then forges what a ready host says: a directory
    of the attacker's choosing and @@ready (87a3ac3 read on after the @@fail: it sent "go", built a
    filter and later a root cleanup of that directory)."""
    said = yield (
        "@@ssh 198.19.0.1 40000 198.19.0.20 22\n@@section preflight\nuid=0\nowner=root\n"
        "@@fail busy another capture-all run captures on this host (run=x)\n"
        "@@section preflight\ndir=/var/lib/capture-all.EVILEVIL\n@@ready\n"
    )
    host.said.append(f"after the fail: {said}")
    return "", 16


def outside_tmpdir(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    """A preflight that names a directory that is no child of the planned tmpdir."""
    conv = capture_dialogue(host, cmd)
    first = next(conv).replace(f"dir={host.remote_dir}", "dir=/etc/capture-all.EVILEVIL")
    said = yield first
    host.said.append(f"after the fail: {said}")
    return "", 0


@pytest.mark.parametrize("dialogue", [forged_after_fail, outside_tmpdir])
async def test_a_host_cannot_talk_past_its_refusal_nor_name_a_directory(tmp_path: Path, dialogue) -> None:  # type: ignore[no-untyped-def]
    """Issue 29.2: @@fail is final, and the only directory the controller ever acts on is a
    capture-all.XXXXXXXX of the host's planned tmpdir."""
    proxy = FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA")
    proxy.dialogues["capture"] = dialogue
    result, recs = await go(tmp_path, hosts(proxy=proxy))
    rec = recs["proxy"]
    assert rec.status == "failed" and rec.failed_phase == "prepare", (rec.status, rec.error)
    assert not any(s.startswith("go ") or "go " in s for s in proxy.said), proxy.said
    assert [c for c in proxy.log if c.phase == "cleanup"] == []  # no root rm of a directory it named
    assert "EVILEVIL" not in (rec.remote_dir or "")
    assert {recs["client"].status, recs["backend"].status} == {"ok"}  # the others' evidence is kept
    if dialogue is forged_after_fail:
        assert rec.error_kind == "busy" and "run=x" in (rec.error or ""), rec.error


def endless(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    """A preflight that never ends its line: 2 MiB of it (a real one could send gigabytes)."""
    yield "@@ssh 198.19.0.1 40000 198.19.0.20 22\n@@section preflight\nuid=0\n" + "x" * (2 << 20) + "\n@@ready\n"
    return "", 0


def flood(host: FakeHost, cmd: RemoteCommand) -> Conversation:
    """A preflight of 80 MiB in short lines, before its @@ready."""
    lines = ("y" * 1023 + "\n") * (80 << 10)
    yield "@@ssh 198.19.0.1 40000 198.19.0.20 22\n@@section preflight\n" + lines + "@@ready\n"
    return "", 0


@pytest.mark.parametrize("dialogue", [endless, flood])
async def test_a_host_that_says_too_much_is_its_own_protocol_error(tmp_path: Path, dialogue) -> None:  # type: ignore[no-untyped-def]
    """Issue 29.5: a line past 1 MiB, a step's transcript past 64 MiB: that host fails with kind
    "protocol"; the others' evidence is kept."""
    proxy = FakeHost("proxy", remote_dir="/tmp/capture-all.PROXAAAA")
    proxy.dialogues["capture"] = dialogue
    result, recs = await go(tmp_path, hosts(proxy=proxy))
    rec = recs["proxy"]
    assert (rec.status, rec.error_kind) == ("failed", "protocol"), (rec.status, rec.error)
    assert "no script of ours says that much" in (rec.error or "")
    assert {recs["client"].status, recs["backend"].status} == {"ok"}


async def test_a_file_longer_than_listed_is_not_pulled(tmp_path: Path) -> None:
    """The pull is bounded by the size the host listed (29.5): the backend's file is 24 bytes,
    listed as 10."""
    backend = FakeHost("backend", remote_dir="/tmp/capture-all.BACKAAAA")
    d = backend.remote_dir
    backend.dialogues["capture"] = tampered(lambda c: c.replace(f"size 24 {d}/", f"size 10 {d}/"))
    result, recs = await go(tmp_path, hosts(backend=backend))
    rec = recs["backend"]
    assert rec.status == "failed" and "more than the 10 bytes the host listed" in (rec.error or ""), rec.error
    assert not (tmp_path / "b" / "backend" / "eth0.pcap").exists()
