"""The import rules of STYLE.md, checked on the source: analysis is pure, one module speaks SSH."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).glob("*.py"))


@pytest.mark.parametrize("path", modules("analysis"), ids=lambda p: p.name)
def test_analysis_is_pure(path: Path) -> None:
    bad = imports(path) & {"orchestrator", "remote", "asyncio", "anyio", "asyncssh", "socket", "subprocess", "os"}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", modules("remote"), ids=lambda p: p.name)
def test_remote_does_not_import_orchestrator(path: Path) -> None:
    assert "orchestrator" not in imports(path)


def test_only_the_ssh_modules_import_asyncssh() -> None:
    """remote/ssh.py connects; remote/sshconfig.py reads the user's OpenSSH config through
    asyncssh's reader (loaded only where there is one: ``capture-all plan`` stays light)."""
    users = [
        p.relative_to(ROOT).as_posix()
        for pkg in ("orchestrator", "remote", "analysis")
        for p in modules(pkg)
        if "asyncssh" in imports(p)
    ]
    assert users == ["remote/ssh.py", "remote/sshconfig.py"]


def test_only_analysis_reads_pcaps_with_dpkt() -> None:
    users = [
        p.relative_to(ROOT).as_posix()
        for pkg in ("orchestrator", "remote")
        for p in modules(pkg)
        if "dpkt" in imports(p)
    ]
    assert users == []
