"""ooDML's few-shot adaptation (Milbich et al. 2021) of many last layers at once: every episode of a cell, of every k,
and every cohort model, fine-tuned as one batched computation.

Each *task* is one (support set, cohort model): its last layer is a slice of stacked weights (T, out, in) and biases
(T, out); one `torch.baddbmm` computes every task's batch, one backward pass and one Adam step (elementwise, so
the same as one Adam per task) update them all. What is random is drawn per task from its own generators (numpy for
the batches, torch for the miner), so a task's result does not depend on which others run beside it: adapting one
support alone is this computation with T = 1 (`tests/methods/test_protocols.py` checks both agree to 1e-6).

The objective is ooDML's margin criterion as pytorch-metric-learning computes `MarginLoss` with a fixed beta
(`DivisorReducer`: the sum of the triplets' positive and negative hinge terms over the number of non-zero terms) on
L2-normalised embeddings, with triplets drawn as PML's `DistanceWeightedMiner` draws them
(`distance_weighted_triplets`, batched over tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: ooDML's margin criterion and distance-weighted batch miner (their parameters.py defaults)
OODML_MARGIN = 0.2
OODML_BETA = 1.2
OODML_CUTOFF = 0.5
OODML_NONZERO_LOSS_CUTOFF = 1.4


@dataclass
class AdaptTask:
    """One last layer to fine-tune.

    Attributes:
        frozen: rows (support positions) -> (B, in) inputs of the last layer, computed without gradients.
        y: support labels 0..C-1.
        iterations: Adam steps.
        rng: draws the batches.
        generator: draws the miner's triplets.
    """

    frozen: Callable[[np.ndarray], torch.Tensor]
    y: np.ndarray
    iterations: int
    rng: np.random.Generator
    generator: torch.Generator


def margin_loss(e: torch.Tensor, task: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor,
                negatives: torch.Tensor, n_tasks: int, margin: float = OODML_MARGIN,
                beta: float = OODML_BETA) -> torch.Tensor:
    """Per-task margin loss (T,) of triplets given as flat (task, anchor, positive, negative) index vectors.

    Args:
        e: (T, B, d) L2-normalised embeddings.
        task, anchors, positives, negatives: (N,) indices; triplet i is in task `task[i]`, rows of its batch.
        n_tasks: T.
    """
    anchor = e[task, anchors]
    d_ap = torch.linalg.vector_norm(anchor - e[task, positives], dim=1)  # the triplets' distances only: no (B, B)
    d_an = torch.linalg.vector_norm(anchor - e[task, negatives], dim=1)  # matrix in the backward pass
    pos = F.relu(d_ap - beta + margin)
    neg = F.relu(beta - d_an + margin)
    sums = e.new_zeros(n_tasks).index_add(0, task, pos + neg)
    count = e.new_zeros(n_tasks).index_add(0, task, ((pos > 0).to(e.dtype) + (neg > 0).to(e.dtype)))
    return torch.where(count > 0, sums / count.clamp_min(1), sums * 0)


def distance_weighted_triplets(e: torch.Tensor, labels: torch.Tensor, generators: Sequence[torch.Generator], *,
                               cutoff: float = OODML_CUTOFF, nonzero_loss_cutoff: float = OODML_NONZERO_LOSS_CUTOFF,
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance-weighted triplets (Wu et al. 2017) of T batches at once, as (task, anchor, positive, negative).

    The sampling of PML's `DistanceWeightedMiner` (and `BatchedDistanceWeightedMiner`): every anchor with another
    image of its class gets as many triplets as its class has images in the batch; a positive is drawn uniformly
    among the anchor's other class members, a negative with probability proportional to q(d)^-1 (distances clamped
    at `cutoff`, zero weight from `nonzero_loss_cutoff` on); anchors without any weighted negative get none. The
    draws are inverse-CDF lookups of uniforms that task t takes from `generators[t]` alone.

    Args:
        e: (T, B, d) L2-normalised embeddings (no gradient needed).
        labels: (T, B) labels.
    """
    n_tasks, b, d = e.shape
    with torch.no_grad():
        mat = torch.cdist(e, e).clamp(min=cutoff)
        log_w = (2.0 - d) * torch.log(mat) - ((d - 3) / 2) * torch.log(1.0 - 0.25 * mat.pow(2))
        bad = torch.isinf(log_w) | torch.isnan(log_w)
        negative = labels.unsqueeze(2) != labels.unsqueeze(1)
        log_w = log_w * negative
        top = torch.where(bad, -torch.inf, log_w).amax(dim=(1, 2), keepdim=True)
        w = torch.exp(log_w - top) * negative * (mat < nonzero_loss_cutoff)
        w[bad] = 0
        same = ~negative & ~torch.eye(b, dtype=torch.bool, device=e.device)
        n_pos = same.sum(dim=2).flatten()
        rows = torch.repeat_interleave(torch.arange(n_tasks * b, device=e.device),
                                       torch.where(n_pos > 0, n_pos + 1, 0))
        w_rows = w.reshape(n_tasks * b, b)[rows]
        keep = w_rows.sum(dim=1) > 0
        rows, w_rows = rows[keep], w_rows[keep]
        task = torch.div(rows, b, rounding_mode="floor")
        counts = torch.bincount(task, minlength=n_tasks).tolist()
        u = torch.cat([torch.rand(n, 2, generator=g, dtype=e.dtype) for n, g in zip(counts, generators, strict=True)])
        pos_cdf = torch.cumsum(same.reshape(n_tasks * b, b)[rows].to(e.dtype), dim=1)
        neg_cdf = torch.cumsum(w_rows, dim=1)
        positives = _draw(pos_cdf, u[:, 0])
        negatives = _draw(neg_cdf, u[:, 1])
    return task, rows - task * b, positives, negatives


