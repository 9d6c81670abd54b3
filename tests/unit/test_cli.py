"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing contacted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--flow", "nonsense", "-i", "inventory.example.toml"],
            "--flow 'nonsense': expected CLIENT[:PORT]->SERVER:PORT",
        ),
        (["--flow", "10.0.0.1->10.0.0.2", "-i", "inventory.example.toml"], "needs a port"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "/nonexistent.toml"], "cannot read inventory"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "README.md"], "not valid TOML"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "inventory.example.toml", "--duration", "-1"], "must be greater"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "inventory.example.toml", "--max-bytes", "lots"], "not a size"),
        (["--flow", "10.0.0.1->10.0.0.2:80", "-i", "inventory.example.toml", "--hosts", "nope"], "--hosts: nope"),
        (["--flow", "10.0.0.1->10.0.0.2:80"], "required: -i/--inventory"),
        (
            ["--flow", "10.0.0.1->10.0.0.2:80", "-i", "inventory.example.toml", "--witness-buffer", "1G"],
            "--witness-buffer: at most 64M per CPU",
        ),
        (["analyze", "/nonexistent"], "not a capture-all bundle"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    done = cli(*args, "--out", str(tmp_path / "b")) if args[0] != "analyze" else cli(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capture-all: "), done.stderr
    assert needle in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists()  # nothing was created, nobody was contacted


def test_broken_inventory_names_host_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "inv.toml"
    bad.write_text(
        (ROOT / "inventory.example.toml")
        .read_text()
        .replace('interfaces = ["ens5", "ens6"]', 'interfaces = ["ens5", "$(reboot)"]')
    )
    done = cli("--flow", "10.20.2.17->10.20.4.18:443", "-i", str(bad))
    assert done.returncode == 2
    assert done.stderr.startswith(f"capture-all: {bad}: hosts[2] (lb-1): interfaces: [1]:")
    assert len(done.stderr.strip().splitlines()) == 1
