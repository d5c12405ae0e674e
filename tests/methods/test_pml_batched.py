"""The batched miner and histogram loss against pytorch-metric-learning's own implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import HistogramLoss
from pytorch_metric_learning.miners import DistanceWeightedMiner

from oodml.methods.pml_batched import BatchedDistanceWeightedMiner, BinSafeCosineSimilarity, PairHistogramLoss


def batch(seed: int, labels: list[int], dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(len(labels), dim, generator=g), dim=1), torch.tensor(labels)


LABEL_SETS = [
    [0, 0, 1, 1, 2, 2, 3, 3],
    [0, 0, 0, 1, 1, 2, 3, 4, 4, 4, 4, 5],  # uneven classes, singletons
    [0, 1, 2, 3],  # no positives at all
    [7, 7, 7, 7],  # no negatives at all
]


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_histogram_loss_equals_pml(labels: list[int]) -> None:
    for seed in range(5):
        e, y = batch(seed, labels)
        e.requires_grad_(True)
        ours = PairHistogramLoss(n_bins=20, distance=BinSafeCosineSimilarity())(e, y)
        (g_ours,) = torch.autograd.grad(ours, e) if ours.requires_grad else (torch.zeros_like(e),)
        ref = HistogramLoss(n_bins=20, distance=BinSafeCosineSimilarity())(e, y)
        (g_ref,) = torch.autograd.grad(ref, e) if ref.requires_grad else (torch.zeros_like(e),)
        assert float(ours) == float(ref)
        assert torch.equal(g_ours, g_ref)


def triplets(miner: torch.nn.Module, e: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    a, p, n = miner(e, y)
    return torch.stack([a, p, n], dim=1)


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_distance_weighted_miner_samples_like_pml(labels: list[int]) -> None:
    # large cut-offs so that every negative has weight (8-d unit vectors are at most 2 apart)
    kw = dict(cutoff=0.5, nonzero_loss_cutoff=2.5)
    e, y = batch(1, labels)
    ours, ref = BatchedDistanceWeightedMiner(**kw), DistanceWeightedMiner(**kw)
    t_ours = torch.cat([triplets(ours, e, y, s) for s in range(400)])
    t_ref = torch.cat([triplets(ref, e, y, s) for s in range(400)])
    assert len(t_ours) == len(t_ref)  # the same number of triplets per anchor
    if len(t_ours) == 0:
        return
    a, p, n = t_ours.T
    assert bool((y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all())
    # the same anchor counts, and the same (anchor, negative) frequencies up to sampling noise
    size = len(labels)
    assert torch.equal(torch.bincount(t_ours[:, 0], minlength=size), torch.bincount(t_ref[:, 0], minlength=size))
    f_ours = torch.bincount(a * size + n, minlength=size * size).double() / len(a)
    f_ref = torch.bincount(t_ref[:, 0] * size + t_ref[:, 2], minlength=size * size).double() / len(a)
    assert 0.5 * float((f_ours - f_ref).abs().sum()) < 0.06  # total variation distance
    # and the sampling does follow the weights: a negative beyond the loss cut-off is never drawn
    near = BatchedDistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.0)
    t = triplets(near, e, y, 0)
    if len(t):
        d = torch.cdist(e, e)
        assert bool((d[t[:, 0], t[:, 2]] < 1.0).all())


def test_margin_method_uses_the_batched_miner() -> None:
    from oodml.methods import build_method
    from oodml.methods.base import MethodContext

    ctx = MethodContext(regime="head", in_dim=16, backbone="none", device="cpu", seed=0)
    method = build_method("margin", ctx, {"iterations": 3})
    assert isinstance(method.make_objective(10, "fit").miner, BatchedDistanceWeightedMiner)  # type: ignore[attr-defined]
