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
        frozen: the (n, in) inputs of the last layer for the n support rows, or a function rows (support
            positions) -> (B, in) inputs computed without gradients.
        y: support labels 0..C-1.
        iterations: Adam steps.
        rng: draws the batches.
        generator: draws the miner's triplets.
    """

    frozen: torch.Tensor | Callable[[np.ndarray], torch.Tensor]
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
    flat, row = e.reshape(-1, e.shape[2]), task * e.shape[1]  # index_select: its backward is a plain index_add
    anchor = flat.index_select(0, row + anchors)
    d_ap = torch.linalg.vector_norm(anchor - flat.index_select(0, row + positives), dim=1)  # the triplets'
    d_an = torch.linalg.vector_norm(anchor - flat.index_select(0, row + negatives), dim=1)  # distances only
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


class StackedAdam:
    """`torch.optim.Adam` (default betas and eps, L2 `weight_decay`) over stacked per-task parameters, of which the
    first `active` tasks (along dim 0) step.

    Element for element the same operations as torch's single-tensor Adam (`foreach=False`, what it runs on CPU), so
    the parameters come out bit-identical (`tests/methods/test_batched.py`); the square-root/denominator buffer is
    allocated once instead of twice per step, which halves the step's time at 20 x 1,280 x 128 parameters (its fused
    kernel is faster still but rounds differently). All active tasks share the step count: the active ones are a
    prefix that only shrinks (`adapt_last_layers` orders the tasks by iterations, longest first).
    """

    def __init__(self, params: Sequence[torch.Tensor], *, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.denom = [torch.empty_like(p) for p in self.params]
        self.steps = 0

    def step(self, grads: Sequence[torch.Tensor], active: int) -> None:
        """One step of the first `active` tasks; `grads[i]` has the shape of `params[i][:active]`."""
        self.steps += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2 = 1 - beta2**self.steps
        step_size = self.lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        for param, grad, exp_avg, exp_avg_sq, denom in zip(self.params, grads, self.exp_avg, self.exp_avg_sq,
                                                           self.denom, strict=True):
            param, exp_avg, exp_avg_sq, denom = (t[:active] for t in (param, exp_avg, exp_avg_sq, denom))
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            torch.sqrt(exp_avg_sq, out=denom)
            denom.div_(bias_correction2_sqrt).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)


def _batch_streams(tasks: Sequence[AdaptTask]) -> list[int]:
    """Per task, the index of its batch stream: tasks with equal labels and equal batch-generator states draw equal
    batches (the episodes of one k of a cell do), so each stream is drawn once, from its first task's generator."""
    if len({id(t.rng) for t in tasks}) < len(tasks) or len({id(t.generator) for t in tasks}) < len(tasks):
        raise ValueError("every AdaptTask needs its own rng and generator")
    keys: dict[tuple[object, ...], int] = {}
    return [keys.setdefault((t.y.dtype.str, t.y.shape, t.y.tobytes(), repr(t.rng.bit_generator.state)), len(keys))
            for t in tasks]


def _gather(task: AdaptTask, rows: np.ndarray, out: torch.Tensor) -> None:
    """The last layer's inputs of `rows` of a task's support, written into `out`."""
    if isinstance(task.frozen, torch.Tensor):
        torch.index_select(task.frozen, 0, torch.from_numpy(rows), out=out)
    else:
        out.copy_(task.frozen(rows))


def adapt_last_layers(weight: torch.Tensor, bias: torch.Tensor, tasks: Sequence[AdaptTask], *, lr: float,
                      weight_decay: float, batch: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> None:
    """Fine-tune the stacked last layers `weight` (T, out, in) and `bias` (T, out) in place, task t on `tasks[t]`.

    Every task steps in one batched computation; a task stops after its own number of iterations (tasks run longest
    first, so the active ones are a prefix of the stack: views, no copies). Within an iteration, tasks whose batches
    have the same size share one forward and one gradient product (in practice all of them: class-balanced batches
    of k-shot supports have equal sizes). Autograd only runs from the layer's outputs to the loss; the layer's
    gradient is the product `nn.Linear`'s backward computes (dz^T h, in the weight's layout), and Adam is
    `StackedAdam`: each task's numbers are those of an `nn.Linear` fine-tuned on its own with `torch.optim.Adam`
    (`tests/methods/test_batched.py`, bit for bit).

    Args:
        batch: (labels, rng) -> row indices of the next batch.
    """
    order = sorted((t for t in range(len(tasks)) if tasks[t].iterations > 0), key=lambda t: -tasks[t].iterations)
    if not order:
        return
    group = [tasks[t] for t in order]
    stream = _batch_streams(group)
    first = {s: i for i, s in reversed(list(enumerate(stream)))}
    labels = [torch.as_tensor(group[first[s]].y, dtype=torch.long) for s in range(len(first))]
    w, b = weight[order], bias[order]  # copies, (T, out, in) and (T, out)
    grad_w, grad_b = torch.empty_like(w), torch.empty_like(b)
    adam = StackedAdam([w, b], lr=lr, weight_decay=weight_decay)
    inputs: dict[int, torch.Tensor] = {}  # batch size -> (T, size, in) buffer
    for it in range(group[0].iterations):
        n = sum(task.iterations > it for task in group)
        rows = {s: batch(group[first[s]].y, group[first[s]].rng) for s in sorted(set(stream[:n]))}
        batch_labels = {s: labels[s][torch.from_numpy(r)] for s, r in rows.items()}
        sizes: dict[int, list[int]] = {}
        for i in range(n):
            sizes.setdefault(len(rows[stream[i]]), []).append(i)
        for size, sel in sorted(sizes.items()):
            buf = inputs.setdefault(size, w.new_empty(len(group), size, w.shape[2]))
            h = buf[: len(sel)]
            for j, i in enumerate(sel):
                _gather(group[i], rows[stream[i]], h[j])
            prefix = len(sel) == n
            ids = torch.as_tensor(sel)
            z = torch.baddbmm((b[:n] if prefix else b[ids]).unsqueeze(1), h,
                              (w[:n] if prefix else w[ids]).transpose(1, 2))
            z.requires_grad_(True)
            e = F.normalize(z, dim=2)
            lab = torch.stack([batch_labels[stream[i]] for i in sel])
            trip = distance_weighted_triplets(e.detach(), lab, [group[i].generator for i in sel])
            (dz,) = torch.autograd.grad(margin_loss(e, *trip, n_tasks=len(sel)).sum(), [z])
            if prefix:
                torch.bmm(dz.transpose(1, 2), h, out=grad_w[:n])
                torch.sum(dz, dim=1, out=grad_b[:n])
            else:
                grad_w[ids] = torch.bmm(dz.transpose(1, 2), h)
                grad_b[ids] = dz.sum(dim=1)
        adam.step([grad_w[:n], grad_b[:n]], n)
    weight[order] = w
    bias[order] = b
