"""The evaluation protocol over arrays: zero-shot per-class values (the class is the unit of a retrieval test set)
on the full-retrieval and the shared-search paths."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from oodml.eval import protocol
from oodml.eval.protocol import EvalData, EvalSeeds, evaluate
from tests.conftest import make_blobs


class Identity:
    """A method that embeds the features as they are and never adapts."""

    info = SimpleNamespace(zero_shot=True, uses_support=False)

    def __init__(self, features: np.ndarray) -> None:
        self.features = features

    def embed_variants(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"": self.features[rows], "half": self.features[rows, : self.features.shape[1] // 2]}


def _data(unequal: bool = True) -> tuple[EvalData, np.ndarray]:
    fs = make_blobs(n_classes=20, per_class=12, dim=6, seed=3, spread=1.5)
    keep = np.ones(len(fs.labels), dtype=bool)
    if unequal:  # classes of different sizes, so a plain mean of class values would differ from the aggregate
        for c in range(0, 20, 3):
            keep[np.flatnonzero(fs.labels == c)[: c % 7 + 1]] = False
    rows = np.flatnonzero(keep)
    rng = np.random.default_rng(0)
    support = np.concatenate([rng.choice(rows[fs.labels[rows] == c], 2, replace=False) for c in range(20)])
    data = EvalData(labels=fs.labels, test_rows=rows, supports={2: [np.sort(support)]}, class_names=fs.class_names)
    return data, fs.features


def _check_classes(metric_rows: list[Any], class_values: list[Any], data: EvalData) -> None:
    rows = [dataclasses.asdict(r) for r in metric_rows]
    classes = [c.to_dict() for c in class_values]
    agg = {(r["variant"], r["metric"]): r for r in rows if r["k"] == 0}
    assert {m for _, m in agg} == {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi"}
    assert not [c for c in classes if c["metric"] == "nmi"]  # NMI stays aggregate only
    assert {c["class"] for c in classes} == {str(data.class_names[c]) for c in np.unique(data.labels[data.test_rows])}
    for (variant, metric), row in agg.items():
        if metric == "nmi":
            continue
        mine = [c for c in classes if c["variant"] == variant and c["metric"] == metric]
        assert all(set(c) == {"variant", "k", "class", "metric", "value", "n_queries"} and c["k"] == 0 for c in mine)
        n = np.array([c["n_queries"] for c in mine])
        v = np.array([c["value"] for c in mine])
        assert n.sum() == row["n_queries"]
        assert float(np.sum(n * v) / n.sum()) == pytest.approx(row["value"], abs=1e-12)
        assert float(np.mean(v)) != pytest.approx(row["value"], abs=1e-9)  # the weighting matters here


def test_zero_shot_classes_on_the_full_retrieval_path() -> None:
    data, feats = _data()
    rows, classes = protocol.zero_shot(Identity(feats), lambda r: r, data, EvalSeeds("key", "cell"))
    _check_classes(rows, classes, data)
    # one class by hand: recall@1 of class c012 = share of its images whose nearest other test image is of c012
    emb = feats[data.test_rows]
    lab = data.labels[data.test_rows]
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    mine = lab == 12
    expected = float(np.mean(lab[np.argmin(d[mine], axis=1)] == 12))
    got = next(c for c in classes if c.class_name == "c012" and c.metric == "recall@1" and c.variant == "")
    assert got.value == pytest.approx(expected) and got.n_queries == int(mine.sum())


def test_zero_shot_classes_on_the_shared_search_path(monkeypatch: pytest.MonkeyPatch) -> None:
    data, feats = _data()
    calls: list[bool] = []
    real = protocol.shared_search

    def spy(*args: Any) -> Any:
        calls.append(True)
        return real(*args)

    monkeypatch.setattr(protocol, "shared_search", spy)
    rows, episodes, classes = evaluate(Identity(feats), lambda r: r, data, (0, 2), EvalSeeds("key", "cell"))
    assert calls and episodes and all(e.k == 2 for e in episodes)
    _check_classes(rows, classes, data)
    full_rows, full_classes = protocol.zero_shot(Identity(feats), lambda r: r, data, EvalSeeds("key", "cell"))
    assert classes == full_classes  # integer-free float data, no near ties at this size: the same values
    assert [r for r in rows if r.k == 0] == full_rows
