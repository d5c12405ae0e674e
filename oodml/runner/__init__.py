"""The runner: methods x shift levels x k x seeds, stored one cell file at a time, resumable (README.md, docs/formats.md).

`run_grid(cfg)` validates everything first (bad input: OodmlError, exit 2, nothing written), skips finished cells,
runs the rest on the chosen executor and writes each result as it arrives. It returns 0, or 1 when a cell failed.
"""

from __future__ import annotations

import dataclasses
import os

from oodml.config import RunCfg, check_grid_size
from oodml.progress import log
from oodml.runner.cell import CellResult, CellTask, execute
from oodml.runner.executors import EXECUTORS, ExecOptions, Sink
from oodml.runner.grid import plan_grid
from oodml.runner.plan import Cell, Plan, describe
from oodml.runner.live import GridProgress
from oodml.runner.store import CellStore, cell_payload

__all__ = ["Cell", "CellResult", "CellTask", "EXECUTORS", "Plan", "CellStore", "execute", "plan_grid", "run_grid",
           "cpu_count", "make_tasks"]


def cpu_count() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: torch/faiss threads inside a cell (see `make_tasks`)
CELL_THREADS = 1


def make_tasks(plan: Plan, store: CellStore) -> tuple[list[CellTask], int]:
    """Tasks for the cells not yet finished (all of them with --force), and how many cells were skipped.

    A finished cell asked for more k than it holds is rerun for the union of both (its fit comes from the cache).
    """
    cfg = plan.cfg
    # one intra-op thread per cell whatever --workers is: float reductions split over threads round differently
    # (measured: an adapted cell's map@r moved by 7e-9 between 1 and 2 threads), so a metric would depend on the
    # worker count; the pool runs cells side by side instead
    threads = CELL_THREADS
    tasks, skipped = [], 0
    for cell in plan.cells:
        if not cfg.force and store.is_done(cell):
            skipped += 1
            continue
        stored = () if cfg.force else store.stored_shots(cell)
        if stored:
            cell = dataclasses.replace(cell, shots=tuple(sorted(set(cell.shots) | set(stored))))
        tasks.append(CellTask(cell=cell, level=plan.levels[cell.level], overrides=dict(cfg.method_params),
                              plugins=tuple(cfg.plugins), device=plan.device, threads=threads,
                              fit_cache=str(store.fits_dir.resolve()), refit=cfg.force, data_root=cfg.data_root,
                              dataset_options=dict(cfg.dataset_options)))
    return tasks, skipped


class _StoreSink(Sink):
    """Writes each finished cell (the parent is the only writer) and drives the progress view."""

    def __init__(self, plan: Plan, store: CellStore, view: GridProgress) -> None:
        self.plan, self.store, self.view = plan, store, view
        self.failed = 0

    def started(self, task: CellTask) -> None:
        self.view.started(task.cell.label)

    def finished(self, task: CellTask, result: CellResult) -> None:
        payload = cell_payload(self.plan, task.cell, result)
        self.store.write(payload)
        self.failed += result.status == "error"
        note = f": {result.error}" if result.error else _headline(payload)
        self.view.finished(task.cell.label, result.status, result.wall_time_s, note)


def _headline(payload: dict[str, object]) -> str:
    rows = payload["rows"]
    assert isinstance(rows, list)
    for r in rows:
        if r["status"] == "ok" and r["metric"] in ("recall@1", "accuracy"):
            return f" ({r['method']} k={r['k_shot']} {r['metric']} {r['value']:.3f})"
    return ""


def run_grid(cfg: RunCfg) -> int:
    """Run the grid described by `cfg`; returns 0 when every cell ended ok (or skipped), else 1."""
    executor = EXECUTORS.get(cfg.executor)  # an unknown executor: OodmlError with the closest names, before any work
    if executor.info.check is not None:
        executor.info.check(cfg.address)
    plan = plan_grid(cfg)
    check_grid_size(len(plan.cells), cfg)
    store = CellStore(cfg.results)
    store.remove_stale_temps()
    tasks, skipped = make_tasks(plan, store)
    log(describe(plan, len(tasks), skipped))
    log(f"run: results in {store.cells_dir}")
    if not tasks:
        return 0
    workers = min(cfg.workers or cpu_count(), len(tasks))
    opts = ExecOptions(workers=workers, threads=tasks[0].threads, features_path=str(plan.features_path),
                       address=cfg.address, plugins=tuple(cfg.plugins), resources=dict(cfg.ray_resources))
    view = GridProgress(len(tasks), workers)
    sink = _StoreSink(plan, store, view)
    try:
        executor.factory(tasks, plan.features, opts, sink)
    finally:
        view.close()
    log(view.summary())
    if sink.failed:
        log(f"run: {sink.failed} cell(s) failed; their files under {store.cells_dir} hold the error; "
            f"rerun the same command to retry them")
    return 1 if sink.failed else 0
