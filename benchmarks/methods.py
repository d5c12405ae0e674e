"""Head-regime cost per method on CUB-sized synthetic features: fit on 5,900 x 1,280 source features (100 classes),
then 10 k-shot episodes on 100 target classes (adapt when the method uses the support, embed support + queries).

Prints, per method, the fit and the 10-episode times and their ratios to a reference run in the same process: a bare
Adam loop training Linear(1280 -> 128) on a mean-squared loss for the same iterations and batch size (the least
a head method can cost). Timings are CPU wall time; compare ratios across machines, not seconds.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/methods.py [--method 'adapted_*'] [--k 5] [--episodes 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from oodml.features.io import FeatureSet
from oodml.methods import METHODS, MethodContext, build_method, make_inputs, method_params, resolve_methods


def synthetic_features(n_classes: int, per_class: int, dim: int, seed: int) -> FeatureSet:
    """Class-clustered non-negative features (like pooled CNN features), rows sorted by path."""
    rng = np.random.default_rng(seed)
    centers = rng.gamma(1.0, 1.0, size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    feats = np.maximum(centers[labels] + rng.normal(0, 0.8, size=(len(labels), dim)), 0)
    names = np.array([f"c{i:03d}" for i in range(n_classes)])
    paths = np.array([f"{names[c]}/{j:03d}" for c in range(n_classes) for j in range(per_class)])
    return FeatureSet(feats.astype(np.float32), labels, names, paths, {"dataset": "synthetic"})


def reference_loop(x: torch.Tensor, iterations: int, batch_size: int, seed: int = 0) -> float:
    """Seconds for a bare Adam loop on Linear(D -> 128) with an MSE loss (the reference cost)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], 128)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    t = time.perf_counter()
    for _ in range(iterations):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        loss = head(x[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    """Run the benchmark and print one line per method."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="*", help="method names/patterns, comma-separated (default: all)")
    ap.add_argument("--k", type=int, default=5, help="shots per target class")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--param", action="append", default=[], help="override, e.g. iterations=100")
    args = ap.parse_args()
    overrides: dict[str, object] = {}
    for item in args.param:
        key, value = item.split("=", 1)
        overrides[key] = float(value) if "." in value or "e" in value else int(value)
    torch.set_num_threads(1)
    import pytorch_metric_learning.losses  # noqa: F401  (imported lazily by oodml; keep it out of the timings)
    src = synthetic_features(100, 59, args.dim, seed=0)  # 5,900 source images
    tgt = synthetic_features(100, 30, args.dim, seed=1)  # 100 target classes
    xs = make_inputs("head", features=src, rows=np.arange(len(src.labels)))
    src_x = torch.from_numpy(src.features)
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(args.episodes):
        sup = np.concatenate([rng.choice(np.flatnonzero(tgt.labels == c), args.k, replace=False) for c in range(100)])
        episodes.append((sup, np.setdiff1d(np.arange(len(tgt.labels)), sup)))
    print(f"source {src.features.shape}, target 100 classes x 30, k={args.k}, {args.episodes} episodes, 1 thread")
    print(f"{'method':32s} {'fit_s':>8s} {'fit/ref':>8s} {'episodes_s':>11s} {'ep/ref':>8s}")
    for spec in resolve_methods(args.method):
        ov = {k: v for k, v in overrides.items() if k in method_params(spec)}
        p = method_params(spec, ov)
        iters, bs = int(p.get("iterations", 0)), int(p.get("batch_size", 64))
        ref_fit = reference_loop(src_x, max(iters, 1), bs)
        ref_ep = reference_loop(src_x, max(int(p.get("adapt_iterations", 0)), 1) * args.episodes, bs)
        adapts = METHODS.info(spec.split("+")[0]).uses_support
        m = build_method(spec, MethodContext(in_dim=args.dim, seed=0), ov)
        t = time.perf_counter()
        m.fit(xs, src.labels)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        for sup, qry in episodes:
            model = m.adapt(make_inputs("head", features=tgt, rows=sup), tgt.labels[sup]) if adapts else m
            model.embed_variants(make_inputs("head", features=tgt, rows=np.concatenate([sup, qry])))
        ep_s = time.perf_counter() - t
        fit_ratio = f"{fit_s / ref_fit:8.1f}" if iters and spec != "baseline" else f"{'-':>8s}"
        ep_ratio = f"{ep_s / ref_ep:8.1f}" if adapts else f"{'-':>8s}"
        print(f"{spec:32s} {fit_s:8.2f} {fit_ratio} {ep_s:11.2f} {ep_ratio}", flush=True)


if __name__ == "__main__":
    main()
