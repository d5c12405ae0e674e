"""Hand-written losses equal loops written from their papers' formulas (float32 and float64); PML losses are
configured as their papers state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import distances, losses, miners

from oodml.methods import METHODS, MethodContext, build_method, method_params
from oodml.methods.dml import DML_LOSSES, DmlMethod
from oodml.methods.losses import (PmlObjective, init_proxies, prototypical_loss, relational_mutual_loss,
                                  sec_loss)
from oodml.methods.params import HistogramParams
from tests.conftest import TEST_DTYPES

pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _emb(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * 2).to(dtype)


def _angles(degrees: list[float], dtype: torch.dtype) -> torch.Tensor:
    """2-D unit embeddings from angles (PML testing style): cosine similarities are easy to work out by hand."""
    a = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], 1).to(dtype)


@pytest.mark.parametrize("dtype", TEST_DTYPES)
def test_sec_loss_matches_formula(dtype: torch.dtype) -> None:
    z = _emb(9, 5, dtype)
    norms = [math.sqrt(sum(float(v) ** 2 for v in row)) for row in z]
    mu = sum(norms) / len(norms)
    expected = sum((n - mu) ** 2 for n in norms) / len(norms)
    got = sec_loss(z)
    assert got.dtype == dtype
    assert abs(float(got) - expected) <= TOL[dtype] * max(1.0, expected)
    # the constraint is 0 when all norms are equal, whatever the directions
    assert float(sec_loss(_angles([0, 40, 200], dtype) * 3)) == pytest.approx(0, abs=TOL[dtype])


@pytest.mark.parametrize("dtype", TEST_DTYPES)
def test_relational_mutual_loss_matches_formula(dtype: torch.dtype) -> None:
    e = _emb(6, 4, dtype, 1)
    others = [_emb(6, 3, dtype, 2), _emb(6, 7, dtype, 3)]

    def dist(x: torch.Tensor, i: int, j: int) -> float:
        return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j])))

    total = 0.0
    for o in others:
        s = sum((dist(e, i, j) - dist(o, i, j)) ** 2 for i in range(6) for j in range(6) if i != j)
        total += s / (6 * 5)
    expected = total / len(others)
    got = relational_mutual_loss(e, others)
    assert abs(float(got) - expected) <= TOL[dtype] * max(1.0, expected)
    assert float(relational_mutual_loss(e, [e.clone()])) == pytest.approx(0, abs=TOL[dtype])
    # a finite gradient although the diagonal distances are 0
    e2 = e.clone().requires_grad_(True)
    relational_mutual_loss(e2, others).backward()
    assert e2.grad is not None and torch.isfinite(e2.grad).all()


@pytest.mark.parametrize("dtype", TEST_DTYPES)
@pytest.mark.parametrize("layout", [[5, 5, 5, 2, 2, 2, 2, 9, 9, 9], [2, 9, 5, 2, 9, 9, 5, 2, 5, 2]])
def test_prototypical_loss_matches_formula(dtype: torch.dtype, layout: list[int]) -> None:
    e = _emb(10, 3, dtype, 4)
    labels = torch.tensor(layout)  # 3 classes; shots=2: per class the first 2 rows in batch order are the support
    shots = 2
    classes = sorted(set(layout))
    rows = {c: [i for i in range(10) if layout[i] == c] for c in classes}
    protos = {c: [sum(float(e[i, d]) for i in rows[c][:shots]) / shots for d in range(3)] for c in classes}
    nll, n = 0.0, 0
    for c in classes:
        for q in rows[c][shots:]:
            scores = {k: -sum((float(e[q, d]) - protos[k][d]) ** 2 for d in range(3)) for k in classes}
            log_z = math.log(sum(math.exp(s) for s in scores.values()))
            nll += log_z - scores[c]
            n += 1
    expected = nll / n
    got = prototypical_loss(e, labels, shots)
    assert abs(float(got) - expected) <= TOL[dtype] * max(1.0, expected)


def test_prototypical_loss_one_shot_uses_support_as_queries() -> None:
    e = _angles([0, 90, 180], torch.float64)
    labels = torch.tensor([0, 1, 2])
    # each image is its class's prototype and its only query; squared distances: 2 at 90 deg, 4 at 180 deg
    rows = [[0.0, -2.0, -4.0], [-2.0, 0.0, -2.0], [-4.0, -2.0, 0.0]]
    expected = sum(math.log(sum(math.exp(s) for s in row)) for row in rows) / 3
    assert float(prototypical_loss(e, labels, 1)) == pytest.approx(expected, rel=1e-12)


def _histogram_loop(e: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    """Ustinova & Lempitsky 2016, eqs. (1)-(4): soft histograms of cosine similarities of all positive and negative
    pairs on nodes t_r = -1 + r * delta, then L = sum_r h-_r * sum_{q <= r} h+_q."""
    delta = 2.0 / n_bins
    nodes = [-1 + r * delta for r in range(n_bins + 1)]
    unit = [[float(v) for v in row] for row in torch.nn.functional.normalize(e.double(), dim=1)]
    pos, neg = [], []
    for i in range(len(unit)):
        for j in range(i + 1, len(unit)):
            s = sum(a * b for a, b in zip(unit[i], unit[j]))
            (pos if int(labels[i]) == int(labels[j]) else neg).append(s)

    def hist(sims: list[float]) -> list[float]:
        h = []
        for r, t in enumerate(nodes):
            acc = 0.0
            for s in sims:
                if r > 0 and nodes[r - 1] <= s <= t:
                    acc += (s - nodes[r - 1]) / delta
                elif r < n_bins and t <= s <= nodes[r + 1]:
                    acc += (nodes[r + 1] - s) / delta
            h.append(acc / len(sims))
        return h

    hp, hn = hist(pos), hist(neg)
    return sum(hn[r] * sum(hp[: r + 1]) for r in range(n_bins + 1))


@pytest.mark.parametrize("dtype", TEST_DTYPES)
@pytest.mark.parametrize("n_bins", [100, 7])
def test_pml_histogram_loss_is_the_papers(dtype: torch.dtype, n_bins: int) -> None:
    e = _emb(12, 4, dtype, 5)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    builder = next(x for x in DML_LOSSES if x.name == "histogram").build
    obj = builder(HistogramParams(n_bins=n_bins), 4)
    assert isinstance(obj, PmlObjective) and isinstance(obj.loss, losses.HistogramLoss)
    assert isinstance(obj.loss.distance, distances.CosineSimilarity) and obj.miner is None  # all pairs, cosine
    assert obj.loss.delta == pytest.approx(2 / n_bins)
    expected = _histogram_loop(e, labels, n_bins)
    got = float(obj(e, labels))
    assert got == pytest.approx(expected, rel=1e-4 if dtype == torch.float32 else 1e-9, abs=1e-6)


def _objective(name: str) -> torch.nn.Module:
    m = build_method(name, MethodContext(in_dim=8))
    assert isinstance(m, DmlMethod)
    return m.make_objective(5, "fit")


def test_pml_losses_configured_as_papers() -> None:
    c = _objective("contrastive")
    assert isinstance(c.loss, losses.ContrastiveLoss) and (c.loss.pos_margin, c.loss.neg_margin) == (0, 1)
    assert isinstance(c.loss.distance, distances.LpDistance) and c.loss.distance.normalize_embeddings
    t = _objective("triplet")
    assert isinstance(t.loss, losses.TripletMarginLoss) and t.loss.margin == pytest.approx(0.2)
    assert isinstance(t.miner, miners.TripletMarginMiner) and t.miner.type_of_triplets == "semihard"
    m = _objective("margin")
    assert isinstance(m.loss, losses.MarginLoss) and m.loss.margin == pytest.approx(0.2) and m.loss.learn_beta
    assert float(m.loss.beta.detach()) == pytest.approx(1.2)
    assert isinstance(m.miner, miners.DistanceWeightedMiner)
    assert (m.miner.cutoff, m.miner.nonzero_loss_cutoff) == (0.5, 1.4)
    ms = _objective("multisimilarity")
    assert isinstance(ms.loss, losses.MultiSimilarityLoss)
    assert (ms.loss.alpha, ms.loss.beta, ms.loss.base) == (2, 50, 0.5)
    assert isinstance(ms.miner, miners.MultiSimilarityMiner) and ms.miner.epsilon == pytest.approx(0.1)
    pa = _objective("proxy_anchor")
    assert isinstance(pa.loss, losses.ProxyAnchorLoss) and (pa.loss.margin, pa.loss.alpha) == (0.1, 32)
    assert tuple(pa.loss.proxies.shape) == (5, 128)
    assert method_params("proxy_anchor")["proxy_lr_scale"] == 100  # proxies at 100x lr (Kim et al.)
    af = _objective("arcface")
    assert isinstance(af.loss, losses.ArcFaceLoss) and af.loss.scale == 64
    assert af.loss.margin == pytest.approx(0.5, abs=1e-3)  # 28.6 degrees, stored in radians
    ns = _objective("normsoftmax")
    assert isinstance(ns.loss, losses.NormalizedSoftmaxLoss) and ns.loss.temperature == pytest.approx(0.05)


def test_margin_learned_beta_has_its_own_learning_rate() -> None:
    m = build_method("margin", MethodContext(in_dim=8), {"beta_lr": 0.123})
    assert isinstance(m, DmlMethod)
    groups = m.objective_groups(m.make_objective(3, "fit"), 1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 0.123]
    assert groups[0]["params"] == [] and len(groups[1]["params"]) == 1


def test_init_proxies_sets_class_means() -> None:
    means = torch.tensor([[3.0, 4.0], [0.0, -2.0], [1.0, 0.0]])
    unit = means / means.norm(dim=1, keepdim=True)
    pa = losses.ProxyAnchorLoss(3, 2)  # proxies (C, d)
    ns = losses.NormalizedSoftmaxLoss(3, 2)  # W (d, C)
    init_proxies(pa, means)
    init_proxies(ns, means)
    assert torch.allclose(pa.proxies, unit) and torch.allclose(ns.W, unit.t())


def test_every_dml_loss_has_plain_and_adapted_entries() -> None:
    for loss in DML_LOSSES:
        assert METHODS.info(loss.name).family == "dml" and not METHODS.info(loss.name).uses_support
        assert METHODS.info(f"adapted_{loss.name}").uses_support
    assert METHODS.resolve("adapted_hist") == "adapted_histogram"
    assert np.isfinite(float(_objective("histogram")(_emb(6, 128, torch.float32), torch.tensor([0, 0, 1, 1, 2, 2]))))


@pytest.mark.parametrize("dtype", TEST_DTYPES)
def test_histogram_loss_survives_identical_embeddings(dtype: torch.dtype) -> None:
    """Duplicates give cosine similarity 1, which PML's HistogramLoss alone maps to a bin past the end."""
    builder = next(x for x in DML_LOSSES if x.name == "histogram").build
    obj = builder(HistogramParams(n_bins=100), 2)
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=dtype, requires_grad=True)
    loss = obj(e, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and e.grad is not None and torch.isfinite(e.grad).all()
