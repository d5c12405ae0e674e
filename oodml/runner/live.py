"""Progress of a grid: a live view (done / running / failed, ETA) on a terminal, one line per finished cell
otherwise (README.md)."""

from __future__ import annotations

import time
from typing import Any

from oodml.progress import format_eta, is_terminal, log

__all__ = ["GridProgress", "format_eta"]


class GridProgress:
    """Counts cells done / running / failed and estimates the time left from the elapsed time per finished cell."""

    def __init__(self, total: int, workers: int, live: bool | None = None) -> None:
        self.total, self.workers = total, max(1, workers)
        self.done = self.failed = 0
        self.running: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self._live: Any = None
        if is_terminal() if live is None else live:
            from rich.live import Live

            self._live = Live(self._render(), refresh_per_second=2, transient=False)
            self._live.start()

    def eta(self) -> float | None:
        """Seconds left: remaining cells x elapsed time per finished cell (parallelism included)."""
        if not self.done:
            return None
        left = self.total - self.done
        elapsed = time.perf_counter() - self.t0
        return elapsed / self.done * left

    def started(self, label: str) -> None:
        """A cell began running."""
        self.running[label] = time.perf_counter()
        self._refresh()

    def finished(self, label: str, status: str, wall_s: float, note: str = "") -> None:
        """A cell ended; off a terminal this prints its one line."""
        self.running.pop(label, None)
        self.done += 1
        self.failed += status == "error"
        if self._live is None:
            log(f"[{self.done}/{self.total}] {label}: {status} in {wall_s:.1f}s{note} "
                f"(failed {self.failed}, ETA {format_eta(self.eta())})")
        else:
            self._live.console.print(f"{label}: {status} in {wall_s:.1f}s{note}")
        self._refresh()

    def summary(self) -> str:
        """One closing line."""
        dt = time.perf_counter() - self.t0
        rate = self.done / dt * 60 if dt > 0 else 0.0
        return (f"run: {self.done} cell(s) done in {format_eta(dt)} ({rate:.1f} cells/min), "
                f"{self.failed} failed")

    def close(self) -> None:
        """Stop the live view."""
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.table import Table

        t = Table.grid(padding=(0, 2))
        t.add_row(f"[bold]cells[/] {self.done}/{self.total} done", f"{len(self.running)} running",
                  f"[red]{self.failed} failed[/]" if self.failed else "0 failed", f"ETA {format_eta(self.eta())}")
        now = time.perf_counter()
        for label, t0 in list(self.running.items())[: self.workers]:
            t.add_row(f"  running: {label}", f"{now - t0:.0f}s", "", "")
        return t
