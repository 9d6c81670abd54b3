"""capture-all audit against the lab's real HAProxy, over SSH: the client pool's idle timeout
(inventory) set against HAProxy's client-side keep-alive read from its running config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.lab.labnet import CLIENT_IP, PROXY_FRONT, Lab


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["audit", *args])
    return code, capsys.readouterr().out


def with_client_idle(lab: Lab, tmp_path: Path, idle: str) -> Path:
    text = lab.inventory.read_text()
    text, n = re.subn(r'(name = "client"\nrole = "client"\n)', rf'\1idle_timeout = "{idle}"\n', text)
    assert n == 1
    path = tmp_path / f"inventory-{idle}.toml"
    path.write_text(text)
    return path


def test_a_pool_that_outlives_the_proxys_keep_alive_is_named_with_both_values(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = f"{CLIENT_IP}->{PROXY_FRONT}:8080"
    code, out = run(capsys, "-i", str(with_client_idle(clean_lab, tmp_path, "5s")), "-f", flow)
    assert code == 9, out
    cfg = clean_lab.root / "haproxy.cfg"
    line = next(n for n, x in enumerate(cfg.read_text().splitlines(), 1) if "timeout http-request" in x)
    # The lab's HAProxy sets no http-keep-alive: HAProxy then keeps idle client connections for
    # its http-request timeout (2 s), read from the file the running haproxy was started with.
    want = (f"client connection pool idle timeout 5 s (inventory idle_timeout 5s) >= proxy client-side keep-alive "
            f"(HAProxy) 2 s ({cfg}:{line} (timeout http-request 2s)): VIOLATED")  # fmt: skip
    assert want in out, out
    assert "backend: no idle_timeout in the inventory" in out
    code, out = run(capsys, "-i", str(with_client_idle(clean_lab, tmp_path, "1s")), "-f", flow)
    assert code == 0, out
    assert "client connection pool idle timeout 1 s (inventory idle_timeout 1s) < proxy" in out and "in order" in out
