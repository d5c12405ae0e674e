"""Batch samplers of the trainer: class-balanced batches and class-by-class episodes."""

from __future__ import annotations

import numpy as np

from oodml.methods.batches import balanced_batch, classes_batch, episode_batch


def test_classes_batch_lays_out_distinct_members_class_by_class() -> None:
    y = np.array([3, 1, 3, 2, 1, 3, 3, 2, 1, 5])
    chosen = np.array([3, 5, 1])
    idx = classes_batch(y, chosen, 2, np.random.default_rng(0))
    assert len(set(idx.tolist())) == len(idx)
    assert y[idx].tolist() == [3, 3, 5, 1, 1]  # class 5 has one image only
    # every member of a class is drawn eventually, each equally often
    counts = np.zeros(len(y))
    rng = np.random.default_rng(1)
    for _ in range(3000):
        np.add.at(counts, classes_batch(y, np.array([3]), 1, rng), 1)
    assert set(np.flatnonzero(counts)) == set(np.flatnonzero(y == 3))
    assert counts[y == 3].min() > 0.8 * counts[y == 3].max()


def test_batches_are_reproducible_and_vary_with_the_seed() -> None:
    y = np.repeat(np.arange(40), 5)
    a = balanced_batch(y, 32, 4, np.random.default_rng(7))
    assert np.array_equal(a, balanced_batch(y, 32, 4, np.random.default_rng(7)))
    assert not np.array_equal(a, balanced_batch(y, 32, 4, np.random.default_rng(8)))
    assert len(a) == 32 and len(np.unique(y[a])) == 8 and np.bincount(y[a]).max() == 4
    e = episode_batch(y, 5, 3, np.random.default_rng(0))
    labels = y[e]
    assert len(e) == 15 and all(len(set(labels[i:i + 3])) == 1 for i in range(0, 15, 3))
