"""Benchmark: oodml.eval.retrieval_metrics vs pytorch-metric-learning's AccuracyCalculator on the same data.

SOP-sized test set (60,502 x 512, ~11.3k classes of ~5 images), random but clustered, L2-normalised. In one process
on the same arrays, interleaved and repeated: oodml as it runs by default (self-retrieval by symmetric blocks,
`oodml.eval.knn.symmetric_self_knn`), oodml's previous path (faiss IndexFlatL2 for every query batch) and PML. It
prints the CPU and wall time ratios (PML / oodml, previous / oodml), the load average, recall@1 and MAP@R of all
three, whether oodml's per-query values and neighbour lists equal the previous path's, and the peak resident memory
each step added. Then the same for many small episode-sized calls (the runner's per-call overhead).

    .venv/bin/python benchmarks/eval.py [--n 60502] [--dim 512] [--threads 1] [--repeat 2]
"""

from __future__ import annotations

import argparse
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np


class PeakRss:
    """Samples the process's resident memory (VmRSS) in a thread; `peak_mb` is the peak above the start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.base, self.peak = interval, _rss_kb(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kb())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_kb())

    @property
    def peak_mb(self) -> float:
        """Peak resident memory above the level at entry, in MiB."""
        return (self.peak - self.base) / 1024


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sop_like(n: int, dim: int, mean_class: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n L2-normalised embeddings in classes of 2..(2*mean_class - 2) items with per-class noise levels."""
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(2, int(2 * mean_class) - 1)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 2:
        last = sizes.pop()
        sizes[-1] += last
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centers = rng.normal(size=(len(sizes), dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    noise = rng.uniform(0.05, 0.12, size=len(sizes)).astype(np.float32)[labels, None]
    x = centers[labels] + noise * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return np.ascontiguousarray(x[perm]), labels[perm]


@dataclass
class Timing:
    """Wall-clock and process CPU seconds of one call, and the peak resident memory it added."""

    wall: float
    cpu: float
    peak_mb: float

    def __str__(self) -> str:
        return f"wall {self.wall:8.2f} s  cpu {self.cpu:8.2f} s  peak +{self.peak_mb:7.1f} MiB"


def timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    """(result, timing) of one call. CPU time is the fair figure on a shared machine; wall time includes waiting."""
    with PeakRss() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, Timing(wall, cpu, mem.peak_mb)


def pml_metrics(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """precision_at_1 (= recall@1) and MAP@R from PML's AccuracyCalculator, k = largest class."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    out = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y), ref_includes_query=True)
    return {"recall@1": float(out["precision_at_1"]), "map@r": float(out["mean_average_precision_at_r"])}


@contextmanager
def previous_path() -> Iterator[None]:
    """oodml's kNN as before the symmetric blocks: the faiss backend searches IndexFlatL2 for every query batch."""
    knn_module: Any = importlib.import_module("oodml.eval.knn")  # the package attribute `oodml.eval.knn` is a function
    saved = knn_module.SYMMETRIC_MIN_ROWS
    knn_module.SYMMETRIC_MIN_ROWS = 1 << 62
    try:
        yield
    finally:
        knn_module.SYMMETRIC_MIN_ROWS = saved


def best(timings: list[Timing]) -> Timing:
    """The fastest wall and CPU time of repeated runs (waiting on a shared machine only adds time), the largest peak."""
    return Timing(min(t.wall for t in timings), min(t.cpu for t in timings), max(t.peak_mb for t in timings))


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    """Run the comparison and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_502)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--mean-class", type=float, default=5.35)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="faiss/BLAS/torch threads (default 1)")
    ap.add_argument("--episodes", type=int, default=200, help="small calls for the per-call overhead figure")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; the best time of each is shown")
    args = ap.parse_args()

    import faiss
    import pytorch_metric_learning.utils.accuracy_calculator  # noqa: F401  (imports outside the timings)
    import torch
    from threadpoolctl import threadpool_limits

    from oodml.eval import knn, retrieval_metrics
    from oodml.eval.retrieval import retrieval_per_query

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    x, y = sop_like(args.n, args.dim, args.mean_class, args.seed)
    print(f"data: {x.shape[0]} x {x.shape[1]} float32, {len(np.unique(y))} classes, largest {np.bincount(y).max()}; "
          f"faiss {faiss.__version__}, torch {torch.__version__}, {faiss.omp_get_max_threads()} OpenMP threads; "
          f"{load()}", flush=True)

    def previous() -> Any:
        with previous_path():
            return retrieval_per_query(x, y)

    steps: dict[str, Callable[[], Any]] = {"oodml": lambda: retrieval_per_query(x, y), "previous": previous,
                                           "PML": lambda: pml_metrics(x, y)}
    times: dict[str, list[Timing]] = {name: [] for name in steps}
    out: dict[str, Any] = {}
    for rep in range(args.repeat):  # interleaved: a busy spell on the shared machine hits every step alike
        for name, fn in steps.items():
            out[name], t = timed(fn)
            times[name].append(t)
            print(f"  run {rep + 1} {name:8s} {t}  {load()}", flush=True)
    t_new, t_prev, t_pml = (best(times[name]) for name in steps)
    new, prev = out["oodml"].summary(), out["previous"].summary()
    pml = out["PML"]
    print(f"best of {args.repeat} interleaved run(s), {load()}:")
    print(f"oodml (symmetric blocks): {t_new}  knn_k={new['knn_k']}  recall@1={new['recall@1']:.6f}  "
          f"map@r={new['map@r']:.6f}")
    print(f"oodml previous (faiss):   {t_prev}  recall@1={prev['recall@1']:.6f}  map@r={prev['map@r']:.6f}")
    print(f"PML AccuracyCalculator:   {t_pml}  recall@1={pml['recall@1']:.6f}  map@r={pml['map@r']:.6f}")
    same_values = bool(np.array_equal(out["oodml"].values, out["previous"].values))
    new_nb = knn(x, new["knn_k"])
    with previous_path():
        prev_nb = knn(x, new["knn_k"])
    differ = int((new_nb.indices != prev_nb.indices).any(axis=1).sum())
    diff = {m: abs(new[m] - pml[m]) for m in ("recall@1", "map@r")}
    print(f"ratio PML / oodml: cpu {t_pml.cpu / t_new.cpu:.2f}x, wall {t_pml.wall / t_new.wall:.2f}x; "
          f"|diff| recall@1 {diff['recall@1']:.1e}, map@r {diff['map@r']:.1e}")
    print(f"ratio previous / oodml: cpu {t_prev.cpu / t_new.cpu:.2f}x, wall {t_prev.wall / t_new.wall:.2f}x; "
          f"per-query values identical: {same_values}; neighbour lists that differ: {differ} of {len(x)}")
    print(f"memory: oodml +{t_new.peak_mb:.0f} MiB, previous +{t_prev.peak_mb:.0f} MiB, PML +{t_pml.peak_mb:.0f} MiB "
          f"(oodml / PML = {t_new.peak_mb / max(t_pml.peak_mb, 1e-9):.3f})")
    print(f"oodml result: {new}")

    # the runner's case: many calls on episode-sized query sets
    ex, ey = sop_like(500, args.dim, 5.0, args.seed + 1)
    _, small = timed(lambda: [retrieval_metrics(ex, ey) for _ in range(args.episodes)])
    _, small_pml = timed(lambda: [pml_metrics(ex, ey) for _ in range(args.episodes)])
    print(f"per call on 500 x {args.dim} ({args.episodes} calls): oodml cpu {small.cpu / args.episodes * 1e3:.2f} ms, "
          f"PML cpu {small_pml.cpu / args.episodes * 1e3:.2f} ms (ratio {small_pml.cpu / small.cpu:.1f}x); {load()}")


if __name__ == "__main__":
    main()