def _draw(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the first column whose cumulative weight exceeds u x the row's total (an index of weight > 0)."""
    v = (u * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, v, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)


def adapt_last_layers(weight: torch.Tensor, bias: torch.Tensor, tasks: Sequence[AdaptTask], *, lr: float,
                      weight_decay: float, batch: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> None:
    """Fine-tune the stacked last layers `weight` (T, out, in) and `bias` (T, out) in place, task t on `tasks[t]`.

    Tasks run in groups of equal iteration count; within an iteration, tasks whose batches have the same size share
    one batched forward (in practice all of them: class-balanced batches of k-shot supports have equal sizes).

    Args:
        batch: (labels, rng) -> row indices of the next batch.
    """
    by_iterations: dict[int, list[int]] = {}
    for t, task in enumerate(tasks):
        by_iterations.setdefault(task.iterations, []).append(t)
    for iterations, ids in sorted(by_iterations.items()):
        if iterations == 0:
            continue
        w = weight[ids].clone().requires_grad_(True)
        b = bias[ids].clone().requires_grad_(True)
        group = [tasks[t] for t in ids]
        labels = [torch.as_tensor(task.y, dtype=torch.long) for task in group]
        opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
        for _ in range(iterations):
            rows = [batch(task.y, task.rng) for task in group]
            opt.zero_grad(set_to_none=True)
            total = w.new_zeros(())
            for size in sorted({len(r) for r in rows}):
                sel = [i for i, r in enumerate(rows) if len(r) == size]
                h = torch.stack([group[i].frozen(rows[i]) for i in sel])
                z = torch.baddbmm(b[sel].unsqueeze(1), h, w[sel].transpose(1, 2))
                e = F.normalize(z, dim=2)
                lab = torch.stack([labels[i][torch.as_tensor(rows[i])] for i in sel])
                trip = distance_weighted_triplets(e.detach(), lab, [group[i].generator for i in sel])
                total = total + margin_loss(e, *trip, n_tasks=len(sel)).sum()
            if total.requires_grad:
                total.backward()
                opt.step()
        with torch.no_grad():
            weight[ids] = w.detach()
            bias[ids] = b.detach()
