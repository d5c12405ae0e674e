"""Benchmark: FID-ladder generation at Stanford-Online-Products scale (22,634 classes x 1,280-d class means).

The class means are synthetic, shaped like pooled CNN features of SOP (12 super-categories, ReLU of a low-rank signal
plus noise), with a random half split (11,317 / 11,317 classes) as the conventional split.

1. Per-step comparison, same number of steps (`--ref-steps`, one swap per step, harder direction): oodml's walk
   (running sums, moment-based FID) against a straightforward re-implementation of the published ooDML greedy loop
   (`split_maker_with_class_removal`: per step, stack the class means, `np.cov` + `scipy.linalg.sqrtm` with an eps of
   1e-8 for the FID before and after the swap, pairwise distances to both means, tabu of 5). Prints seconds per
   step of both and the ratio.
2. The whole ladder with the default settings (`build_ladder`: both walks, 8 levels, exact level FIDs), timed.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/splits.py [--classes 22634] [--ref-steps 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg

from oodml.features.io import FeatureSet
from oodml.splits.generate import TEST, TRAIN, LadderCfg, PartitionStats, _walk, build_ladder


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


def main() -> None:
    """Run both comparisons and print them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=22634)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--ref-steps", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true", help="only the per-step comparison")
    args = ap.parse_args()
    means = sop_like_means(args.classes, args.dim)
    side = np.zeros(args.classes, dtype=np.int8)
    side[np.random.default_rng(1).permutation(args.classes)[: args.classes // 2]] = TEST
    n_train, n_test = int((side == TRAIN).sum()), int((side == TEST).sum())
    print(f"{args.classes} classes x {args.dim}-d; train {n_train}, test {n_test}", flush=True)

    steps = args.ref_steps
    t0 = time.perf_counter()
    ref = published_loop([m for m in means[side == TRAIN]], [m for m in means[side == TEST]], steps)
    t_ref = (time.perf_counter() - t0) / steps
    cfg = LadderCfg(max_steps=steps, swaps_per_step=1, min_gain=0.0)  # single swaps move the FID by < 0.1% here
    t0 = time.perf_counter()
    centred = means - means.mean(axis=0)
    stats = PartitionStats(centred, side)
    fid0 = stats.fid()
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    moves = _walk(stats, harder=True, floors=(2, 2), cfg=cfg, b0=1, start_fid=fid0)
    t_ours = (time.perf_counter() - t0) / max(len(moves), 1)
    print(f"per step ({steps} steps, 1 swap each): published loop {t_ref:.2f} s, oodml {t_ours:.3f} s "
          f"(+ {t_setup:.1f} s once for the running sums), ratio {t_ref / t_ours:.1f}x; "
          f"start FID published {ref[0]:.4f} / oodml {fid0:.4f}", flush=True)

    if args.skip_full:
        return
    names = np.array([f"p{i:06d}" for i in range(args.classes)])
    fs = FeatureSet(means.astype(np.float32), np.arange(args.classes), names, names, {"dataset": "sop_synthetic"},
                    np.where(side == TRAIN, "train", "test"))
    t0 = time.perf_counter()
    spec = build_ladder(fs, LadderCfg(levels=8, ks=(2,), episodes=1))
    t_full = time.perf_counter() - t0
    gen = spec.extra["generator"]
    print(f"full ladder: {t_full:.1f} s ({t_full / 60:.1f} min); {gen['steps_easier']} easier + {gen['steps_harder']} "
          f"harder steps of up to {gen['swaps_per_step']} swaps; levels FID "
          + ", ".join(f"{lv.fid:.2f}" for lv in spec.levels)
          + "; classes per side " + ", ".join(f"{len(lv.train_classes)}/{len(lv.test_classes)}" for lv in spec.levels))


if __name__ == "__main__":
    main()
