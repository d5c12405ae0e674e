"""Brute-force references written from the definitions, in plain Python loops (GUIDE §6 golden tests)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def loop_neighbours(x: np.ndarray, i: int) -> list[int]:
    """All items but i, ordered by squared Euclidean distance to item i, then by index."""
    n, d = x.shape
    dist = {j: sum((float(x[i, t]) - float(x[j, t])) ** 2 for t in range(d)) for j in range(n) if j != i}
    return sorted(dist, key=lambda j: (dist[j], j))


def loop_retrieval(x: np.ndarray, y: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """Recall@k and MAP@R from their definitions; queries without another item of their class are skipped."""
    recalls: dict[int, list[float]] = {k: [] for k in ks}
    aps: list[float] = []
    excluded = 0
    for i in range(len(x)):
        ranked = loop_neighbours(x, i)
        r = sum(1 for j in ranked if y[j] == y[i])
        if r == 0:
            excluded += 1
            continue
        for k in ks:
            recalls[k].append(1.0 if any(y[j] == y[i] for j in ranked[:k]) else 0.0)
        hits, total = 0, 0.0
        for pos, j in enumerate(ranked[:r], start=1):
            if y[j] == y[i]:
                hits += 1
                total += hits / pos
        aps.append(total / r)
    out = {f"recall@{k}": sum(v) / len(v) for k, v in recalls.items()}
    out["map@r"] = sum(aps) / len(aps)
    out["n_queries"] = len(aps)
    out["n_excluded"] = excluded
    return out


def loop_prototype_accuracy(s: np.ndarray, sy: Sequence[int], q: np.ndarray, qy: Sequence[int]) -> float:
    """Nearest class mean per query (ties: smallest label), from the definition."""
    classes = sorted(set(sy))
    protos = {c: np.mean([s[i] for i in range(len(s)) if sy[i] == c], axis=0) for c in classes}
    correct = 0
    for i in range(len(q)):
        dist = {c: float(((q[i] - protos[c]) ** 2).sum()) for c in classes}
        correct += min(classes, key=lambda c: (dist[c], c)) == qy[i]
    return correct / len(q)


def clustered(n_classes: int, n: int, dim: int, seed: int, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Random clustered data with uneven class sizes (including singletons)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    centers = rng.normal(0.0, spread, size=(n_classes, dim))
    return centers[y] + rng.normal(size=(n, dim)), y
