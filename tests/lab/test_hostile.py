"""A local, unprivileged user on the lab's hosts (issue 29): what they leave behind is never read
by our root, and never stops a run. The real tool over real sshd, as an operator runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.lab.labnet import CLIENT_IP, HOSTS, LAB_USERS, PROXY_FRONT, Lab
from tests.lab.test_capture import run_cli

SECRET = "SECRET-29-b7e1"


def as_user(*argv: str) -> None:
    uid = LAB_USERS["captest"]
    subprocess.run(argv, check=True, user=uid, group=uid)


def test_a_planted_lock_and_a_linked_log_are_not_read_and_the_run_goes_on(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user (uid 4242) plants, in the shared tmpdir (1777, as /tmp), what 87a3ac3 trusted: a
    run lock for every lab host's network namespace, each pointing at a fresh-looking directory of
    theirs whose `holder` links to a root-only file (87a3ac3 read it as root into `@@fail busy` and
    refused the run). And the proxy's second log, in a directory they own, is a link to that file
    (87a3ac3 read it as root into the bundle). Now every host captures, the planted lock is left
    alone, the link is a note, and the secret is nowhere in the bundle."""
    lab = clean_lab
    secret = tmp_path / "secret"
    secret.write_text(f"{SECRET}\n" * 20)
    secret.chmod(0o600)
    shared = Path(tempfile.mkdtemp(prefix="capture-all-hostile-"))
    shared.chmod(0o755)
    os.chown(shared, LAB_USERS["captest"], LAB_USERS["captest"])
    try:
        fake = lab.remote_tmp / "capture-all.EVILEVIL"
        as_user("mkdir", "-m", "755", str(fake))
        as_user("ln", "-s", str(secret), str(fake / "holder"))
        for name in HOSTS:
            ns = os.stat(f"/run/netns/{name}").st_ino
            as_user("ln", "-s", str(fake), str(lab.remote_tmp / f"capture-all.lock.{ns}"))
        log = shared / "app.log"
        as_user("ln", "-s", str(secret), str(log))
        inv = tmp_path / "inventory.toml"
        text = lab.inventory.read_text()
        old = f'logs = ["{lab.root / "haproxy.log"}"]'
        assert old in text
        inv.write_text(text.replace(old, f'logs = ["{lab.root / "haproxy.log"}", "{log}"]'))
        out = tmp_path / "b"
        code, stdout, _ = run_cli(capsys, "-i", str(inv), "--flow", f"{CLIENT_IP}->{PROXY_FRONT}:8080", "-d", "1",
                                  "-o", str(out))  # fmt: skip
        assert code == 0, stdout
        m = json.loads((out / "manifest.json").read_text())
        assert {h["name"]: h["status"] for h in m["hosts"]} == dict.fromkeys(
            [h["name"] for h in m["hosts"]], "ok"), m["hosts"]  # fmt: skip
        meta = (out / "proxy" / "logs" / "log.2.meta").read_text()
        assert "error=a symbolic link" in meta, meta
        leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
        assert leaked == [] and SECRET not in stdout, leaked
        assert (out / "proxy" / "logs" / "log.1.txt").is_file()  # HAProxy's own log still came back
        assert all((lab.remote_tmp / f"capture-all.lock.{os.stat(f'/run/netns/{n}').st_ino}").is_symlink()
                   for n in HOSTS)  # theirs: neither trusted nor removed  # fmt: skip
    finally:
        shutil.rmtree(shared)
        for p in lab.remote_tmp.iterdir():  # what the user planted (the lab's next test wants it empty)
            if p.is_symlink():
                p.unlink()
            else:
                shutil.rmtree(p)
