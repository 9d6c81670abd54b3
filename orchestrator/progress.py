"""Per-host progress: a live table on a terminal, plain lines stamped in UTC otherwise (a pipe,
a log file, TERM=dumb: no cursor movement where it cannot work).

The live table is redrawn at most every REDRAW_S (a run-level line at once): a hundred hosts
send some seven hundred events, and a redraw on each was 3.4 MB of table on a 50-line terminal
(a lab run under script(1); 36 KB now) down the on-call's SSH session to the bastion, the
controller blocked on every write its terminal had no room for. A
fleet taller than the terminal is drawn as one line per state (its hosts named, as many as fit)
and one per failed host: cursor movement cannot reach above the top of the screen."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

REDRAW_S = 0.25
PROBLEMS = ("failed", "partial")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text a host sent (an error, a log line, a process name), safe on a terminal: every control
    character but tab (ESC, CR, newline, C1) shown as ``\\xNN``, so none moves the cursor,
    recolours the screen or forges a line of ours."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Progress:
    def __init__(self, hosts: list[str], stream: TextIO | None = None, live: bool | None = None,
                 quiet: bool = False, size: tuple[int, int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
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
        self._size = size  # (columns, lines); None: the terminal's, read at each redraw
        self._clock = clock
        self._last = -math.inf
        self._dirty = False

    def __call__(self, host: str, state: str, detail: str) -> None:
        state, detail = printable(state), printable(detail)
        if host == "*":
            self.run_line = f"{state} {detail}".strip()
        else:
            self.state[host] = (state, detail)
        if self.quiet:
            return
        if self.live:
            now = self._clock()
            if host == "*" or now - self._last >= REDRAW_S:
                self._draw()
                self._last = now
            else:
                self._dirty = True
        elif not (host == "*" and state == "capturing"):
            who = "run" if host == "*" else host
            stamp = time.strftime("%H:%M:%SZ", time.gmtime())  # UTC, like every report
            self.stream.write(f"{stamp} [{who}] {state}{': ' + detail if detail else ''}\n")
            self.stream.flush()

    def _terminal(self) -> tuple[int, int]:
        if self._size is not None:
            return self._size
        try:
            size = os.get_terminal_size(self.stream.fileno())
            if size.columns and size.lines:  # a pty nobody sized says 0 x 0
                return size.columns, size.lines
        except (AttributeError, OSError, ValueError):
            pass
        return tuple(shutil.get_terminal_size())  # type: ignore[return-value]

    def _row(self, host: str) -> str:
        state, detail = self.state[host]
        return f"  {host:<{self._width}}  {state:<12} {detail}"

    def lines(self) -> list[str]:
        """The table as it is drawn now: a line per host where they fit on the terminal (one line
        kept for the cursor), else a line per state and one per failed host."""
        cols, rows = self._terminal()
        width = max(20, min(160, cols - 1))
        room = max(3, rows - 1)
        if len(self.hosts) + 1 <= room:
            table = [self._row(h) for h in self.state]
        else:
            by: dict[str, list[str]] = {}
            for h, (s, _) in self.state.items():
                by.setdefault(s, []).append(h)
            table = [f"  {s:<12} {len(hs):>4}: {' '.join(hs)}" for s, hs in by.items()]
            bad = [self._row(h) for h, (s, _) in self.state.items() if s in PROBLEMS]
            fit = max(0, room - 1 - len(table))
            table += bad[:fit] if len(bad) <= fit else bad[: max(0, fit - 1)] + [f"  … {len(bad) - fit + 1} more"]
            table = table[: room - 1]  # a terminal shorter than the states: the first ones
        table.append(f"  {self.run_line}")
        return [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in table]

    def _draw(self) -> None:
        lines = self.lines()
        out = ("\x1b[F" * self._drawn) + "".join(f"\x1b[2K{ln}\n" for ln in lines)
        if len(lines) < self._drawn:  # a shorter table than the last: clear what is left below it
            out += "\x1b[J"
        self._drawn = len(lines)
        self._dirty = False
        self.stream.write(out)
        self.stream.flush()

    def close(self) -> None:
        if self.live and self._dirty and not self.quiet:
            self._draw()  # the last states, which the redraw limit held back
        self._drawn = 0
