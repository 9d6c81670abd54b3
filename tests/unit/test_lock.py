"""The lock (requirements.lock) is what the project's venv holds, and it agrees with the ranges
pyproject.toml gives for people who `pipx install` the tool."""

from __future__ import annotations

import sys

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lockfile import LOCK, ROOT, describe, differences, expected, installed, pins

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXTRAS = ("fast", "yaml", "test")  # what scripts/lock resolves and scripts/bootstrap installs
SUPPORTED = ("3.10.13", "3.11.7", "3.12.1", "3.13.0")


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def _environment(python: str) -> dict[str, str]:
    return {"python_full_version": python, "python_version": ".".join(python.split(".")[:2]),
            "sys_platform": "linux", "platform_system": "Linux", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "platform_machine": "x86_64", "os_name": "posix"}  # fmt: skip


def test_the_venv_holds_exactly_the_lock() -> None:
    """scripts/bootstrap installed these versions and nothing else (pip freeze against the lock);
    a venv left from an older lock, or an install step that resolved on its own, fails here."""
    diff = differences(expected(), installed())
    assert not diff, f"{sys.prefix} differs from {LOCK.name}: " + "; ".join(describe(diff))


def test_every_pin_is_exact_and_hashed() -> None:
    found = pins()
    assert len(found) > 20
    assert all(p.hashes for p in found), [p.name for p in found if not p.hashes]


@pytest.mark.parametrize("python", SUPPORTED)
def test_the_lock_pins_every_requirement_once_within_its_range_for_each_supported_python(python: str) -> None:
    """A range changed in pyproject.toml without `scripts/lock` fails here: the pin is outside it
    (or a new requirement has none)."""
    env = _environment(python)
    chosen: dict[str, str] = {}
    for p in pins():
        if p.marker is None or Marker(p.marker).evaluate(env):
            assert p.name not in chosen, f"{p.name} pinned twice for Python {python}"
            chosen[p.name] = p.version
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in chosen, f"{req} has no pin for Python {python}: run scripts/lock"
        assert req.specifier.contains(chosen[name], prereleases=True), (
            f"{name}=={chosen[name]} is outside {req} for Python {python}: run scripts/lock"
        )
