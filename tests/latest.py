"""`scripts/test --latest`: the unit and fake tiers, and the install test, against the newest
releases pyproject.toml's ranges allow, to see the next break before users do.

Runs with .venv-latest's Python inside the lab (scripts/test enters it). It says how those releases
differ from requirements.lock; where tests fail, it puts each changed distribution back at its
locked version in turn (from the locked wheelhouse, offline) and runs the failed tests again: the
one whose locked version makes them pass is named. Exit status: pytest's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.lockfile import ROOT, describe, differences, expected, installed

LATEST = ROOT / ".venv-latest"
LOCKED_WHEELS = ROOT / ".venv" / "wheelhouse"
LATEST_WHEELS = LATEST / "wheelhouse"
CACHE = LATEST / ".pytest_cache"
LASTFAILED = CACHE / "v" / "cache" / "lastfailed"  # pytest's record of the failed tests' ids
TIERS = ["tests/unit", "tests/fake", "tests/lab/test_install.py"]
# These compare an install with the lock: here it differs from the lock by design.
DESELECT = ["tests/unit/test_lock.py::test_the_venv_holds_exactly_the_lock",
            "tests/lab/test_install.py::test_the_install_takes_the_locked_versions"]  # fmt: skip


def say(text: str) -> None:
    print(f"scripts/test --latest: {text}", flush=True)


def pytest(args: list[str], cache: Path = CACHE) -> int:
    argv = [sys.executable, "-m", "pytest", "-o", f"cache_dir={cache}", *args]
    for d in DESELECT:
        argv += ["--deselect", d]
    env = {**os.environ, "CAPTURE_ALL_WHEELHOUSE": str(LATEST_WHEELS)}
    return subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode


def pip_install(name: str, version: str, wheels: Path) -> bool:
    """``name==version`` from a wheelhouse, offline (the lab has no route out)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                           "--no-index", "--find-links", str(wheels), f"{name}=={version}"], check=False)  # fmt: skip
    return done.returncode == 0


def main(argv: list[str]) -> int:
    if Path(sys.prefix).resolve() != LATEST.resolve():
        raise SystemExit(f"tests.latest runs with {LATEST}/bin/python (scripts/test --latest)")
    diff = differences(expected(), installed())
    if diff:
        say("the newest releases differ from requirements.lock: " + "; ".join(describe(diff)))
    else:
        say("the newest releases are requirements.lock's: scripts/lock would change nothing")
    shutil.rmtree(CACHE, ignore_errors=True)
    code = pytest([*TIERS, *argv])
    if code == 0:
        say("passed with the newest releases" + (": scripts/lock may take them" if diff else ""))
        return 0
    changed = [(n, old, new) for n, old, new in diff if old and new]
    if not changed:
        say("failed, and no distribution differs from the lock in version: the failure is not a release's")
        return code
    failed = sorted(json.loads(LASTFAILED.read_text())) if LASTFAILED.is_file() else []
    if not failed:
        say("failed before any test ran: see above")
        return code
    say(f"{len(failed)} failed; putting each of the {len(changed)} changed distribution(s) back at its locked "
        "version in turn and running those again")
    culprits = []
    for name, old, new in changed:
        if not pip_install(name, old, LOCKED_WHEELS):
            say(f"  {name} {old}: not in {LOCKED_WHEELS}, not tried")
            continue
        try:
            again = pytest(["-q", *failed], cache=LATEST / ".pytest_cache-again")  # the first run's record stays
        finally:
            if not pip_install(name, new, LATEST_WHEELS):
                say(f"  {name} {new} could not be put back: the rest of this search is not the newest set")
        say(f"  {name} {old} (locked) instead of {new}: the failed tests {'pass' if again == 0 else 'still fail'}")
        if again == 0:
            culprits.append(f"{name} {new}")
    if culprits:
        say("failed because of " + " or ".join(culprits) + ": the failed tests pass with its locked version")
    else:
        say("failed; no single distribution's locked version makes the failed tests pass (changed together: "
            + "; ".join(describe(changed)) + ")")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
