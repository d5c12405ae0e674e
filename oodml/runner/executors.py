"""Executors: run cell tasks and hand each result to the parent (the store's single writer) as it arrives.

`local`: `--workers` processes (forked from a forkserver that preloads torch and the methods; each loads the features
once); `--workers 1` runs in this process.
`ray`: the same tasks as Ray tasks, on a local Ray started on demand or on the cluster at `--address`.
Both keep at most `workers` cells in flight, so "running" in the live view means running.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from oodml.compat import RAY_INSTALL, import_ray
from oodml.registry import Registry
from oodml.runner.cell import CellResult, CellTask, execute, set_threads, warm_up
from oodml.runner.procs import die_with_parent, mark_run


@dataclass(frozen=True)
class ExecutorInfo:
    """Registry metadata for an executor."""

    name: str
    description: str


class Sink:
    """What an executor reports to: a task started, a task finished with its result."""

    def started(self, task: CellTask) -> None:
        """`task` is now running."""

    def finished(self, task: CellTask, result: CellResult) -> None:
        """`task` is done; the parent stores `result`."""


#: name -> executor `fn(tasks, features, opts, sink)`: runs the tasks with the features (a FeatureSet), reporting
#: to the Sink
EXECUTORS: Registry[ExecutorInfo] = Registry("executor")  # type: ignore[type-var]  # frozen vs HasName


@dataclass(frozen=True)
class ExecOptions:
    """How to execute: parallel cells, torch threads per cell, Ray address."""

    workers: int
    threads: int
    features_path: str
    address: str | None = None
    plugins: tuple[str, ...] = ()


def _crashed(task: CellTask, why: str) -> CellResult:
    return CellResult(task.cell.cell_id, "error", error=why)


# --- local -------------------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(features_path: str, threads: int, plugins: tuple[str, ...]) -> None:
    from oodml.features.io import FeatureSet

    die_with_parent()  # the forkserver, which dies with the run
    set_threads(threads)
    _WORKER["features"] = FeatureSet.load(features_path)
    warm_up(plugins)


def _run_in_worker(task: CellTask) -> CellResult:
    return execute(task, _WORKER["features"])


@EXECUTORS.register(ExecutorInfo("local", "a pool of --workers processes on this machine (1: in this process)"))
def run_local(tasks: Sequence[CellTask], features: Any, opts: ExecOptions, sink: Sink) -> None:
    """Run `tasks` in a process pool of `opts.workers` (in this process when 1)."""
    if opts.workers <= 1 or len(tasks) <= 1:
        import torch

        before = torch.get_num_threads()
        set_threads(opts.threads)
        warm_up(opts.plugins)
        try:
            for task in tasks:
                sink.started(task)
                sink.finished(task, execute(task, features))
        finally:
            set_threads(before)
        return
    queue: Iterator[CellTask] = iter(tasks)
    left = len(tasks)
    while left:
        done = _pool_round(queue, opts, sink)
        left -= done


def _mp_context() -> mp.context.BaseContext:
    """Workers fork from a clean server process that has imported torch and the methods once (forking this
    process, which may have run torch, is unsafe); where forkserver is unavailable, spawn."""
    if "forkserver" not in mp.get_all_start_methods():  # pragma: no cover - Windows
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    mark_run()
    ctx.set_forkserver_preload(["oodml.runner.forkserver", "oodml.runner.cell", "oodml.methods", "oodml.eval", "faiss", "sklearn.metrics",
                                "pytorch_metric_learning.losses", "torch._inductor"])
    return ctx


def _pool_round(queue: Iterator[CellTask], opts: ExecOptions, sink: Sink) -> int:
    """Run tasks from `queue` in a fresh pool until it is empty or a worker dies; returns how many finished."""
    ctx = _mp_context()
    finished = 0
    pool = ProcessPoolExecutor(opts.workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(opts.features_path, opts.threads, opts.plugins))
    running: dict[Future[CellResult], CellTask] = {}

    def fill() -> None:
        while len(running) < opts.workers:
            task = next(queue, None)
            if task is None:
                return
            running[pool.submit(_run_in_worker, task)] = task
            sink.started(task)

    try:
        fill()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                task = running.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken = True
                    result = _crashed(task, "worker process died (out of memory or killed?)")
                except Exception as e:  # unpicklable result and the like
                    result = _crashed(task, " ".join(f"{type(e).__name__}: {e}".split()))
                sink.finished(task, result)
                finished += 1
            if broken:
                for task in running.values():
                    sink.finished(task, _crashed(task, "worker process died (out of memory or killed?)"))
                    finished += 1
                running.clear()
                break
            fill()
    except BaseException:  # Ctrl-C or a failing write: drop queued cells, don't wait for the running ones
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return finished


# --- ray ---------------------------------------------------------------------------------------------------------

def _ray_execute(task: CellTask, features: Any, threads: int) -> CellResult:
    set_threads(threads)
    warm_up(task.plugins)
    return execute(task, features)


@EXECUTORS.register(ExecutorInfo("ray", "Ray tasks: a local Ray started on demand, or the cluster at --address"))
def run_ray(tasks: Sequence[CellTask], features: Any, opts: ExecOptions, sink: Sink) -> None:
    """Run `tasks` as Ray tasks, at most `opts.workers` at a time; the parent stays the only writer."""
    ray = import_ray()
    started_here, temp_dir = False, None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if opts.address:
            ray.init(address=opts.address, **kwargs)
        else:
            temp_dir = tempfile.mkdtemp(prefix="oodml-ray-", dir="/tmp")  # short path: Ray's sockets live here
            ray.init(num_cpus=max(opts.workers, os.cpu_count() or 1), _temp_dir=temp_dir, **kwargs)
        started_here = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
        features_ref = ray.put(features)
        queue = iter(tasks)
        running: dict[Any, CellTask] = {}
        while True:
            while len(running) < opts.workers:
                task = next(queue, None)
                if task is None:
                    break
                running[remote.remote(task, features_ref, opts.threads)] = task
                sink.started(task)
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                task = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # the task's worker died; execute() itself never raises
                    result = _crashed(task, " ".join(f"ray task failed: {type(e).__name__}: {e}".split())[:500])
                sink.finished(task, result)
    finally:
        if started_here:
            ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
