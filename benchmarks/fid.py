"""Benchmark: oodml's Fréchet distance against the textbook `scipy.linalg.sqrtm` formula on the same class means.

Shapes (classes per side x dimensions): 100 x 2048 (ResNet-50 features, fewer classes than dims: nuclear-norm route),
1000 x 1280 and 5000 x 1280 (EfficientNet-Lite0; the last has more classes than dims: Cholesky/eigen route). The
class means are synthetic but shaped like pooled CNN features (non-negative, a few strong directions plus noise),
with a shifted second set. For each shape the script prints the time of both, the ratio sqrtm / oodml, the relative
difference, and each one's value for a set against itself (exactly 0; `frechet_distance` returns 0.0 by
comparing the sets, so the column shows its arithmetic without that shortcut), all in this one process.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/fid.py [--shapes 100x2048,1000x1280,5000x1280]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg

from oodml.splits.frechet import frechet_distance, frechet_from_moments, moments_of


def class_means(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """n synthetic class means in d dims: ReLU of a rank-64 signal plus noise (like pooled CNN features)."""
    g = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).normal(size=(64, d)) / 8
    latent = g.normal(shift, 1.0, size=(n, 64)) * np.linspace(2.0, 0.2, 64)
    return np.maximum(latent @ basis + g.normal(0.0, 0.3, size=(n, d)), 0.0)


def sqrtm_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula: full D x D covariances and `scipy.linalg.sqrtm` of their product (real part), no eps."""
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb)
    return float((ma - mb) @ (ma - mb) + np.trace(ca) + np.trace(cb) - 2 * np.trace(np.real(root)))


def timed(fn, *args):  # type: ignore[no-untyped-def]
    """(result, seconds)."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    """Run the comparison for every shape and print one row each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="100x2048,1000x1280,5000x1280")
    args = ap.parse_args()
    print(f"{'shape':>11} {'sqrtm s':>9} {'oodml s':>9} {'ratio':>8} {'rel diff':>9} {'self sqrtm':>11} "
          f"{'self oodml':>10}")
    for shape in args.shapes.split(","):
        n, d = (int(x) for x in shape.split("x"))
        a, b = class_means(n, d, seed=0), class_means(n, d, seed=1, shift=0.3)
        frechet_distance(a[:10], b[:10])  # warm up BLAS
        ours, t_ours = timed(frechet_distance, a, b)
        ref, t_ref = timed(sqrtm_fid, a, b)
        self_ref = sqrtm_fid(a, a)
        self_ours = frechet_from_moments(moments_of(a), moments_of(a))  # the arithmetic, without the shortcut
        print(f"{shape:>11} {t_ref:9.3f} {t_ours:9.4f} {t_ref / t_ours:7.1f}x {abs(ours - ref) / abs(ref):9.2e} "
              f"{self_ref:11.2e} {self_ours:10.2e}   (fid {ours:.6g})", flush=True)


if __name__ == "__main__":
    main()
