"""ooDML's few-shot adaptation (Milbich et al. 2021) of many last layers at once: every episode of a cell, of every k,
and every cohort model, fine-tuned as one batched computation.

Each *task* is one (support set, cohort model): its last layer is a slice of stacked weights (T, out, in) and biases
(T, out); one `torch.baddbmm` computes every task's batch, one backward pass and one Adam step (elementwise, so
the same as one Adam per task) update them all. What is random is drawn per task from its own generators (numpy for
the batches, torch for the miner), so a task's result does not depend on which others run beside it: adapting one
support alone is this computation with T = 1 (`tests/methods/test_protocols.py` checks both agree to 1e-6).

The objective is ooDML's margin criterion as pytorch-metric-learning computes `MarginLoss` with a fixed beta
(`DivisorReducer`: the sum of the triplets' positive and negative hinge terms over the number of non-zero terms) on
L2-normalised embeddings, with triplets from `BatchedDistanceWeightedMiner` (PML's distance-weighted sampling).
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
    d = torch.cdist(e, e)
    d_ap = d[task, anchors, positives]
    d_an = d[task, anchors, negatives]
    pos = F.relu(d_ap - beta + margin)
    neg = F.relu(beta - d_an + margin)
    sums = e.new_zeros(n_tasks).index_add(0, task, pos + neg)
    count = e.new_zeros(n_tasks).index_add(0, task, ((pos > 0).to(e.dtype) + (neg > 0).to(e.dtype)))
    return torch.where(count > 0, sums / count.clamp_min(1), sums * 0)


def _triplets(e: torch.Tensor, labels: list[torch.Tensor], tasks: Sequence[AdaptTask],
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance-weighted triplets of every task's batch, each drawn with the task's own generator."""
    from oodml.methods.pml_batched import BatchedDistanceWeightedMiner

    miner = BatchedDistanceWeightedMiner(cutoff=OODML_CUTOFF, nonzero_loss_cutoff=OODML_NONZERO_LOSS_CUTOFF)
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    with torch.no_grad():
        for t, (task, lab) in enumerate(zip(tasks, labels, strict=True)):
            miner.generator = task.generator
            a, p, n = miner.mine(e[t], lab, e[t], lab)
            for out, v in zip(parts, (torch.full_like(a, t), a, p, n), strict=True):
                out.append(v)
    return tuple(torch.cat(v) for v in parts)  # type: ignore[return-value]


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
                lab = [labels[i][torch.as_tensor(rows[i])] for i in sel]
                trip = _triplets(e.detach(), lab, [group[i] for i in sel])
                total = total + margin_loss(e, *trip, n_tasks=len(sel)).sum()
            if total.requires_grad:
                total.backward()
                opt.step()
        with torch.no_grad():
            weight[ids] = w.detach()
            bias[ids] = b.detach()
