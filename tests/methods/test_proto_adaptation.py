"""Adapted prototypical networks' target episodes (Scott et al. 2018, issue 18): each adaptation episode redraws
every target class's k support images into max(1, floor(fraction x k)) shots and the rest as queries
(`adapt_support_fraction`), and the `plateau` stop can watch the episodic prototype accuracy (`adapt_score`)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest
import torch

from oodml.config import build_run_cfg, canonical_json, cfg_hash
from oodml.errors import OodmlError
from oodml.methods import MethodContext, build_method, make_inputs, method_params
from oodml.methods.losses import episode_split, prototypical_loss
from oodml.methods.proto import ProtoMethod, episodic_accuracy, whole_episode
from oodml.seeding import derive_seed
from tests.conftest import make_blobs

pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

TINY = {"iterations": 6, "batch_size": 12, "embed_dim": 16, "ways": 4, "shots": 2, "queries": 2}
SCOTT = {"adapt_support_fraction": 0.75, "adapt_stop": "plateau", "adapt_score": "episodes",
         "adapt_score_episodes": 5, "adapt_check_every": 2, "adapt_patience": 4, "adapt_iterations": 12}


def _params(**values: Any) -> Any:
    return build_method("adapted_proto", MethodContext(seed=0, in_dim=8), {**TINY, **values}).params


def _split(y: np.ndarray, shots: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The support and query rows of one adaptation episode of the rows labelled `y`."""
    idx = whole_episode(y, rng)
    _, support, query = episode_split(torch.as_tensor(y[idx]), shots)
    return idx[support.numpy()], idx[query.numpy()]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 10, 20, 50, 100, 1000])
