"""pytorch-metric-learning's distance-weighted miner and histogram loss with their per-label Python loops replaced by
whole-batch tensor operations: same formulas, same sampling distribution (miner) or the same numbers (loss).

Measured in a k-shot cell on CUB-sized features (100 adaptation runs of 100 iterations each, batch 64): PML's
`get_random_triplet_indices` loops over the labels of a batch (~6 ms per call, half of `adapted_margin`'s cell), and
`HistogramLoss` builds every triplet and then deduplicates pairs with `torch.unique(dim=1)` (~10 ms per call, 60% of
`adapted_histogram`'s cell). `tests/methods/test_pml_batched.py` checks both against PML.

Imported on first use by `oodml.methods.dml` (pytorch-metric-learning pulls in scipy.stats).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import HistogramLoss
from pytorch_metric_learning.miners import DistanceWeightedMiner


class BinSafeCosineSimilarity(CosineSimilarity):  # type: ignore[misc]
    """Cosine similarity capped just below 1: PML's HistogramLoss indexes bin n_bins + 1 (out of range) for a
    similarity of exactly 1 (duplicate or collapsed embeddings); the cap keeps it in the last bin."""

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return super().compute_mat(query_emb, ref_emb).clamp(-1.0, 1.0 - 1e-6)


class BatchedDistanceWeightedMiner(DistanceWeightedMiner):  # type: ignore[misc]
    """Distance-weighted sampling (Wu et al. 2017) as PML's `DistanceWeightedMiner` does it, in two multinomial draws.

    Like PML: every anchor with another image of its class in the batch gets as many triplets as its class has
    images there; each triplet's positive is drawn uniformly from the anchor's other class members, and its negative
    with probability proportional to q(d)^-1 (cut off at `cutoff`, zero beyond `nonzero_loss_cutoff`); anchors whose
    negative weights are all zero get no triplets. With a separate reference set it falls back to PML.
    """

    def negative_weights(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor,
                         ref_labels: torch.Tensor) -> torch.Tensor:
        """(B, R) sampling weights of the negatives (rows normalised; zero on same-class and cut-off entries)."""
        d = float(embeddings.size(1))
        mat = torch.clamp(self.distance(embeddings, ref_emb), min=self.cutoff)
        log_w = (2.0 - d) * torch.log(mat) - ((d - 3) / 2) * torch.log(1.0 - 0.25 * mat.pow(2))
        bad = torch.isinf(log_w) | torch.isnan(log_w)
        negative = labels.unsqueeze(1) != ref_labels.unsqueeze(0)
        log_w = log_w * negative
        w = torch.exp(log_w - torch.max(log_w[~bad])) * negative * (mat < self.nonzero_loss_cutoff)
        w[bad] = 0
        return w / w.sum(dim=1, keepdim=True)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor,
             ref_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if ref_labels is not labels and not torch.equal(ref_labels, labels):
            return super().mine(embeddings, labels, ref_emb, ref_labels)  # type: ignore[no-any-return]
        with torch.no_grad():
            weights = self.negative_weights(embeddings, labels, ref_emb, ref_labels)
            same = labels.unsqueeze(1) == labels.unsqueeze(0)
            same.fill_diagonal_(False)
            n_pos = same.sum(dim=1)  # other members of the anchor's class
            anchors = torch.repeat_interleave(torch.arange(len(labels), device=labels.device),
                                              torch.where(n_pos > 0, n_pos + 1, 0))
            w = weights[anchors]
            keep = w.sum(dim=1) > 0  # False for all-zero (NaN after normalising) rows
            anchors, w = anchors[keep], w[keep]
            if len(anchors) == 0:
                empty = labels.new_zeros(0, dtype=torch.long)
                return empty, empty, empty
            positives = torch.multinomial(same[anchors].to(w.dtype), 1, replacement=True).flatten()
            negatives = torch.multinomial(w, 1, replacement=True).flatten()
        return anchors, positives, negatives


class PairHistogramLoss(HistogramLoss):  # type: ignore[misc]
    """PML's histogram loss (Ustinova & Lempitsky 2016) with its pair sets taken from masks.

    PML lists every (anchor, positive, negative) triplet of the batch and keeps the distinct unordered pairs: the
    positive pairs when the batch has any negative, and the negative pairs with at least one member that has a
    positive. Boolean masks over the upper triangle give the same pairs in the same (row-major) order, so the
    densities and the loss are the same numbers.
    """

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: Any, ref_emb: torch.Tensor,
                     ref_labels: torch.Tensor) -> dict[str, Any]:
        if indices_tuple is not None or ref_labels is not labels:
            return super().compute_loss(embeddings, labels, indices_tuple, ref_emb,  # type: ignore[no-any-return]
                                        ref_labels)
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        upper = torch.ones_like(same).triu(diagonal=1)
        has_pos = (same.sum(dim=1) > 1)
        pos = same & upper
        neg = ~same & upper & (has_pos.unsqueeze(1) | has_pos.unsqueeze(0))
        if not bool(pos.any()) or not bool(neg.any()):
            return self.zero_losses()  # type: ignore[no-any-return]
        mat = self.distance(embeddings, ref_emb)
        phi = torch.cumsum(self.compute_density(mat[pos]), dim=0)
        p_neg = self.compute_density(mat[neg])
        return {"loss": {"losses": torch.sum(p_neg * phi), "indices": None, "reduction_type": "already_reduced"}}
