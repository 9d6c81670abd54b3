"""The capture-all command shows no dependency's deprecation notices, and every warning of ours."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import cryptography
import pytest
from cryptography.utils import CryptographyDeprecationWarning
from packaging.version import Version

from orchestrator.thirdparty import quiet_dependencies

ROOT = Path(__file__).resolve().parents[2]


def _shown(category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as got:
        warnings.resetwarnings()
        warnings.simplefilter("always")  # what is not filtered is shown
        quiet_dependencies()
        warnings.warn_explicit("a notice", category, f"{module.replace('.', '/')}.py", 1, module=module)
    return bool(got)


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning,
                                      CryptographyDeprecationWarning])  # fmt: skip
@pytest.mark.parametrize("module", ["asyncssh.crypto.misc", "asyncssh", "numba.core.config", "pydantic._internal"])
def test_a_dependencys_deprecation_notices_are_not_shown(category: type[Warning], module: str) -> None:
    assert not _shown(category, module)


@pytest.mark.parametrize("module", ["orchestrator.run", "analysis.scan", "remote.ssh", "asyncsshx", "__main__"])
def test_ours_and_lookalike_names_are_shown(module: str) -> None:
    assert _shown(CryptographyDeprecationWarning, module) and _shown(DeprecationWarning, module)


@pytest.mark.parametrize("category", [UserWarning, RuntimeWarning, ResourceWarning])
def test_a_dependencys_other_warnings_are_shown(category: type[Warning]) -> None:
    assert _shown(category, "asyncssh.connection")


def test_the_command_prints_no_warning_of_asyncssh_and_cryptography_at_import() -> None:
    """The command's own start (entry), then the import a capture makes: nothing on stderr, where
    the same import without the filters shows cryptography 51's DSA notices (when the locked
    cryptography raises them)."""
    def run(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)

    done = run("from orchestrator.thirdparty import quiet_dependencies as q; q(); import asyncssh")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    bare = run("import asyncssh")
    if Version(cryptography.__version__) >= Version("51"):
        assert "CryptographyDeprecationWarning: DSA is deprecated" in bare.stderr, bare.stderr
