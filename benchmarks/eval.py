"""Benchmark: oodml.eval.retrieval_metrics vs pytorch-metric-learning's AccuracyCalculator on the same data.

SOP-sized test set (60,502 x 512, ~11.3k classes of ~5 images), random but clustered, L2-normalised. Both run in this
process on the same arrays; the script prints the time ratio (PML / oodml), recall@1 and MAP@R of both, and the peak
resident memory each step added. Then the same for many small episode-sized calls (the runner's per-call overhead).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/eval.py [--n 60502] [--dim 512]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
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


def main() -> None:
    """Run the comparison and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_502)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--mean-class", type=float, default=5.35)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=200, help="small calls for the per-call overhead figure")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; the best time of each is shown")
    args = ap.parse_args()

    import faiss
    import pytorch_metric_learning.utils.accuracy_calculator  # noqa: F401  (imports outside the timings)
    import torch

    from oodml.eval import retrieval_metrics

    x, y = sop_like(args.n, args.dim, args.mean_class, args.seed)
    print(f"data: {x.shape[0]} x {x.shape[1]} float32, {len(np.unique(y))} classes, largest {np.bincount(y).max()}; "
          f"faiss {faiss.__version__}, torch {torch.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")

    runs: list[tuple[Timing, Timing]] = []
    for _ in range(args.repeat):  # interleaved, best of each: waiting on a shared machine inflates wall time
        ours, t_o = timed(lambda: retrieval_metrics(x, y))
        pml, t_p = timed(lambda: pml_metrics(x, y))
        runs.append((t_o, t_p))
    t_ours, t_pml = (Timing(min(r[i].wall for r in runs), min(r[i].cpu for r in runs), max(r[i].peak_mb for r in runs))
                     for i in (0, 1))
    print(f"best of {args.repeat} interleaved run(s):")
    print(f"oodml retrieval_metrics: {t_ours}  knn_k={ours['knn_k']}  recall@1={ours['recall@1']:.6f}  "
          f"map@r={ours['map@r']:.6f}")
    print(f"PML AccuracyCalculator:  {t_pml}  recall@1={pml['recall@1']:.6f}  map@r={pml['map@r']:.6f}")
    diff = {m: abs(ours[m] - pml[m]) for m in ("recall@1", "map@r")}
    print(f"ratio PML / oodml: cpu {t_pml.cpu / t_ours.cpu:.2f}x, wall {t_pml.wall / t_ours.wall:.2f}x; "
          f"|diff| recall@1 {diff['recall@1']:.1e}, map@r {diff['map@r']:.1e}")
    print(f"oodml result: {ours}")

    # the runner's case: many calls on episode-sized query sets
    ex, ey = sop_like(500, args.dim, 5.0, args.seed + 1)
    _, small = timed(lambda: [retrieval_metrics(ex, ey) for _ in range(args.episodes)])
    _, small_pml = timed(lambda: [pml_metrics(ex, ey) for _ in range(args.episodes)])
    print(f"per call on 500 x {args.dim} ({args.episodes} calls): oodml cpu {small.cpu / args.episodes * 1e3:.2f} ms, "
          f"PML cpu {small_pml.cpu / args.episodes * 1e3:.2f} ms (ratio {small_pml.cpu / small.cpu:.1f}x)")

if __name__ == "__main__":
    main()
