"""`pipx install .` as a person does it, into a clean venv, then the installed command run as they
run it: --help, plan, and a capture of a real reset in the lab. Its stderr holds capture-all's own
words only: no dependency's warning.

pipx installs offline (the lab has no route out) from a wheelhouse scripts/bootstrap downloaded:
the lock's files (.venv/wheelhouse), or, under `scripts/test --latest`, the newest releases the
ranges allow (CAPTURE_ALL_WHEELHOUSE=.venv-latest/wheelhouse)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.labnet import CLIENT_IP, PROXY_FRONT, REPO, Lab
from tests.lab.test_scenarios import CLIENTS, first, origin
from tests.lockfile import expected
from tests.unit.test_packaging import source_copy

LATEST = os.environ.get("CAPTURE_ALL_WHEELHOUSE")
WHEELHOUSE = Path(LATEST) if LATEST else REPO / ".venv" / "wheelhouse"
# The venv's own installers, from the Python pipx runs (its ensurepip: Debian's 3.11 has
# setuptools 66.1.1), and the project itself.
NOT_LOCKED = {"pip", "setuptools", "capture-all"}
_LIST = ("import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', "
         "d.metadata['Name']).lower(): d.version for d in m.distributions()}))")
WARNING = re.compile(r"\b\w*Warning\b|\bwarnings\.warn")  # any category's name, as Python prints it


@dataclass
class Installed:
    exe: Path
    python: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.exe), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=REPO, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    pipx = shutil.which("pipx")
    if pipx is None or not WHEELHOUSE.is_dir():
        pytest.fail(f"needs pipx and the wheelhouse {WHEELHOUSE}: scripts/bootstrap --test provides both")
    tmp = tmp_path_factory.mktemp("pipx")
    src = source_copy(tmp / "src")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "PIPX_HOME": str(tmp / "pipx"),
           "PIPX_BIN_DIR": str(tmp / "bin"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE),
           "PIP_CONFIG_FILE": os.devnull}  # fmt: skip
    done = subprocess.run([pipx, "install", str(src)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    yield Installed(tmp / "bin" / "capture-all", tmp / "pipx" / "venvs" / "capture-all" / "bin" / "python", env)


def _no_warning(stderr: str) -> None:
    assert not WARNING.search(stderr), stderr


def test_the_install_takes_the_locked_versions(installed: Installed) -> None:
    """From the locked wheelhouse, every distribution pipx installed is the lock's version
    (tests.latest deselects this: there the newest releases are the point)."""
    listing = subprocess.run([str(installed.python), "-c", _LIST], capture_output=True, text=True, check=True,
                             env=installed.env)  # fmt: skip
    got: dict[str, str] = json.loads(listing.stdout)
    locked = expected()
    assert {"asyncssh", "cryptography", "pydantic", "numpy", "anyio"} <= got.keys()
    assert {n: (v, locked.get(n)) for n, v in got.items() if n not in NOT_LOCKED and locked.get(n) != v} == {}


def test_help_and_plan_print_no_warning(installed: Installed, tmp_path: Path) -> None:
    help_ = installed.run("--help")
    assert help_.returncode == 0 and "exit status:" in help_.stdout, help_.stderr
    assert help_.stderr == ""
    inv = tmp_path / "inv.toml"
    example = installed.run("init", "--example", "-o", str(inv))
    assert example.returncode == 0, example.stderr
    _no_warning(example.stderr)
    planned = installed.run("plan", "-i", str(inv), "-f", "10.20.2.17->10.20.4.18:443")
    assert planned.returncode == 0 and "nothing was contacted" in planned.stdout, planned.stderr
    assert planned.stderr == ""


def test_a_capture_of_a_real_reset_prints_no_warning(installed: Installed, clean_lab: Lab, tmp_path: Path) -> None:
    """HAProxy rejects /admin with a reset of its own: the installed command captures it on the
    client and the proxy over real SSH and names the proxy; its stderr (progress, the bundle's
    path) holds no warning, where the locked cryptography warns at asyncssh's import."""
    out = tmp_path / "b"
    done = installed.run("--plain", "-i", str(clean_lab.inventory), "-f", f"{CLIENT_IP}->{PROXY_FRONT}:8083",
                         "-d", "2", "-o", str(out), "--hosts", "client,proxy",
                         "--reproduce", f"{CLIENTS} hold {PROXY_FRONT} 8083 /admin 1", timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[run] armed: 2/2" in done.stderr, done.stderr
    _no_warning(done.stderr)
    report = json.loads((out / "report.json").read_text())
    assert origin(first(report)) == ("host", "proxy"), report["verdict"]


def test_the_test_transport_is_not_installed(installed: Installed, tmp_path: Path) -> None:
    fake = subprocess.run([str(installed.python), "-c", "import remote.fake"], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert fake.returncode != 0 and "No module named 'remote.fake'" in fake.stderr
