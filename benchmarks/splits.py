"""Benchmark: FID-ladder generation at Stanford-Online-Products scale (22,634 classes x 1,280-d class means).

The class means are synthetic, shaped like pooled CNN features of SOP (12 super-categories, ReLU of a low-rank signal
plus noise), with a random half split (11,317 / 11,317 classes) as the conventional split. Everything runs in this
one process, on one BLAS thread, so the ratios compare like with like; the load average is printed before and after
(other processes on the machine slow every part alike only roughly: rerun on quiet cores for the figures).

1. Per step, one swap per step, harder direction: a straightforward re-implementation of the published ooDML greedy
   loop (`split_maker_with_class_removal`: per step, stack the class means, `np.cov` + `scipy.linalg.sqrtm` with an
   eps of 1e-8 for the FID before and after the swap, pairwise distances to both means, tabu of 5; `--ref-steps`
   steps), today's search (`PartitionStats`, running sums and one dense FID per proposal; `--legacy-steps`) and the
   new one (`FastPartitionStats`: low-rank FID updates from a joint eigen-decomposition, refreshed as the moves pile
   up, which is counted in its steps; `--steps`). Both oodml searches must take the same swaps.
2. The whole ladder with the default settings (`build_ladder`: both walks, 8 levels, exact level FIDs), new and (unless
   `--skip-legacy-full`) today's search: seconds, seconds in published-loop steps, the ratio, and whether the swaps
   are the same and how far the FIDs differ.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/splits.py [--classes 22634] [--ref-steps 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.linalg

from oodml.features.io import FeatureSet
from oodml.splits.frechet import one_blas_thread
from oodml.splits.generate import TEST, TRAIN, FastPartitionStats, LadderCfg, Move, PartitionStats, _walk, build_ladder


def sop_like_means(n: int, d: int, seed: int = 0) -> np.ndarray:
    """n synthetic class means: 12 super-category centres + a rank-32 per-class signal + noise, ReLU'd."""
    g = np.random.default_rng(seed)
    centres = g.normal(0.0, 1.0, size=(12, d)) / 4
    basis = g.normal(size=(32, d)) / 6
    sup = g.integers(0, 12, size=n)
    return np.maximum(centres[sup] + g.normal(size=(n, 32)) @ basis + g.normal(0.0, 0.25, size=(n, d)), 0.0)


def published_fid(train: np.ndarray, test: np.ndarray, eps: float = 1e-8) -> float:
    """The ooDML `metric_fid`: covariances, eps on the diagonals, sqrtm of the product, real part."""
    mu_tr, mu_ts = train.mean(axis=0), test.mean(axis=0)
    cov_tr, cov_ts = np.cov(train, rowvar=False), np.cov(test, rowvar=False)
    off = np.eye(len(cov_ts)) * eps
    covmean = scipy.linalg.sqrtm((cov_tr + off) @ (cov_ts + off)).real
    diff = mu_tr - mu_ts
    return float(diff @ diff + np.trace(cov_tr) + np.trace(cov_ts) - 2 * np.trace(covmean))


def published_loop(train: list[np.ndarray], test: list[np.ndarray], steps: int, history: int = 5) -> list[float]:
    """`steps` iterations of the published greedy swap loop with class removal (one swap per iteration)."""
    tr_hist: list[int] = []
    te_hist: list[int] = []
    fids = []
    for _ in range(steps):
        fid = published_fid(np.stack(train), np.stack(test))
        fids.append(fid)
        tr_mean, te_mean = np.mean(train, axis=0), np.mean(test, axis=0)
        tr, te = np.stack(train), np.stack(test)
        tr_score = np.linalg.norm(tr - te_mean, axis=1) - np.linalg.norm(tr - tr_mean, axis=1)
        te_score = np.linalg.norm(te - tr_mean, axis=1) - np.linalg.norm(te - te_mean, axis=1)
        i = next(int(j) for j in np.argsort(tr_score) if j not in tr_hist[-history:])
        j = next(int(k) for k in np.argsort(te_score) if k not in te_hist[-history:])
        tr_hist.append(i)
        te_hist.append(j)
        old_train, old_test = list(train), list(test)
        train[i], test[j] = test[j], train[i]
        if published_fid(np.stack(train), np.stack(test)) >= fid:  # as published: revert and remove instead
            train, test = old_train, old_test
            del train[i]
            del test[j]
    return fids


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _timed_walk(cls: type[PartitionStats], centred: np.ndarray, side: np.ndarray,
                steps: int) -> tuple[list[Move], float]:
    """`steps` accepted single swaps of the harder walk; (moves, seconds per step, setup excluded)."""
    stats = cls(centred, side)
    fid0 = stats.fid()
    cfg = LadderCfg(max_steps=steps, swaps_per_step=1, min_gain=0.0)  # single swaps move the FID by < 0.1% here
    t0 = time.perf_counter()
    moves = _walk(stats, harder=True, floors=(2, 2), cfg=cfg, b0=1, start_fid=fid0)
    return moves, (time.perf_counter() - t0) / max(len(moves), 1)


