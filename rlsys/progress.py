"""Progress display for long user-facing jobs (rich bar on a terminal, periodic lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as _RichProgress


class Progress:
    def __init__(self, description: str, total: int, every_s: float = 10.0) -> None:
        self.description, self.total = description, total
        self.tty = sys.stderr.isatty()
        self.done = 0
        self.every_s, self._last = every_s, 0.0
        self.status = ""
        self._rich: Any = None

    def __enter__(self) -> Progress:
        if self.tty:
            self._rich = _RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                       TimeElapsedColumn(), TimeRemainingColumn(),
                                       TextColumn("{task.fields[status]}"))
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, status="")
        self._t0 = time.time()
        return self

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.done += n
        if status is not None:
            self.status = status
        if self._rich is not None:
            self._rich.update(self._task, advance=n, status=self.status)
        elif time.time() - self._last >= self.every_s or self.done >= self.total:
            self._last = time.time()
            el = self._last - self._t0
            print(f"[{self.description}] {self.done}/{self.total} ({el:.0f}s) {self.status}",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
