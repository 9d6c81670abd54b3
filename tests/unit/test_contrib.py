"""The scheduling recipe in contrib/systemd says what the code does: its command line parses with
the CLI's own parser, its flow is a flow, and the exit statuses it names are the CLI's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from orchestrator import cli
from orchestrator.flow import parse_flow

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def _env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (CONTRIB / "collect.env").read_text().splitlines()
             if line and not line.startswith("#")]  # fmt: skip
    return {k: v for k, v in pairs}


def _unit(name: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (CONTRIB / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    return keys


def _expand(word: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word)


def test_the_services_command_line_is_one_the_cli_takes() -> None:
    env = _env()
    (start,) = _unit("capture-all-collect.service")["ExecStart"]
    argv = [_expand(w, env) for w in shlex.split(start)]
    assert argv[0].endswith("/.venv/bin/capture-all")
    args = cli.capture_parser().parse_args(argv[1:])
    assert args.plain and args.duration == float(env["CAPTURE_ALL_DURATION"])
    parse_flow(args.flow)  # the example flow is one
    (pre,) = _unit("capture-all-collect.service")["ExecStartPre"]
    words = [_expand(w, env) for w in shlex.split(pre)]
    # The retention step removes only bundles of ours, directly under the state directory.
    assert words[:2] == ["/usr/bin/find", "/var/lib/capture-all/collect"] and "capture-all-*" in words
    assert words[words.index("-maxdepth") + 1] == "1" and words[words.index("-mtime") + 1] == "+7"


def test_the_exit_statuses_it_names_are_the_clis() -> None:
    text = (CONTRIB / "capture-all-collect.service").read_text()
    assert "0 every host captured" in text and cli.EXIT_OK == 0
    assert "3 partial" in text and cli.EXIT_PARTIAL == 3
    assert "4 nothing captured" in text and cli.EXIT_NOTHING == 4
    assert "2 bad" in text and cli.EXIT_USAGE == 2
    # systemctl stop sends SIGINT: the CLI's "Ctrl-C once", which stops early and collects.
    assert _unit("capture-all-collect.service")["KillSignal"] == ["SIGINT"]


def test_the_watch_services_command_line_is_one_the_cli_takes() -> None:
    pairs = [line.split("=", 1) for line in (CONTRIB / "watch.env").read_text().splitlines()
             if line and not line.startswith("#")]  # fmt: skip
    env = {k: v for k, v in pairs}
    unit = _unit("capture-all-watch.service")
    (start,) = unit["ExecStart"]
    argv = [_expand(w, env) for w in shlex.split(start)]
    assert argv[0].endswith("/.venv/bin/capture-all") and argv[1] == "watch"
    args = cli.watch_parser().parse_args(argv[2:])
    assert args.plain and args.max_armed == 4 * 3600 and args.count == int(env["CAPTURE_ALL_COUNT"])
    assert args.ring_bytes == 100 << 20 and args.before + args.after < args.max_armed
    parse_flow(args.flow)
    # Bad input is not retried; Ctrl-C (SIGINT) is how it stops; the statuses named are the CLI's.
    assert unit["RestartPreventExitStatus"] == [str(cli.EXIT_USAGE)] and unit["KillSignal"] == ["SIGINT"]
    text = (CONTRIB / "capture-all-watch.service").read_text()
    assert "5 armed the whole\n# time, no reset" in text and cli.EXIT_NO_RESET == 5
    (pre,) = unit["ExecStartPre"]
    words = [_expand(w, env) for w in shlex.split(pre)]
    assert words[:2] == ["/usr/bin/find", "/var/lib/capture-all/watch"] and "capture-all-watch-*" in words
