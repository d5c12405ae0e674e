"""NMI: seeded faiss k-means with one cluster per class, scored against the labels with scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np

from oodml.eval.inputs import as_embeddings, as_labels

#: faiss takes a 32-bit seed; larger seeds (e.g. `derive_seed` output) are reduced modulo this.
FAISS_SEED_MOD = 2**31


def kmeans_assign(x: np.ndarray, n_clusters: int, seed: int, niter: int = 20, nredo: int = 1) -> np.ndarray:
    """Cluster (N, D) float32 rows with faiss k-means (all points used, seeded; the best of `nredo` runs) and
    return each row's cluster."""
    import faiss

    km = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=int(seed) % FAISS_SEED_MOD, nredo=nredo,
                      verbose=False, min_points_per_centroid=1, max_points_per_centroid=max(1, len(x)))
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign.ravel()


def nmi(embeddings: Any, labels: Any, seed: int = 0, *, niter: int = 20, nredo: int = 1) -> float:
    """Normalised mutual information between the labels and a k-means clustering with one cluster per class.

    Args:
        embeddings: (N, D) numpy array or torch tensor, any float dtype.
        labels: (N,) class labels.
        seed: k-means seed (same seed and data -> the same value).
        niter: k-means iterations.
        nredo: k-means restarts; the clustering with the lowest objective is scored (1, as in PML and ooDML).
    """
    from sklearn.metrics import normalized_mutual_info_score

    x = as_embeddings(embeddings)
    codes, sizes = as_labels(labels, len(x))
    assign = kmeans_assign(x, len(sizes), seed, niter, nredo)
    return float(normalized_mutual_info_score(codes, assign))
