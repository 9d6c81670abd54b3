"""What `pip install capture-all` / `pipx install .` delivers: the wheel's contents, its declared
dependencies against what the code imports, and a clean pipx install that runs.

The tests run inside the lab's network namespace (no route out): the wheel is built from the
source without build isolation, and pipx installs from the wheelhouse scripts/bootstrap --test
downloaded beside the venv (.venv/wheelhouse)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
RUNTIME = {"asyncssh", "anyio", "pydantic", "numpy", "tomli"}  # pyproject's dependencies
# Imported only where installed: module -> (the distribution, the extra that brings it).
OPTIONAL = {"numba": ("numba", "fast"), "llvmlite": ("numba", "fast"), "yaml": ("pyyaml", "yaml")}


def _needs(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} (CI=true: scripts/bootstrap --test provides it)")
        pytest.skip(what)


def _source_copy(dest: Path) -> Path:
    """The project as pip sees it, away from the checkout (a build writes build/ and egg-info)."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, dest / name)
    for pkg in ("orchestrator", "remote", "analysis"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_runtime_dependencies_are_what_the_code_imports() -> None:
    imported: set[str] = set()
    for pkg in ("orchestrator", "remote", "analysis"):
        for path in (ROOT / pkg).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third = imported - set(sys.stdlib_module_names) - {"orchestrator", "remote", "analysis", "setuptools"}
    assert third - set(OPTIONAL) == RUNTIME


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, text=True)  # fmt: skip
    (found,) = (tmp / "dist").glob("capture_all-*.whl")
    return found


def test_the_wheel_holds_the_packages_their_data_and_no_test_code(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "orchestrator/inventory.example.toml" in names and "analysis/report.schema.json" in names
    assert "remote/fake.py" not in names  # the test transport
    assert not [n for n in names if n.startswith("tests/") or n.startswith("bench/")]
    tops = {n.split("/")[0] for n in names if not n.startswith("capture_all-")}
    assert tops == {"orchestrator", "remote", "analysis"}
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(".dist-info/" in n and n.endswith("/LICENSE") for n in names)
    assert "License: MIT" in meta or "License-Expression: MIT" in meta
    required = {ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")}
    plain = {r.split(">")[0].split(";")[0].strip() for r in required if "extra ==" not in r}
    assert plain == RUNTIME
    for module, (dist, extra) in OPTIONAL.items():
        assert any(r.startswith(dist) and f'extra == "{extra}"' in r for r in required), (module, required)


def test_pipx_install_then_help_in_a_clean_venv(tmp_path: Path) -> None:
    pipx = shutil.which("pipx")
    _needs(pipx is not None, "pipx is not installed")
    _needs(WHEELHOUSE.is_dir(), f"no wheelhouse at {WHEELHOUSE}")
    assert pipx is not None
    src = _source_copy(tmp_path / "src")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIPX_HOME": str(tmp_path / "pipx"),
           "PIPX_BIN_DIR": str(tmp_path / "bin"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)}  # fmt: skip
    done = subprocess.run([pipx, "install", str(src)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    exe = tmp_path / "bin" / "capture-all"
    help_ = subprocess.run([str(exe), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "exit status:" in help_.stdout, help_.stderr
    example = subprocess.run([str(exe), "init", "--example", "-o", str(tmp_path / "inv.toml")], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert example.returncode == 0, example.stderr
    planned = subprocess.run([str(exe), "plan", "-i", str(tmp_path / "inv.toml"), "-f", "10.20.2.17->10.20.4.18:443"],
                             env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert planned.returncode == 0 and "nothing was contacted" in planned.stdout, planned.stderr
    venv_python = tmp_path / "pipx" / "venvs" / "capture-all" / "bin" / "python"
    fake = subprocess.run([str(venv_python), "-c", "import remote.fake"], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert fake.returncode != 0 and "No module named 'remote.fake'" in fake.stderr
