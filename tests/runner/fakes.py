"""Tiny synthetic inputs and fake methods for runner tests (the real methods are exercised in test_acceptance)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from oodml.features.io import FeatureSet
from oodml.methods.base import METHODS, FeatureInputs, Method, MethodContext, MethodInfo
from oodml.splits.spec import Level, SplitSpec
from tests.conftest import make_blobs

#: fit() calls per method name in this process (to see the fit cache at work)
FIT_CALLS: dict[str, int] = {}


def build_split(fs: FeatureSet, *, levels: int = 3, ks: Sequence[int] = (2,), episodes: int = 2, seed: int = 0,
                basenames: bool = False) -> SplitSpec:
    """A hand-built ladder: level i moves i classes of the conventional test half into train and back."""
    rng = np.random.default_rng(seed)
    names = [str(c) for c in fs.class_names]
    half = len(names) // 2
    lvls = []
    for i in range(1, levels + 1):
        train = sorted(names[i:half + i])
        test = sorted(set(names) - set(train))
        eps: dict[str, list[dict[str, list[str]]]] = {}
        for k in ks:
            eps[str(k)] = []
            for _ in range(episodes):
                ep = {}
                for c in test:
                    ids = sorted(str(p) for p in fs.paths[fs.labels == names.index(c)])
                    pick = sorted(rng.choice(ids, size=k, replace=False).tolist())
                    ep[c] = [p.rsplit("/", 1)[-1] for p in pick] if basenames else pick
                eps[str(k)].append(ep)
        lvls.append(Level(level=i, fid=10.0 * i, train_classes=train, test_classes=test, episodes=eps))
    return SplitSpec(dataset=fs.dataset, backbone=fs.backbone, feature_hash=fs.hash, seed=seed, source="test",
                     levels=lvls)


def write_inputs(tmp: Path, *, n_classes: int = 12, per_class: int = 6, dim: int = 8, levels: int = 3,
                 ks: Sequence[int] = (2,), episodes: int = 2, basenames: bool = False) -> tuple[Path, Path]:
    """A features file and a matching split file under `tmp`."""
    fs = make_blobs(n_classes=n_classes, per_class=per_class, dim=dim)
    f = fs.save(tmp / "feats.npz")
    s = build_split(FeatureSet.load(f), levels=levels, ks=ks, episodes=episodes, basenames=basenames)
    return f, s.save(tmp / "splits.json")


class ProjMethod(Method):
    """A random projection fitted with both an explicit seed and the (seeded) global torch RNG."""

    info = MethodInfo("fake_proj", family="baseline", trains=True, uses_support=True, description="test method")

    def __init__(self, ctx: MethodContext, dim: int) -> None:
        self.seed, self.dim, self.w = ctx.seed, dim, torch.zeros(0)

    def fit(self, x: Any, y: np.ndarray) -> None:
        FIT_CALLS[self.info.name] = FIT_CALLS.get(self.info.name, 0) + 1
        g = torch.Generator().manual_seed(self.seed)
        self.w = torch.randn(x.dim, self.dim, generator=g) + 0.1 * torch.randn(x.dim, self.dim)

    def adapt(self, x: Any, y: np.ndarray) -> Method:
        new = copy.copy(self)
        new.w = self.w + 0.05 * torch.randn_like(self.w)
        return new

    def embed(self, x: Any) -> np.ndarray:
        return (x.fetch(np.arange(len(x))) @ self.w).numpy().astype(np.float32)

    def embed_variants(self, x: Any) -> dict[str, np.ndarray]:
        e = self.embed(x)
        return {"": e, "raw": x.fetch(np.arange(len(x))).numpy().astype(np.float32)}

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w = state["w"]


class BoomMethod(ProjMethod):
    """Fails in fit."""

    info = MethodInfo("fake_boom", family="baseline", trains=True, uses_support=True, description="always fails")

    def fit(self, x: Any, y: np.ndarray) -> None:
        raise RuntimeError("boom in fit")


class FewOnlyMethod(ProjMethod):
    """No zero-shot setting and no adaptation (nearest prototype of the unadapted embeddings)."""

    info = MethodInfo("fake_fewonly", family="baseline", trains=False, uses_support=False, description="k>0 only",
                      zero_shot=False)

    def adapt(self, x: Any, y: np.ndarray) -> Method:
        raise AssertionError("uses_support=False must not adapt")


FAKES = {c.info.name: c for c in (ProjMethod, BoomMethod, FewOnlyMethod)}


class FakeApi:
    """The methods contract (oodml/methods/__init__.py) over the fake methods."""

    @staticmethod
    def load_plugins(plugins: Sequence[str] = ()) -> None:
        """Nothing to load."""

    @staticmethod
    def resolve_methods(patterns: str | Sequence[str]) -> list[str]:
        return METHODS.match(list(patterns) if not isinstance(patterns, str) else patterns)

    @staticmethod
    def method_family(spec: str) -> str:
        return METHODS.info(spec).family

    @staticmethod
    def method_params(spec: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        return {"dim": int(overrides.get("dim", overrides.get(f"{spec}.dim", 4)))}

    @staticmethod
    def build_method(spec: str, ctx: MethodContext, overrides: Mapping[str, Any] = {}) -> Method:
        return METHODS.get(spec).factory(ctx, FakeApi.method_params(spec, overrides)["dim"])

    @staticmethod
    def make_inputs(regime: str, *, features: FeatureSet | None, rows: np.ndarray, dataset: Any = None,
                    backbone: str | None = None) -> FeatureInputs:
        assert features is not None
        return FeatureInputs(torch.from_numpy(np.ascontiguousarray(features.features[np.asarray(rows)])))


@contextmanager
def fake_methods(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the fake methods and route the runner's methods API to them; removes them afterwards."""
    import oodml.methods as api

    for name, cls in FAKES.items():
        METHODS.add(cls.info, cls)
    for fn in ("load_plugins", "resolve_methods", "method_family", "method_params", "build_method", "make_inputs"):
        monkeypatch.setattr(api, fn, getattr(FakeApi, fn), raising=False)
    FIT_CALLS.clear()
    try:
        yield
    finally:
        for name in FAKES:
            METHODS._entries.pop(name, None)
