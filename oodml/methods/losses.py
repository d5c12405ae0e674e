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
    if not others:
        return e.new_zeros(())
    b = e.shape[0]
    if b < 2:
        return e.new_zeros(())
    off = ~torch.eye(b, dtype=torch.bool, device=e.device)
    d = pairwise_distances(e)[off]
    return torch.stack([((d - pairwise_distances(o)[off]) ** 2).mean() for o in others]).mean()


def class_groups(labels: torch.Tensor) -> list[torch.Tensor]:
    """Index tensors of each class in the batch, classes in order of first occurrence, rows in batch order."""
    seen: dict[int, list[int]] = {}
    for i, c in enumerate(labels.tolist()):
        seen.setdefault(int(c), []).append(i)
    return [torch.tensor(v, dtype=torch.long, device=labels.device) for v in seen.values()]


def prototypical_loss(e: torch.Tensor, labels: torch.Tensor, shots: int) -> torch.Tensor:
    """Prototypical-network loss (Snell et al. 2017) on one episode.

    Per class (in order of first occurrence) the first `shots` rows are its support and the rest its queries; a
    class with no more than `shots` rows uses all of them as support and as queries. Prototype c_k = mean of the
    support; p(y = k | q) = softmax_k(-||q - c_k||^2); the loss is the mean negative log-probability of the queries.
    """
    groups = class_groups(labels)
    protos, queries, targets = [], [], []
    for k, idx in enumerate(groups):
        sup, qry = (idx[:shots], idx[shots:]) if len(idx) > shots else (idx, idx)
        protos.append(e[sup].mean(0))
        queries.append(e[qry])
        targets.append(torch.full((len(qry),), k, dtype=torch.long, device=e.device))
    c = torch.stack(protos)
    q = torch.cat(queries)
    logits = -(q.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1)
    return F.cross_entropy(logits, torch.cat(targets))


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
