"""Progress for long steps: a rich bar on a terminal, one line per stage otherwise (SPEC §1)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def is_terminal() -> bool:
    """True when stderr is an interactive terminal."""
    return sys.stderr.isatty()


def log(msg: str) -> None:
    """One status line on stderr."""
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """Advance with `update(n)`; shows a bar (terminal) or a start and an end line (pipe/CI)."""

    def __init__(self, desc: str, total: int | None, unit: str = "it") -> None:
        self.desc, self.total, self.unit, self.n = desc, total, unit, 0
        self.t0 = time.perf_counter()
        self._bar = None
        if is_terminal():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     transient=False)
            self._bar.start()
            self._task = self._bar.add_task(desc, total=total, rate="")
        else:
            log(f"{desc}: started ({total if total is not None else '?'} {unit})")

    def update(self, n: int = 1) -> None:
        """Record `n` more units done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.rate:.1f} {self.unit}/s")

    @property
    def rate(self) -> float:
        """Units per second so far."""
        return self.n / max(time.perf_counter() - self.t0, 1e-9)

    def close(self, note: str = "") -> None:
        """Finish the bar; off a terminal, print the summary line."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        else:
            dt = time.perf_counter() - self.t0
            log(f"{self.desc}: done, {self.n} {self.unit} in {dt:.1f}s ({self.rate:.1f} {self.unit}/s){note}")


@contextmanager
def progress(desc: str, total: int | None, unit: str = "it") -> Iterator[Progress]:
    """Context manager around `Progress`."""
    p = Progress(desc, total, unit)
    try:
        yield p
    finally:
        p.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate with progress."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(desc, total, unit) as p:
        for x in items:
            yield x
            p.update(1)
