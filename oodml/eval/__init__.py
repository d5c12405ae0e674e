"""Evaluation: exact kNN (faiss default, torch reference), recall@k, MAP@R, NMI and prototype accuracy.

Importing this package does not import torch; numpy inputs never touch it.
"""

from __future__ import annotations

from oodml.eval.clustering import nmi
from oodml.eval.fewshot import prototype_accuracy
from oodml.eval.knn import KNN_BACKENDS, KnnBackendInfo, Neighbors, knn, knn_batches
from oodml.eval.metrics import map_at_r, map_at_r_per_query, matches, recall_at_k, recall_at_k_per_query
from oodml.eval.retrieval import DEFAULT_KS, needed_k, retrieval_metrics

__all__ = [
    "DEFAULT_KS", "KNN_BACKENDS", "KnnBackendInfo", "Neighbors", "knn", "knn_batches", "map_at_r",
    "map_at_r_per_query", "matches", "needed_k", "nmi", "prototype_accuracy", "recall_at_k", "recall_at_k_per_query",
    "retrieval_metrics",
]
