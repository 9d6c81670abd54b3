"""What a test needs from the machine: missing, it skips on a developer's machine and fails under
CI=true, where the README's test command has installed everything (a test that skips there is a
failure, not a pass)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(why: str, how: str) -> NoReturn:
    """``why``: what is missing; ``how``: what provides it (said under CI, where it must be there)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} ({how})")
    pytest.skip(why)


def root(why: str) -> None:
    """The test runs as root (the host scripts refuse otherwise, as on a host)."""
    if os.geteuid() != 0:
        unavailable(why, "CI runs as root")
