"""Every script a host runs passes shellcheck as POSIX sh (warnings and errors; each exception is a
directive in the script with its reason), as the host's /bin/sh reads it (dash on Debian)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from remote import commands
from tests.needs import unavailable


@pytest.mark.parametrize("name", sorted(commands._SCRIPTS))
def test_shellcheck_reads_the_hosts_script(name: str, tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        unavailable("shellcheck is not installed", "scripts/bootstrap --test installs it")
    script = tmp_path / f"{name}.sh"
    # Every script is sent with all the exit codes; each uses some: the others are marked used here.
    codes = commands._EXIT_CODES
    used = ": " + " ".join(f'"${v.split("=")[0]}"' for v in codes.split())
    script.write_text(f"#!/bin/sh\n{codes}\n{used}\n{commands._SCRIPTS[name]}")
    done = subprocess.run(["shellcheck", "--shell=sh", "--severity=warning", "--format=gcc", str(script)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
