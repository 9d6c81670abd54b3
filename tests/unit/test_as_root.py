"""The README's two commands, as a user who is not root: re-run through sudo where there is one,
one clear line where there is none (a fresh container has root and no sudo; as root nothing of
this runs, which every other test shows)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder nobody can enter (pytest's own tmp_path sits under a root-only one)."""
    d = Path(tempfile.mkdtemp(prefix="capture-all-as-root-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


def _path(tmp_path: Path, *, sudo: bool) -> str:
    """A PATH with the few tools the scripts use before they need root, and a sudo that only
    says how it was called."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    for tool in ("bash", "id", "dirname", "basename", "cat", "env"):
        target = shutil.which(tool)
        assert target is not None
        (bin_ / tool).symlink_to(target)
    if sudo:
        (bin_ / "sudo").write_text('#!/bin/bash\necho "sudo called with: $*"\n')
        (bin_ / "sudo").chmod(0o755)
    return str(bin_)


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
@pytest.mark.parametrize("script", ["demo", "test"])
def test_not_root_reruns_through_sudo_or_says_what_to_do(open_tmp: Path, script: str) -> None:
    tmp_path = open_tmp
    (tmp_path / "scripts").mkdir()  # a copy: the checkout itself may sit where nobody can read
    for name in (script, "as-root"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    argv = [*NOBODY, "env", "-i", f"PATH={_path(tmp_path, sudo=True)}", "bash", f"./scripts/{script}", "-k", "x"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout.strip() == f"sudo called with: -- ./scripts/{script} -k x", done.stderr
    (tmp_path / "bin" / "sudo").unlink()
    argv[5] = f"PATH={tmp_path / 'bin'}"
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == f"{script}: needs root (apt-get and the network-namespace lab); run it as root"
