"""k-shot n-way accuracy: each query gets the class of the nearest prototype (mean support embedding)."""

from __future__ import annotations

from typing import Any

import numpy as np

from oodml.errors import OodmlError
from oodml.eval.inputs import as_embeddings, to_numpy


def prototypes(support: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) float64 class means of the support rows; `codes` are class indices 0..C-1."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_classes)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.add.reduceat(support[order], starts, axis=0) / counts[:, None]


def nearest_prototype(queries: np.ndarray, protos: np.ndarray) -> np.ndarray:
    """Index of the nearest prototype (squared Euclidean, float64) per query; ties go to the lower index."""
    d = (queries**2).sum(1)[:, None] - 2.0 * queries @ protos.T + (protos**2).sum(1)[None, :]
    return np.argmin(d, axis=1)


def prototype_accuracy(support: Any, support_labels: Any, queries: Any, query_labels: Any) -> float:
    """Fraction of queries whose nearest class prototype has their label.

    Args:
        support: (S, D) support embeddings (numpy or torch, any float dtype).
        support_labels: (S,) their labels; every query label must occur here.
        queries: (Q, D) query embeddings.
        query_labels: (Q,) their labels.
    """
    s = as_embeddings(support, "support", np.float64)
    q = as_embeddings(queries, "queries", np.float64)
    if s.shape[1] != q.shape[1]:
        raise OodmlError(f"support has dimension {s.shape[1]} but queries have {q.shape[1]}; embed both alike")
    s_lab, q_lab = to_numpy(support_labels).ravel(), to_numpy(query_labels).ravel()
    if len(s_lab) != len(s) or len(q_lab) != len(q):
        raise OodmlError("support_labels / query_labels need one label per support / query row")
    classes, codes = np.unique(s_lab, return_inverse=True)
    pos = np.searchsorted(classes, q_lab).clip(0, len(classes) - 1)
    missing = classes[pos] != q_lab
    if missing.any():
        raise OodmlError(f"{int(missing.sum())} queries have a class without support items (e.g. "
                         f"{q_lab[missing][0]!r}); every query class needs at least one support item")
    pred = nearest_prototype(q, prototypes(s, codes.ravel(), len(classes)))
    return float(np.mean(pred == pos))
