"""Executors: run cell tasks and hand each result to the parent (the store's single writer) as it arrives.

`local`: `--workers` processes (forked from a forkserver that preloads torch and the methods; each loads the features
once); `--workers 1` runs in this process.
`ray`: the same tasks as Ray tasks, on a local Ray started on demand or on the cluster at `--address`, each asking
for the resources of `cell_resources` (`--ray-resources`); a cell lost with its node or worker process is
resubmitted on the nodes left (up to `RAY_RETRIES` times), and source fits travel with tasks and results instead of
through a shared disk (docs/cluster.md).
Both keep at most `workers` cells in flight, so "running" in the live view means running.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodml.compat import RAY_INSTALL, import_ray
from oodml.errors import OodmlError
from oodml.progress import log
from oodml.registry import Registry
from oodml.runner.cell import (CellResult, CellTask, check_fit_record, execute, set_threads, store_fit_blob,
                               warm_up)
from oodml.runner.procs import die_with_parent, mark_run


@dataclass(frozen=True)
class ExecutorInfo:
    """Registry metadata for an executor; `check(address)`, when set, runs before anything is planned or written
    (the Ray executor refuses an address where nothing answers there)."""

    name: str
    description: str
    check: Callable[[str | None], None] | None = None


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
    """How to execute: parallel cells, torch threads per cell, Ray address and the Ray resources each cell asks for
    beyond the defaults (`cell_resources`)."""

    workers: int
    threads: int
    features_path: str
    address: str | None = None
    plugins: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)


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
    ctx.set_forkserver_preload(["oodml.runner.forkserver", "oodml.runner.cell", "oodml.methods", "oodml.eval", "faiss",
                                "sklearn.metrics", "pytorch_metric_learning.losses", "torch._inductor"])
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

#: how often a cell lost with its node or its worker process is resubmitted (on the nodes left) before it is stored
#: as an error; a cell that fails by itself is not resubmitted (`execute` turns its exception into an error result)
RAY_RETRIES = 3
#: seconds a Ray cluster at `--address` has to answer (environment: OODML_RAY_CONNECT_TIMEOUT)
RAY_CONNECT_TIMEOUT_S = 30.0
#: Ray errors that mean the cell's node or worker process went away, not that the cell failed
_LOST = ("NodeDiedError", "WorkerCrashedError", "ObjectLostError")


def cell_resources(regime: str, device: str, asked: Mapping[str, float]) -> dict[str, float]:
    """The Ray resources one cell asks for: 1 CPU, and 1 GPU in the full regime on CUDA; `asked`
    (`--ray-resources NAME=AMOUNT,...`) replaces or adds by name (`GPU=0.5` packs two cells per GPU)."""
    out = {"CPU": 1.0}
    if regime == "full" and device.startswith("cuda"):
        out["GPU"] = 1.0
    out.update({k: float(v) for k, v in asked.items()})
    return out


def _ray_options(res: Mapping[str, float]) -> dict[str, Any]:
    """`ray.remote` options for resources by name (CPU and GPU have their own keywords)."""
    custom = {k: v for k, v in res.items() if k not in ("CPU", "GPU")}
    return dict(num_cpus=res.get("CPU", 0.0), num_gpus=res.get("GPU", 0.0), **({"resources": custom} if custom else {}))


def _ray_execute(task: CellTask, features: Any, threads: int) -> CellResult:
    """A cell as a Ray task: on the GPU Ray assigned when it assigned one (`CUDA_VISIBLE_DEVICES` is Ray's), else on
    the CPU; the result names the node."""
    import ray

    set_threads(threads)
    warm_up(task.plugins)
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    result = execute(dataclasses.replace(task, device=device), features)
    result.node_id = ray.get_runtime_context().get_node_id()
    return result


def _probe(address: str, timeout: float) -> None:
    """OodmlError when nothing accepts a TCP connection at `address` (HOST:PORT, or ray://HOST:PORT) in `timeout`
    seconds; `auto` and addresses without a port are left to Ray."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise OodmlError(f"no Ray cluster answers at --address {address} ({why}); start one there (`ray start --head "
                         f"--port {port}`) or give the head node's address (docs/cluster.md)") from None


def _check_address(address: str | None) -> None:
    if address:
        _probe(address, _connect_timeout())


def _connect_timeout() -> float:
    text = os.environ.get("OODML_RAY_CONNECT_TIMEOUT", "")
    try:
        return float(text) if text else RAY_CONNECT_TIMEOUT_S
    except ValueError:
        raise OodmlError(f"OODML_RAY_CONNECT_TIMEOUT={text!r} is not a number of seconds") from None


def _init_remote(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    """`ray.init(address=...)` bounded in time. When what listens at `address` is no Ray head, Ray retries inside
    native code for minutes, where Python runs no signal handler: SIGTERM and SIGINT are blocked in this thread and
    taken by a watchdog thread instead, which ends the process at once on either (exit 128 + the signal), and with
    one `error:` line and exit code 2 when the timeout passes first."""
    timeout = _connect_timeout()
    _probe(address, timeout)
    stop = threading.Event()
    signals = {signal.SIGTERM, signal.SIGINT}

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            got = signal.sigtimedwait(signals, 0.1)
            if stop.is_set():
                if got is not None:  # arrived as init returned: pending again for the main thread's handlers
                    os.kill(os.getpid(), got.si_signo)
                return
            if got is not None:
                os._exit(128 + got.si_signo)
            if time.monotonic() > deadline:
                sys.stderr.write(f"error: the Ray cluster at --address {address} did not answer within {timeout:g} s "
                                 f"(is it a Ray head node? OODML_RAY_CONNECT_TIMEOUT sets the wait)\n")
                sys.stderr.flush()
                os._exit(2)

    blockable = threading.current_thread() is threading.main_thread() and hasattr(signal, "sigtimedwait")
    if not blockable:  # pragma: no cover - not the main thread, or not POSIX: Ray's own wait
        ray.init(address=address, **kwargs)
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    watchdog = threading.Thread(target=watch, name="oodml-ray-connect", daemon=True)
    watchdog.start()  # inherits the blocked signals, and takes them with sigtimedwait
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        raise OodmlError(f"cannot join the Ray cluster at --address {address}: {' '.join(str(e).split())[:300]}") \
            from None
    finally:
        stop.set()
        watchdog.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _check_feasible(ray: Any, res: Mapping[str, float], remote: bool) -> None:
    """Refuse (a local Ray) or note (a cluster, which may add nodes) cells that no node can run."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(all(r.get(k, 0.0) >= v for k, v in res.items() if v > 0) for r in nodes):
        return
    ask = ",".join(f"{k}={v:g}" for k, v in sorted(res.items()))
    have = sorted({",".join(f"{k}={v:g}" for k, v in sorted(r.items()) if not k.startswith("node:")
                            and k not in ("memory", "object_store_memory")) for r in nodes})
    msg = f"no Ray node has the resources a cell asks for ({ask}); the nodes have: {' | '.join(have) or 'none'}"
    if not remote:
        raise OodmlError(f"{msg}; change --ray-resources, or start a cluster with such nodes and pass --address "
                         f"(docs/cluster.md)")
    log(f"note: {msg}; the cells wait until the cluster has such a node")


def _sent(task: CellTask) -> CellTask:
    """The task as a Ray task gets it: the driver's cache entry of its fit as bytes, when its record matches
    (`check_fit_record`; read, not unpickled, here: the task loads it with the fit cache's weights-only checks), and
    the instruction to return a fit it computes."""
    path = Path(task.fit_cache) / f"{task.cell.fit_id}.pt" if task.fit_cache else None
    blob = None
    if path is not None and path.is_file() and not task.refit:
        try:
            check_fit_record(path)
            blob = path.read_bytes()
        except (OSError, ValueError) as e:
            log(f"note: fit cache {path} is unreadable or stale ({' '.join(str(e).split())[:200]}); fitting again")
    return dataclasses.replace(task, fit_cache=None, fit_blob=blob, return_fit=path is not None)


def _received(task: CellTask, result: CellResult) -> CellResult:
    """Store a fit the task returned in the driver's fit cache (after the cache's checks) and drop it."""
    if result.fit_blob is not None and task.fit_cache:
        store_fit_blob(result.fit_blob, Path(task.fit_cache) / f"{task.cell.fit_id}.pt")
    result.fit_blob = None
    return result


@EXECUTORS.register(ExecutorInfo("ray", "Ray tasks: a local Ray started on demand, or the cluster at --address",
                                  check=_check_address))
def run_ray(tasks: Sequence[CellTask], features: Any, opts: ExecOptions, sink: Sink) -> None:
    """Run `tasks` as Ray tasks, at most `opts.workers` at a time; the parent stays the only writer.

    A task whose source fit another running task is computing waits for it (and then gets it from the driver's fit
    cache), so `X` and `adapted_X` fit once across nodes. A task lost with its node or worker process is resubmitted
    up to `RAY_RETRIES` times; its result counts them (`CellResult.retries`).
    """
    if not tasks:
        return
    ray = import_ray()
    started_here, temp_dir = False, None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if opts.address:
            _init_remote(ray, opts.address, kwargs)
        else:
            temp_dir = tempfile.mkdtemp(prefix="oodml-ray-", dir="/tmp")  # short path: Ray's sockets live here
            ray.init(num_cpus=max(opts.workers, os.cpu_count() or 1), _temp_dir=temp_dir, **kwargs)
        started_here = True
    try:
        res = cell_resources(tasks[0].cell.regime, tasks[0].device, opts.resources)
        _check_feasible(ray, res, remote=bool(opts.address))
        remote = ray.remote(max_retries=0, **_ray_options(res))(_ray_execute)
        lost = tuple(getattr(ray.exceptions, name) for name in _LOST)
        features_ref = ray.put(features)
        pending = list(tasks)
        running: dict[Any, CellTask] = {}
        retries: dict[str, int] = {}
        computing: set[str] = set()  # fit ids that a running task fits (no cache entry when it was sent)
        while pending or running:
            while len(running) < opts.workers:
                task = next((t for t in pending if t.cell.fit_id not in computing), None)
                if task is None:
                    break
                pending.remove(task)
                sent = _sent(task)
                if sent.return_fit and sent.fit_blob is None:
                    computing.add(task.cell.fit_id)
                running[remote.remote(sent, features_ref, opts.threads)] = task
                if task.cell.cell_id not in retries:
                    sink.started(task)
            # a bounded wait returns to Python every second, so SIGTERM and Ctrl-C are handled while cells run
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                task = running.pop(ref)
                computing.discard(task.cell.fit_id)
                n = retries.setdefault(task.cell.cell_id, 0)
                try:
                    result = _received(task, ray.get(ref))
                except lost as e:
                    why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                    if n < RAY_RETRIES:
                        retries[task.cell.cell_id] = n + 1
                        log(f"run: {task.cell.label} lost its node or worker ({type(e).__name__}); resubmitting "
                            f"({n + 1} of at most {RAY_RETRIES})")
                        pending.insert(0, task)
                        continue
                    result = _crashed(task, f"ray task lost {n + 1} times; last: {why}")
                except Exception as e:  # the task itself failed in Ray (execute() never raises): not resubmitted
                    result = _crashed(task, " ".join(f"ray task failed: {type(e).__name__}: {e}".split())[:500])
                result.retries = n
                sink.finished(task, result)
    finally:
        if started_here:
            ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
