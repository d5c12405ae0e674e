"""Losses: the ones pytorch-metric-learning lacks, written from their papers' formulas, and thin objective modules.

An *objective* is an `nn.Module` mapping (embeddings, labels) to a scalar loss; its own parameters (proxies,
classifier weights, a learned margin beta) are trained with the model. PML losses are used wherever PML has them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sec_loss(z: torch.Tensor) -> torch.Tensor:
    """Spherical embedding constraint (Zhang et al. 2020): mean_i (||z_i|| - mu)^2, mu = mean_i ||z_i||.

    Args:
        z: (B, d) unnormalised embeddings.
    """
    norms = z.norm(dim=1)
    return ((norms - norms.mean()) ** 2).mean()


def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """(B, B) Euclidean distances, with a finite gradient on the zero diagonal."""
    sq = (e.unsqueeze(1) - e.unsqueeze(0)).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt()


def relational_mutual_loss(e: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    """Relational mutual-learning loss (Park et al. 2020): match this model's pairwise-distance matrix to the others'.

    L = 1/|others| * sum_n 1/(B(B-1)) * sum_{i != j} (d_ij - d^n_ij)^2, with d the Euclidean distances within the
    batch. Callers pass the other models' embeddings detached, so each model learns towards the cohort.

    Args:
        e: (B, d) embeddings of this model.
        others: embeddings of the same batch from the other models (each (B, d'), any d').
    """
    if not others or e.shape[0] < 2:
        return e.new_zeros(())
    return distance_matching_loss(pairwise_distances(e), [pairwise_distances(o) for o in others])


def distance_matching_loss(d: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    """`relational_mutual_loss` from the (B, B) distance matrices: this model's `d` and the others' (a cohort
    computes each model's matrix once per batch and passes the others' detached)."""
    b = d.shape[0]
    if not others or b < 2:
        return d.new_zeros(())
    off = ~torch.eye(b, dtype=torch.bool, device=d.device)
    mine = d[off]
    return torch.stack([((mine - o[off]) ** 2).mean() for o in others]).mean()


def episode_split(labels: torch.Tensor, shots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The support and queries of one episode laid out in batch order.

    Per class the first `shots` rows (in batch order) are its support and the rest its queries; a class with no
    more than `shots` rows uses all of them as support and as queries. Both the training loss (`prototypical_loss`)
    and the episodic score of an adaptation (`oodml.methods.proto.episodic_accuracy`) split episodes here.

    Returns:
        Each row's class index 0..C-1 (classes numbered in sorted label order), the support mask, the query mask.
    """
    _, cls = torch.unique(labels, return_inverse=True)
    n_cls = int(cls.max()) + 1
    counts = torch.bincount(cls, minlength=n_cls)
    order = torch.argsort(cls, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(cls)
    rank[order] = torch.arange(len(cls), device=cls.device) - starts[cls[order]]
    small = counts[cls] <= shots
    return cls, (rank < shots) | small, (rank >= shots) | small


def prototype_logits(e: torch.Tensor, labels: torch.Tensor,
                     shots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The queries' logits against the prototypes of one episode (split by `episode_split`): prototype c_k = mean
    of class k's support, logit of query q for class k = -||q - c_k||^2.

    Returns:
        (Q, C) logits of the queries; their class indices 0..C-1; a (Q,) mask of the queries that are not support
        rows too (False for the rows of a class with <= `shots` rows).
    """
    cls, support, query = episode_split(labels, shots)
    n_cls = int(cls.max()) + 1
    n_sup = torch.bincount(cls[support], minlength=n_cls).to(e.dtype)
    protos = torch.zeros(n_cls, e.shape[1], dtype=e.dtype, device=e.device).index_add_(0, cls[support], e[support])
    protos = protos / n_sup[:, None]
    q = e[query]
    sq = q.pow(2).sum(1, keepdim=True) + protos.pow(2).sum(1)[None, :] - 2 * q @ protos.t()
    return -sq, cls[query], ~support[query]


def prototypical_loss(e: torch.Tensor, labels: torch.Tensor, shots: int) -> torch.Tensor:
    """Prototypical-network loss (Snell et al. 2017) on one episode: p(y = k | q) = softmax_k(-||q - c_k||^2), the
    loss is the mean negative log-probability of the queries (split and prototypes: `prototype_logits`)."""
    logits, target, _ = prototype_logits(e, labels, shots)
    return F.cross_entropy(logits, target)


class PmlObjective(nn.Module):
    """A pytorch-metric-learning loss, optionally with its miner."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, e: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of a batch (mined tuples when a miner is set)."""
        if self.miner is not None:
            return self.loss(e, labels, self.miner(e, labels))
        return self.loss(e, labels)


class ProtoObjective(nn.Module):
    """`prototypical_loss` with a fixed number of support shots per class."""

    def __init__(self, shots: int) -> None:
        super().__init__()
        self.shots = shots

    def forward(self, e: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of an episode laid out class by class."""
        return prototypical_loss(e, labels, self.shots)


class ClassifierObjective(nn.Module):
    """Softmax cross-entropy through a linear classifier on the embedding (weight transfer, baseline)."""

    def __init__(self, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, n_classes)

    def forward(self, e: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the batch."""
        return F.cross_entropy(self.fc(e), labels)


def init_proxies(objective: nn.Module, means: torch.Tensor) -> None:
    """Set an objective's class proxies (any (C, d) or (d, C) parameter) to the normalised class means (C, d)."""
    c, d = means.shape
    unit = F.normalize(means, dim=1)
    with torch.no_grad():
        for _, p in objective.named_parameters():
            if p.shape == (c, d):
                p.copy_(unit.to(p))
            elif p.shape == (d, c):
                p.copy_(unit.t().to(p))
