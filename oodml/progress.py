"""Progress for long steps: a rich bar on a terminal, one line per stage otherwise (README.md).

Off a terminal a stage can run for an hour (a source fit on a CPU) between its two lines; `OODML_PROGRESS_EVERY=S`
(seconds) adds a line every S seconds at most while it runs (done / total, rate, time left). Unset, the output is
one line per stage (README.md).
"""

from __future__ import annotations

import math
import os
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


#: environment variable: seconds between progress lines of a running stage off a terminal (unset: none)
EVERY_ENV = "OODML_PROGRESS_EVERY"


def heartbeat_every() -> float | None:
    """`OODML_PROGRESS_EVERY` as seconds (> 0), or None when unset; a value that is not a positive number is
    ignored with a one-line note."""
    text = os.environ.get(EVERY_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        log(f"note: {EVERY_ENV}={text!r} is not a positive number of seconds; no progress lines")
        return None
    return value


class Progress:
    """Advance with `update(n)`; shows a bar (terminal) or a start and an end line (pipe/CI), plus a line every
    `OODML_PROGRESS_EVERY` seconds while it runs when that is set."""

    def __init__(self, desc: str, total: int | None, unit: str = "it") -> None:
        self.desc, self.total, self.unit, self.n = desc, total, unit, 0
        self.t0 = time.perf_counter()
        self._every = heartbeat_every()
        self._last = self.t0
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
        elif self._every is not None and (now := time.perf_counter()) - self._last >= self._every:
            self._last = now
            log(self.line(now))

    def line(self, now: float) -> str:
        """`desc: n/total unit (p%), rate unit/s, ETA t` at `now` (perf_counter) for a running stage's lines."""
        rate = self.n / max(now - self.t0, 1e-9)
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else None
            return (f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%), "
                    f"{rate:.2f} {self.unit}/s, ETA {format_eta(left)}")
        return f"{self.desc}: {self.n} {self.unit}, {rate:.2f} {self.unit}/s"

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


def format_eta(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`, or `?` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


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
