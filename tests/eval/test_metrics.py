"""Pure metric functions against tables worked out by hand (GUIDE §6a)."""

from __future__ import annotations

import numpy as np
import pytest

from oodml.errors import OodmlError
from oodml.eval import map_at_r, map_at_r_per_query, recall_at_k, recall_at_k_per_query

# query labels and neighbour labels, nearest first
QUERY = np.array([0, 1, 2, 3])
KNN = np.array([
    [1, 0, 0, 2],   # R=2: miss, hit          -> AP = (1/2)(1/2)          = 0.25
    [1, 1, 0, 1],   # R=3: hit, hit, miss     -> AP = (1/3)(1/1 + 2/2)    = 2/3
    [0, 1, 0, 2],   # R=1: miss               -> AP = 0  (the hit at rank 4 is beyond R)
    [3, 0, 3, 3],   # R=4: hit, miss, hit, hit -> AP = (1/4)(1 + 2/3 + 3/4) = 29/48
])
R = np.array([2, 3, 1, 4])


def test_recall_at_k_hand_table() -> None:
    assert recall_at_k_per_query(KNN, QUERY, 1).tolist() == [0, 1, 0, 1]
    assert recall_at_k_per_query(KNN, QUERY, 2).tolist() == [1, 1, 0, 1]
    assert recall_at_k_per_query(KNN, QUERY, 3).tolist() == [1, 1, 0, 1]
    assert recall_at_k_per_query(KNN, QUERY, 4).tolist() == [1, 1, 1, 1]
    assert recall_at_k(KNN, QUERY, 1) == 0.5
    assert recall_at_k(KNN, QUERY, 2) == 0.75
    assert recall_at_k(KNN, QUERY, 8) == 1.0  # k beyond the columns: every neighbour searched


def test_map_at_r_hand_table() -> None:
    np.testing.assert_allclose(map_at_r_per_query(KNN, QUERY, R), [0.25, 2 / 3, 0.0, 29 / 48], rtol=0, atol=1e-15)
    assert map_at_r(KNN, QUERY, R) == pytest.approx((0.25 + 2 / 3 + 29 / 48) / 4, abs=1e-15)


def test_map_at_r_perfect_and_worst() -> None:
    q = np.array([5, 5])
    knn = np.array([[5, 5, 1], [1, 2, 5]])
    assert map_at_r_per_query(knn, q, np.array([2, 1])).tolist() == [1.0, 0.0]


def test_map_at_r_needs_enough_columns() -> None:
    with pytest.raises(OodmlError, match="MAP@R needs"):
        map_at_r(KNN, QUERY, np.array([2, 3, 1, 5]))
    with pytest.raises(OodmlError, match="MAP@R needs"):
        map_at_r(KNN, QUERY, np.array([2, 3, 0, 4]))


def test_shape_errors() -> None:
    with pytest.raises(OodmlError, match="knn_labels must be"):
        recall_at_k(KNN, QUERY[:3], 1)
    with pytest.raises(OodmlError, match="k >= 1"):
        recall_at_k(KNN, QUERY, 0)
