"""Run one cell: fit the method on the level's source classes once (or load the fit from the cache), then evaluate
zero-shot retrieval on all test images (k = 0) and k-shot episodes (k > 0).

This is what a worker process or a Ray task executes; it writes nothing but the fit cache and returns a
`CellResult` (numbers, where it ran, no other provenance) that the parent turns into the cell file. A Ray task
writes no file at all: it gets its source fit as bytes with the task (`CellTask.fit_blob`) and returns a fit it
computed with its result (`CellResult.fit_blob`), which the driver checks like a cache file and stores
(`store_fit_blob`), so `adapted_X` on one node reuses `X` fitted on another (docs/cluster.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import resource
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oodml.config import canonical_json
from oodml.eval.protocol import ClassValue, EpisodeValue, MetricRow, contiguous
from oodml.io import atomic_write
from oodml.progress import log
from oodml.runner.plan import Cell
from oodml.seeding import derive_seed, seed_everything
from oodml.splits.levels import LevelData


@dataclass
class CellTask:
    """Everything a worker needs to run one cell besides the features (sent once per worker)."""

    cell: Cell
    level: LevelData
    overrides: dict[str, Any]
    plugins: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int = 1
    fit_cache: str | None = None
    refit: bool = False
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    #: the source fit as `torch.save` bytes (a Ray task on another node: the driver's cache entry travels with it)
    fit_blob: bytes | None = None
    #: return a fit computed here with the result (`CellResult.fit_blob`) instead of writing it to `fit_cache`
    return_fit: bool = False


@dataclass
class CellResult:
    """Aggregated metrics (one dict per variant x k x metric), per-episode values (k > 0), per-class values (k = 0),
    status and resources."""

    cell_id: str
    status: str
    error: str | None = None
    traceback: str | None = None
    metrics: list[MetricRow] = field(default_factory=list)
    episodes: list[EpisodeValue] = field(default_factory=list)
    classes: list[ClassValue] = field(default_factory=list)
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    peak_mem_mb: float | None = None
    fit_cached: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # e.g. the adaptation settings per k
    #: where it ran: the machine, the Ray node (None outside Ray), how often it was resubmitted after losing its
    #: node or worker process, and the torch device it used (None: the plan's)
    hostname: str | None = None
    node_id: str | None = None
    retries: int = 0
    device: str | None = None
    #: a source fit computed by a task with `return_fit`, as `torch.save` bytes (the driver stores it, then drops it)
    fit_blob: bytes | None = None


def execute(task: CellTask, features: Any) -> CellResult:
    """Run one cell on `features` (a FeatureSet); an exception becomes a result with status `error`."""
    t0, c0 = time.perf_counter(), time.process_time()
    _reset_peak_rss()
    try:
        metrics, episodes, classes, cached, training, blob = _evaluate(task, features)
        statuses = {m.status for m in metrics}
        status = "skipped" if statuses == {"skipped"} else "ok"
        result = CellResult(task.cell.cell_id, status, metrics=metrics, episodes=episodes, classes=classes,
                            fit_cached=cached, training=training, fit_blob=blob)
    except Exception as e:  # one failing cell must not stop the grid
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        result = CellResult(task.cell.cell_id, "error", error=msg, traceback=traceback.format_exc())
    result.wall_time_s = round(time.perf_counter() - t0, 3)
    result.cpu_time_s = round(time.process_time() - c0, 3)
    result.peak_mem_mb = _peak_rss_mb()
    result.hostname, result.device = socket.gethostname(), task.device
    return result


def warm_up(plugins: tuple[str, ...] = ()) -> None:
    """Import what cells use (methods, plugins, the metrics' lazy imports: faiss, sklearn, PML) so that the first
    cell's wall time is its own."""
    from oodml import eval as ev
    from oodml import methods as api

    api.load_plugins(plugins)
    seed_everything(0)  # its first call imports torch._inductor (seconds)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.repeat(np.arange(4), 2)
    ev.retrieval_metrics(x, y)
    ev.nmi(x, y, seed=0)
    ev.prototype_accuracy(x[::2], y[::2], x[1::2], y[1::2])
    try:
        import pytorch_metric_learning.losses  # noqa: F401
    except ImportError:  # pragma: no cover - a declared dependency
        pass


def set_threads(n: int) -> None:
    """Limit torch (and faiss) to `n` threads in this process, so parallel workers don't oversubscribe cores."""
    import torch

    torch.set_num_threads(max(1, n))
    try:
        import faiss

        faiss.omp_set_num_threads(max(1, n))
    except ImportError:  # pragma: no cover - faiss is a declared dependency
        pass


def _evaluate(task: CellTask, fs: Any) -> tuple[list[MetricRow], list[EpisodeValue], list[ClassValue], bool,
                                                dict[str, Any], bytes | None]:
    from oodml import methods as api
    from oodml.eval.protocol import EvalData, EvalSeeds, contiguous, evaluate
    from oodml.methods.base import MethodContext

    api.load_plugins(task.plugins)
    cell, lv = task.cell, task.level
    dataset = None
    if cell.regime == "full":
        from oodml.data import load_dataset

        dataset = load_dataset(cell.dataset, task.data_root, **task.dataset_options)

    def inputs(rows: np.ndarray) -> Any:
        return api.make_inputs(cell.regime, features=fs, rows=rows, dataset=dataset, backbone=cell.backbone)

    seed_key = canonical_json(cell.seed_key())
    fit_seed = derive_seed("fit", seed_key)
    ctx = MethodContext(regime=cell.regime, in_dim=int(fs.features.shape[1]), backbone=cell.backbone,
                        device=task.device, seed=fit_seed % 2**32)

    def build() -> Any:
        seed_everything(fit_seed)
        return api.build_method(cell.method, ctx, task.overrides)

    method, cached, blob = _fitted(build, inputs, lv, fs.labels, task)
    data = EvalData(labels=fs.labels, test_rows=lv.test_rows, supports=lv.supports, class_names=fs.class_names,
                    max_queries=cell.queries, query_key=f"{cell.split_hash}:L{cell.level}")
    seeds = EvalSeeds(metric_key=seed_key, adapt_key=cell.cell_id)
    metrics, episodes, classes = evaluate(method, inputs, data, cell.shots, seeds)
    adaptation = {str(k): r for k in cell.shots if k > 0 and (r := method.adaptation_record(k))}
    training = {"fit": method.fit_record()} if method.fit_record() else {}
    return (metrics, episodes, classes, cached, ({**training, "adaptation": adaptation} if adaptation else training),
            blob)


def _fitted(build: Callable[[], Any], inputs: Callable[[np.ndarray], Any], lv: LevelData, labels: np.ndarray,
            task: CellTask) -> tuple[Any, bool, bytes | None]:
    """A freshly built method fitted on the level's source rows, or restored from the fit cache (True when it was),
    and the fit's bytes when the task returns its fit (`return_fit`). A method that selects its checkpoint on
    validation classes (`select=val`) fits without the level's validation rows and scores them while it trains.

    The cache holds tensors and plain values only and is read with `torch.load(weights_only=True)`, so a planted
    file cannot run code; an unreadable, foreign or stale entry is refitted (from a freshly built method, as
    without a cache) with a one-line note, and overwritten. A fit that came with the task (`fit_blob`) is read
    the same way.
    """
    import torch

    method = build()
    path = Path(task.fit_cache) / f"{task.cell.fit_id}.pt" if task.fit_cache else None
    source: Any = io.BytesIO(task.fit_blob) if task.fit_blob is not None else path
    where = "sent with the task" if task.fit_blob is not None else str(path)
    if source is not None and (task.fit_blob is not None or source.is_file()) and not task.refit:
        try:
            if task.fit_blob is None:
                check_fit_record(source)
            method.load_state_dict(_load_state(source, task.device))
            return method, True, None
        except Exception as e:  # noqa: BLE001 -- any unusable entry is refitted
            why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            log(f"note: fit cache {where} is unreadable or stale ({why}); fitting again")
            method = build()
    # the source inputs are built only when fitting (a cached fit needs none of them)
    rows = lv.train_rows
    if getattr(method, "selects_on_val", False) and len(lv.val_rows):  # hold the validation classes out
        rows = lv.train_rows[~np.isin(lv.train_rows, lv.val_rows)]
        method.fit(inputs(rows), contiguous(labels[rows]), val=(inputs(lv.val_rows), labels[lv.val_rows]))
    else:
        method.fit(inputs(rows), contiguous(labels[rows]))
    state = method.state_dict() if path is not None or task.return_fit else None
    if not state:
        return method, False, None
    buf = io.BytesIO()
    torch.save(state, buf)
    if task.return_fit:  # a Ray task: the driver stores it (`store_fit_blob`)
        return method, False, buf.getvalue()
    assert path is not None
    write_fit(buf.getvalue(), path)
    return method, False, None


def _load_state(source: Any, device: str) -> dict[str, Any]:
    """A fit's state dict from a path or a file object, read with `weights_only=True` (tensors and plain values,
    no code); ValueError when it is not a non-empty dict."""
    import torch

    state = torch.load(source, map_location=device, weights_only=True)
    if not isinstance(state, dict) or not state:
        raise ValueError("not a state dict")
    return state


def store_fit_blob(blob: bytes, path: Path) -> bool:
    """Store a fit that a Ray task returned as the fit-cache entry `path`, after the checks a cache entry gets when
    it is read (`weights_only` load, a non-empty dict); returns False (and stores nothing) when it fails them."""
    try:
        _load_state(io.BytesIO(blob), "cpu")
    except Exception as e:  # noqa: BLE001 -- a bad fit is not stored; the cell's numbers are still stored
        log(f"note: the fit returned for {path.name} failed the fit-cache checks "
            f"({' '.join(f'{type(e).__name__}: {e}'.split())[:200]}); not stored")
        return False
    write_fit(blob, path)
    return True


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_fit(blob: bytes, path: Path) -> None:
    """Store a fit-cache entry and its record `<entry>.json` (the fit id it was written for and the sha256 of its
    bytes), each in one atomic step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(blob)
    record = {"fit_id": path.stem, "sha256": hashlib.sha256(blob).hexdigest()}
    with atomic_write(_record_path(path)) as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def check_fit_record(path: Path) -> None:
    """ValueError when the entry's record names another fit or other bytes (an entry replaced or copied from
    another name after it was written); an entry without a record (written before records existed) passes."""
    record_path = _record_path(path)
    if not record_path.is_file():
        return
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise ValueError(f"its record {record_path.name} is unreadable") from None
    if not isinstance(record, dict) or record.get("fit_id") != path.stem:
        raise ValueError(f"its record {record_path.name} names another fit")
    if record.get("sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        raise ValueError("its content differs from the sha256 recorded when it was written")


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter for this process (Linux); elsewhere the lifetime peak is reported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    """Peak resident memory since `_reset_peak_rss` (VmHWM), else the process's lifetime peak, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (OSError, ValueError):  # pragma: no cover
        return None
