"""Batch samplers: row indices of the next training batch, drawn from an explicit numpy Generator (every sampler takes an explicit numpy Generator)."""

from __future__ import annotations

import numpy as np


def classes_batch(y: np.ndarray, chosen: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to `per_class` distinct random images of each class in `chosen`, laid out class by class in
    the order of `chosen`, shuffled within a class.

    One random key per row and one sort instead of a loop of per-class draws (~10x faster at 100 classes).
    """
    order = np.lexsort((rng.random(len(y)), y))  # grouped by class, random within a class
    classes, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    pos = np.searchsorted(classes, chosen)
    take = np.minimum(counts[pos], per_class)
    first = np.repeat(starts[pos], take)
    within = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    return order[first + within]


def balanced_batch(y: np.ndarray, batch_size: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a class-balanced batch: `batch_size // per_class` classes, up to `per_class` images of each."""
    classes = np.unique(y)
    n_cls = min(len(classes), max(1, batch_size // per_class))
    return classes_batch(y, rng.choice(classes, size=n_cls, replace=False), per_class, rng)


def episode_batch(y: np.ndarray, ways: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of an episode laid out class by class: `ways` classes, up to `per_class` shuffled images each."""
    classes = np.unique(y)
    return classes_batch(y, rng.choice(classes, size=min(ways, len(classes)), replace=False), per_class, rng)
