"""A tiny progress line on stderr (no dependency: tqdm or rich would be one more package).

Redraws at most every ``MIN_INTERVAL_S`` on a terminal; off a terminal (CI logs) it prints
nothing until ``close()``, which prints one summary line. Thread safe: loaders call
``advance`` from worker threads.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

#: Redraw interval: fast enough to look alive, slow enough to cost nothing.
MIN_INTERVAL_S = 0.2


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class Progress:
    def __init__(
        self,
        label: str,
        total: int = 0,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = 0.0

    def set_total(self, total: int) -> None:
        self.total = total

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.quiet or not self._tty or now - self._last < MIN_INTERVAL_S:
                return
            self._last = now
            self.stream.write("\r" + self._line(now))
            self.stream.flush()

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self._start, 1e-9)
        pct = f"{100 * self.done / self.total:5.1f}% " if self.total else ""
        total = f"/{_size(self.total)}" if self.total else ""
        return f"{self.label}: {pct}{_size(self.done)}{total} {_size(rate)}/s"

    def close(self) -> None:
        if self.quiet:
            return
        line = self._line(time.monotonic())
        self.stream.write(("\r" + line + "\n") if self._tty else line + "\n")
        self.stream.flush()