def _same(a: list[Move], b: list[Move]) -> tuple[bool, float]:
    """(same swaps, largest relative FID difference)."""
    same = len(a) == len(b) and all(np.array_equal(x.idx, y.idx) and np.array_equal(x.to, y.to) for x, y in zip(a, b))
    return same, max((abs(x.fid - y.fid) / abs(x.fid) for x, y in zip(a, b)), default=0.0)


def main() -> None:
    """Run both comparisons and print them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=22634)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--ref-steps", type=int, default=3, help="steps of the published loop")
    ap.add_argument("--legacy-steps", type=int, default=10, help="steps of today's search (PartitionStats)")
    ap.add_argument("--steps", type=int, default=40, help="steps of the new search (FastPartitionStats)")
    ap.add_argument("--skip-full", action="store_true", help="only the per-step comparison")
    ap.add_argument("--skip-legacy-full", action="store_true", help="time only the new search's whole ladder")
    args = ap.parse_args()
    print(_load(), flush=True)
    means = sop_like_means(args.classes, args.dim)
    side = np.zeros(args.classes, dtype=np.int8)
    side[np.random.default_rng(1).permutation(args.classes)[: args.classes // 2]] = TEST
    n_train, n_test = int((side == TRAIN).sum()), int((side == TEST).sum())
    print(f"{args.classes} classes x {args.dim}-d; train {n_train}, test {n_test}", flush=True)

    t0 = time.perf_counter()
    ref = published_loop([m for m in means[side == TRAIN]], [m for m in means[side == TEST]], args.ref_steps)
    t_ref = (time.perf_counter() - t0) / args.ref_steps
    centred = means - means.mean(axis=0)
    with one_blas_thread():
        fast, t_fast = _timed_walk(FastPartitionStats, centred, side, args.steps)
        legacy, t_legacy = _timed_walk(PartitionStats, centred, side, args.legacy_steps)
    same, rel = _same(legacy, fast[: len(legacy)])
    print(f"per step (1 swap each): published loop {t_ref:.2f} s ({args.ref_steps} steps), today's search "
          f"{t_legacy:.3f} s ({len(legacy)} steps), new search {t_fast:.4f} s ({len(fast)} steps, base refreshes "
          f"included); new vs published {t_ref / t_fast:.1f}x (goal >= 50x), new vs today {t_legacy / t_fast:.1f}x, "
          f"today vs published {t_ref / t_legacy:.1f}x; same swaps as today: {same}, largest FID difference {rel:.1e} "
          f"relative; start FID published {ref[0]:.4f}; {_load()}", flush=True)

    if args.skip_full:
        return
    names = np.array([f"p{i:06d}" for i in range(args.classes)])
    # two identical "images" per class (their mean is the class mean exactly), so that 1-shot episodes have a query
    fs = FeatureSet(np.repeat(means.astype(np.float32), 2, axis=0), np.repeat(np.arange(args.classes), 2), names,
                    np.array([f"{c}/{j}" for c in names for j in range(2)]), {"dataset": "sop_synthetic"},
                    np.where(side == TRAIN, "train", "test"))
    specs, seconds = {}, {}
    for name in ("new", "today") if not args.skip_legacy_full else ("new",):
        t0 = time.perf_counter()
        specs[name] = build_ladder(fs, LadderCfg(levels=8, ks=(1,), episodes=1), fast=name == "new")
        seconds[name] = time.perf_counter() - t0
        spec = specs[name]
        gen = spec.extra["generator"]
        print(f"full ladder, {name}'s search: {seconds[name]:.1f} s = {seconds[name] / t_ref:.2f} published-loop steps"
              + (" (goal <= 7)" if name == "new" else "")
              + f"; {gen['steps_easier']} easier + {gen['steps_harder']} harder steps of up to "
              f"{gen['swaps_per_step']} swaps; levels FID " + ", ".join(f"{lv.fid:.2f}" for lv in spec.levels)
              + "; classes per side " + ", ".join(f"{len(lv.train_classes)}/{len(lv.test_classes)}"
                                                  for lv in spec.levels) + f"; {_load()}", flush=True)
    if "today" in specs:
        a, b = specs["new"], specs["today"]
        same_classes = all(x.train_classes == y.train_classes and x.test_classes == y.test_classes
                           for x, y in zip(a.levels, b.levels))
        rel = max(abs(x.fid - y.fid) / y.fid for x, y in zip(a.levels, b.levels))
        print(f"full ladder, new vs today: {seconds['today'] / seconds['new']:.2f}x; same levels (classes): "
              f"{same_classes}, largest level FID difference {rel:.1e} relative, same file bytes: "
              f"{a.dumps() == b.dumps()}", flush=True)


if __name__ == "__main__":
    main()
