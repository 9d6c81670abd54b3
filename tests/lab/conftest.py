"""The lab tier. Outside tests/lab/enter these tests cannot run; under CI=true that is a
failure, not a skip (CI must prove the real components)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.lab.labnet import Lab, in_lab
from tests.needs import unavailable


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if not in_lab():
        unavailable("lab tests run inside the private namespace lab: use scripts/test",
                    "CI=true: the lab tier must run")
    lab = Lab.build()
    yield lab
    lab.teardown()


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    """The lab, with any router rule or stopped sshd of a test undone afterwards."""
    yield lab
    # A test that failed half-way may leave captures of ours running (each stops by itself at its
    # duration + grace): the next test waits for them, or their hosts' run locks would refuse it.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(prog == "tcpdump" for _, prog, _ in lab.our_processes()):
        time.sleep(0.2)
    lab.router_clear()
    lab.nat_clear()
    lab.direct()
    for name in [n for n in lab.procs if n.startswith("stuck-")]:
        lab.stop(name)
    for h in sorted(lab.without_tracefs | lab.forced):
        lab.stop_sshd(h)
    for h in ("client", "router", "proxy", "backend", "nat"):
        if f"sshd-{h}" not in lab.procs:
            lab.start_sshd(h)
    for port, idle in ((80, 5.0), (81, 1.0)):
        if f"backend-{port}" not in lab.procs:
            lab.start_backend(port, idle)