def test_episode_shots_are_floor_of_the_fraction_and_at_least_one(k: int) -> None:
    assert _params(adapt_support_fraction=0.75).adapt_shots(k) == max(1, math.floor(0.75 * k))
    assert _params().adapt_shots(k) == max(1, k // 2)  # the default: oodml's original k // 2
    assert _params(adapt_support_fraction=0.29).adapt_shots(100) == 29  # 0.29 x 100 = 28.999... in floats


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_support_and_queries_are_disjoint_and_cover_each_class(k: int) -> None:
    y = np.repeat(np.arange(6), k)
    shots = _params(adapt_support_fraction=0.75).adapt_shots(k)
    sup, qry = _split(y, shots, np.random.default_rng(0))
    assert not set(sup) & set(qry) and sorted([*sup, *qry]) == list(range(len(y)))
    assert np.array_equal(np.bincount(y[sup]), np.full(6, shots))
    assert np.array_equal(np.bincount(y[qry]), np.full(6, k - shots))


def test_one_image_per_class_is_support_and_query() -> None:
    sup, qry = _split(np.arange(5), 1, np.random.default_rng(0))
    assert sorted(sup) == sorted(qry) == list(range(5))


def test_episodes_are_seeded_and_redrawn() -> None:
    y = np.repeat(np.arange(6), 10)

    def draws(seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(derive_seed(seed, "protonet", "adapt", "score"))
        return [np.sort(_split(y, 7, rng)[0]) for _ in range(3)]

    a, b, c = draws(0), draws(0), draws(1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))  # same seed: same episodes
    assert not any(np.array_equal(u, v) for u, v in zip(a, c, strict=True))  # another seed: others
    assert not np.array_equal(a[0], a[1])  # every episode redraws the split


def test_episode_loss_equals_a_hand_computation() -> None:
    # k = 4, fraction 0.75 -> 3 shots, 1 query per class; 1-d embeddings in batch order
    # class 0: shots 0, 2, 1 (prototype 1), query 3; class 1: shots 4, 2, 3 (prototype 3), query 0
    e = torch.tensor([[0.0], [2.0], [1.0], [3.0], [4.0], [2.0], [3.0], [0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    shots = _params(adapt_support_fraction=0.75).adapt_shots(4)
    # query 3 (class 0): logits -(3-1)^2 = -4, -(3-3)^2 = 0; query 0 (class 1): logits -1, -9
    expected = (math.log(1 + math.exp(4)) + math.log(1 + math.exp(8))) / 2
    assert shots == 3
    assert float(prototypical_loss(e, labels, shots)) == pytest.approx(expected, rel=1e-12)


def test_adaptation_objective_uses_the_fraction() -> None:
    fs = make_blobs(n_classes=8, per_class=6, dim=8, seed=3)
    src, sup = np.flatnonzero(fs.labels < 4), np.flatnonzero(fs.labels >= 4)
    for fraction, shots in [(0.5, 3), (0.75, 4)]:
        m = build_method("adapted_proto", MethodContext(seed=0, in_dim=8),
                         {**TINY, "adapt_support_fraction": fraction, "adapt_iterations": 1})
        assert isinstance(m, ProtoMethod)
        m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
        a = m.adapt(make_inputs("head", features=fs, rows=sup), fs.labels[sup])
        assert isinstance(a, ProtoMethod) and a.adapt_episode_shots == shots
        assert [o.shots for o in a.objectives] == [shots]  # type: ignore[attr-defined]


def test_episodic_score_on_hand_built_embeddings() -> None:
    # 4 images per class, 3 shots, 1 query: classes 0 (all at 0) and 1 (all at 100) are always right; class 2
    # (images at -50, 50, -50, 50) is always wrong: its prototype is -50/3 or 50/3, its query -50 or 50, which is
    # nearer class 0's prototype (0, distance 50) or class 1's (100, distance 50) than its own (distance 66.7)
    e = torch.tensor([[0.0]] * 4 + [[100.0]] * 4 + [[-50.0], [50.0], [-50.0], [50.0]])
    y = np.repeat(np.arange(3), 4)
    assert episodic_accuracy(e, y, 3, 20, np.random.default_rng(0)) == pytest.approx(2 / 3)
    separated = torch.tensor([[100.0 * c + 0.1 * j] for c in range(3) for j in range(4)])
    assert episodic_accuracy(separated, y, 2, 7, np.random.default_rng(1)) == 1.0
    assert episodic_accuracy(e[::4], np.arange(3), 1, 5, np.random.default_rng(0)) is None  # k = 1: no query


def test_episodic_score_ignores_classes_without_queries() -> None:
    # class 0: two images at the origin, no more than the 2 shots, so both support and query and not scored (they
    # would be right); class 1: an equilateral triangle around the origin, so its query x has its prototype at -x/2
    # (distance 1.5) and class 0's at distance 1: always wrong
    angles = np.deg2rad([90.0, 210.0, 330.0])
    e = torch.tensor([[0.0, 0.0], [0.0, 0.0], *np.stack([np.cos(angles), np.sin(angles)], 1).tolist()])
    assert episodic_accuracy(e, np.array([0, 0, 1, 1, 1]), 2, 10, np.random.default_rng(0)) == 0.0


def test_defaults_keep_config_hashes_and_params() -> None:
    # values at the commit before these parameters existed: cfg_hash and the sha1 of adapted_proto's resolved
    # parameters (what its cell ids hash), for two shipped configs that run it
    pinned = {"baselines/scott2018_omniglot_5way_plateau.yaml": ("5b7ef886f067a1188714ccee8669dcecfc16c304",
                                                                 "185069e985a2bff7b73bc09a779d670cc363e91c"),
              "baselines/oodml_cub200_subset_ownloss.yaml": ("50c86812e14c6169b8046a5e2a80d292cf701562",
                                                             "8309ed1ab6d62b8902d180726a7e846989207e0e")}
    for path, (config, params) in pinned.items():
        cfg = build_run_cfg({}, path)
        resolved = method_params("adapted_proto", dict(cfg.method_params))
        assert cfg_hash(cfg) == config
        assert hashlib.sha1(canonical_json(resolved).encode()).hexdigest() == params
    new = {"adapt_support_fraction", "adapt_score", "adapt_score_episodes"}
    assert not new & set(method_params("adapted_proto"))
    assert new <= set(method_params("adapted_proto", SCOTT))


@pytest.mark.parametrize("bad,needle", [({"adapt_support_fraction": 0.0}, r"in \(0, 1\)"),
                                        ({"adapt_support_fraction": 1.0}, r"in \(0, 1\)"),
                                        ({"adapt_score": "nn"}, "one of loo_nn, episodes"),
                                        ({"adapt_score": "episodes"}, "set adapt_stop=plateau"),
                                        ({**SCOTT, "adapt_score_episodes": 0}, "adapt_score_episodes must be >= 1")])
def test_bad_values_are_rejected(bad: dict[str, Any], needle: str) -> None:
    with pytest.raises(OodmlError, match=needle):
        method_params("adapted_proto", bad)


def _fit(data: tuple, seed: int = 0, **extra: Any) -> ProtoMethod:
    fs, src = data[0], data[1]
    m = build_method("adapted_proto", MethodContext(seed=seed, in_dim=8), {**TINY, **SCOTT, **extra})
    assert isinstance(m, ProtoMethod)
    m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
    return m


@pytest.fixture(scope="module")
def data() -> tuple:
    fs = make_blobs(n_classes=12, per_class=6, dim=8, seed=3, spread=1.0)
    src, tgt = np.flatnonzero(fs.labels < 6), np.flatnonzero(fs.labels >= 6)
    sup = np.concatenate([np.flatnonzero(fs.labels == c)[:4] for c in range(6, 12)])
    return fs, src, tgt, sup


def test_scott_adaptation_runs_fit_adapt_embed(data: tuple) -> None:
    fs, _, tgt, sup = data
    m = _fit(data)
    xs, xt = make_inputs("head", features=fs, rows=sup), make_inputs("head", features=fs, rows=tgt)
    score = m.support_score(xs, fs.labels[sup] - 6)
    assert score is not None and 0.0 <= score <= 1.0
    a = m.adapt(xs, fs.labels[sup])
    e = a.embed(xt)
    assert e.shape == (len(tgt), 16) and np.isfinite(e).all()
    assert not np.array_equal(e, m.embed(xt))  # it adapted
    again = _fit(data).adapt(xs, fs.labels[sup]).embed(xt)
    np.testing.assert_array_equal(again, e)  # episodes and scores come from the cell seed
    one = np.concatenate([np.flatnonzero(fs.labels == c)[:1] for c in range(6, 12)])
    x1 = make_inputs("head", features=fs, rows=one)
    assert m.support_score(x1, np.arange(6)) is None  # k = 1: nothing to score, not adapted
    np.testing.assert_array_equal(m.adapt(x1, fs.labels[one]).embed(xt), m.embed(xt))


def test_scott_score_drives_the_plateau_stop(data: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    # the stop scores with the episodic accuracy, on fresh episodes each time from the seeded generator
    fs, _, _, sup = data
    m = _fit(data, adapt_iterations=8, adapt_check_every=2, adapt_patience=8)
    calls: list[float | None] = []
    original = episodic_accuracy

    def spy(*args: Any) -> float | None:
        out = original(*args)
        calls.append(out)
        return out

    monkeypatch.setattr("oodml.methods.proto.episodic_accuracy", spy)
    m.adapt(make_inputs("head", features=fs, rows=sup), fs.labels[sup])
    assert len(calls) == 1 + 4  # the can-we-score check, then every 2nd of 8 steps
    assert all(c is not None and 0.0 <= c <= 1.0 for c in calls)
