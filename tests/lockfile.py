"""requirements.lock (scripts/lock writes it, scripts/bootstrap installs it) read back: what it
pins for this interpreter, and how an environment differs from it."""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "capture-all"
# The venv's own installer, from the Python that made it (ensurepip), not from the lock.
NOT_LOCKED = {"pip"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    marker: str | None
    hashes: tuple[str, ...]


def pins(path: Path = LOCK) -> list[Pin]:
    """Every entry of the lock, in its order; each with its hashes."""
    found: list[Pin] = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = _PIN.match(line)
        if m is None:
            continue
        hashes: list[str] = []
        for cont in lines[i + 1 :]:
            h = re.match(r"^\s+--hash=(sha256:[0-9a-f]{64})", cont)
            if h is None:
                break
            hashes.append(h.group(1))
        found.append(Pin(canonicalize_name(m.group(1)), m.group(2), m.group(3), tuple(hashes)))
    return found


def expected(path: Path = LOCK) -> dict[str, str]:
    """name -> version the lock pins for this interpreter (markers evaluated here)."""
    out: dict[str, str] = {}
    for p in pins(path):
        if p.marker is None or Marker(p.marker).evaluate():
            assert p.name not in out, f"{p.name} pinned twice for this Python"
            out[p.name] = p.version
    return out


def installed() -> dict[str, str]:
    """name -> version of every distribution this interpreter's environment holds, but the
    project itself and the venv's pip."""
    out = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    return {n: v for n, v in out.items() if n not in NOT_LOCKED and n != PROJECT}


def differences(want: dict[str, str], have: dict[str, str]) -> list[tuple[str, str | None, str | None]]:
    """(name, locked version or None, installed version or None) where they differ, by name."""
    return [(n, want.get(n), have.get(n)) for n in sorted(want.keys() | have.keys()) if want.get(n) != have.get(n)]


def describe(diff: list[tuple[str, str | None, str | None]]) -> list[str]:
    return [f"{n} {old or '(not in the lock)'} -> {new or '(not installed)'}" for n, old, new in diff]
