"""Per-host progress: a live table on a terminal, plain lines stamped in UTC otherwise (a pipe,
a log file, TERM=dumb: no cursor movement where it cannot work)."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, hosts: list[str], stream: TextIO | None = None, live: bool | None = None,
                 quiet: bool = False) -> None:  # fmt: skip
        self.stream = stream or sys.stderr
        self.quiet = quiet  # -q: nothing (warnings and the result are printed elsewhere)
        if live is None:
            live = self.stream.isatty() and os.environ.get("TERM", "") not in ("dumb", "")
        self.live = live
        self.hosts = hosts
        self.state = {h: ("waiting", "") for h in hosts}
        self.run_line = ""
        self._drawn = 0
        self._width = max([len(h) for h in hosts] + [4])

    def __call__(self, host: str, state: str, detail: str) -> None:
        if host == "*":
            self.run_line = f"{state} {detail}".strip()
        else:
            self.state[host] = (state, detail)
        if self.quiet:
            return
        if self.live:
            self._draw()
        elif not (host == "*" and state == "capturing"):
            who = "run" if host == "*" else host
            stamp = time.strftime("%H:%M:%SZ", time.gmtime())  # UTC, like every report
            self.stream.write(f"{stamp} [{who}] {state}{': ' + detail if detail else ''}\n")
            self.stream.flush()

    def _draw(self) -> None:
        lines = [f"  {h:<{self._width}}  {s:<12} {d}"[:160] for h, (s, d) in self.state.items()]
        lines.append(f"  {self.run_line}"[:160])
        out = ("\x1b[F" * self._drawn) + "".join(f"\x1b[2K{ln}\n" for ln in lines)
        self._drawn = len(lines)
        self.stream.write(out)
        self.stream.flush()

    def close(self) -> None:
        self._drawn = 0
