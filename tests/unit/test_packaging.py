"""What `pip install capture-all` / `pipx install .` delivers: the wheel's contents and its declared
dependencies against what the code imports (tests/lab/test_install.py installs it and runs it).

The tests run inside the lab's network namespace (no route out): the wheel is built from the
source without build isolation."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {"asyncssh", "anyio", "pydantic", "numpy", "tomli"}  # pyproject's dependencies
# Imported only where installed: module -> (the distribution, the extra that brings it).
OPTIONAL = {"numba": ("numba", "fast"), "llvmlite": ("numba", "fast"), "yaml": ("pyyaml", "yaml")}
# Imported, not declared: it comes with the named dependency (orchestrator/thirdparty.py names its
# warning category, where asyncssh brings it, and copes without it).
BROUGHT = {"cryptography": "asyncssh"}


def source_copy(dest: Path) -> Path:
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
    stdlib = set(sys.stdlib_module_names) | {"tomllib"}  # 3.11's; 3.10 imports tomli in its place
    third = imported - stdlib - {"orchestrator", "remote", "analysis", "setuptools"}
    assert third - set(OPTIONAL) - set(BROUGHT) == RUNTIME and set(BROUGHT.values()) <= RUNTIME


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = source_copy(tmp / "src")
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
