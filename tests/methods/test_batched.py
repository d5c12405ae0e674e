"""`oodml.methods.batched`: the stacked adaptation against a plain per-task loop written the obvious way (an
`nn.Linear`, autograd, one `torch.optim.Adam` per task), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oodml.methods.batched import (AdaptTask, StackedAdam, adapt_last_layers, distance_weighted_triplets,
                                   margin_loss)
from oodml.methods.batches import balanced_batch

IN, OUT = 16, 32  # parameters per task a multiple of 32: see `StackedAdam`


def batch(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return balanced_batch(y, 8, 2, rng)


def reference(weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor, y: np.ndarray, iterations: int,
              rng: np.random.Generator, gen: torch.Generator, lr: float, wd: float) -> tuple[torch.Tensor, ...]:
    """One task on its own, the obvious way: an `nn.Linear` fine-tuned with autograd and torch's Adam."""
    layer = torch.nn.Linear(IN, OUT)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=wd)
    labels = torch.as_tensor(y)
    for _ in range(iterations):
        rows = torch.as_tensor(batch(y, rng))
        opt.zero_grad(set_to_none=True)
        e = F.normalize(layer(inputs[rows]), dim=1)[None]
        trip = distance_weighted_triplets(e.detach(), labels[rows][None], [gen])
        margin_loss(e, *trip, n_tasks=1).sum().backward()
        opt.step()
    return layer.weight.detach(), layer.bias.detach()


def tasks_and_inputs(seed: int = 0) -> tuple[list[tuple[torch.Tensor, np.ndarray, int]], torch.Tensor, torch.Tensor]:
    """Supports of mixed k, class counts (so batch sizes differ) and iteration counts, incl. one of 0 iterations."""
    g = torch.Generator().manual_seed(seed)
    specs = [(2, 6, 7), (2, 6, 7), (3, 6, 11), (2, 3, 5), (5, 6, 11), (2, 6, 0)]  # (k, classes, iterations)
    out = []
    for k, classes, iterations in specs:
        y = np.repeat(np.arange(classes), k)
        centers = torch.randn(classes, IN, generator=g)
        out.append((F.relu(centers[torch.as_tensor(y)] + 0.5 * torch.randn(len(y), IN, generator=g)), y, iterations))
    return out, torch.randn(OUT, IN, generator=g) * 0.2, torch.randn(OUT, generator=g) * 0.1


@pytest.mark.parametrize("wd", [0.0, 1e-3])
def test_stacked_adaptation_is_bit_identical_to_one_task_at_a_time(wd: float) -> None:
    supports, w0, b0 = tasks_and_inputs()
    lr = 1e-2
    weight, bias = torch.stack([w0] * len(supports)), torch.stack([b0] * len(supports))
    tasks = []
    for i, (x, y, iterations) in enumerate(supports):
        frozen = x if i % 2 else (lambda rows, x=x: x[torch.as_tensor(rows)])  # tensor or function: same numbers
        tasks.append(AdaptTask(frozen, y, iterations, np.random.default_rng(7), torch.Generator().manual_seed(3)))
    adapt_last_layers(weight, bias, tasks, lr=lr, weight_decay=wd, batch=batch)
    for i, (x, y, iterations) in enumerate(supports):
        w, b = reference(w0, b0, x, y, iterations, np.random.default_rng(7), torch.Generator().manual_seed(3), lr, wd)
        assert torch.equal(weight[i], w) and torch.equal(bias[i], b), f"task {i}"
        assert torch.equal(weight[i], w0) == (iterations == 0)


def test_stacked_adam_steps_like_torch_adam_on_a_shrinking_prefix() -> None:
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 5, 4, generator=g)
    grads = [torch.randn(3, 5, 4, generator=g) for _ in range(6)]
    active = [3, 3, 2, 2, 1, 1]
    stacked = p0.clone()
    adam = StackedAdam([stacked], lr=0.1, weight_decay=0.01)
    for n, grad in zip(active, grads, strict=True):
        adam.step([grad[:n]], n)
    for t in range(3):
        p = p0[t].clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=0.1, weight_decay=0.01)
        for n, grad in zip(active, grads, strict=True):
            if t < n:
                p.grad = grad[t].clone()
                opt.step()
        assert torch.equal(stacked[t], p.detach())


def test_tasks_need_their_own_generators() -> None:
    x = torch.ones(4, IN)
    y = np.array([0, 0, 1, 1])
    rng = np.random.default_rng(0)
    tasks = [AdaptTask(x, y, 2, rng, torch.Generator()), AdaptTask(x, y, 2, rng, torch.Generator())]
    with pytest.raises(ValueError, match="own rng"):
        adapt_last_layers(torch.zeros(2, OUT, IN), torch.zeros(2, OUT), tasks, lr=0.1, weight_decay=0.0,
                          batch=batch)
