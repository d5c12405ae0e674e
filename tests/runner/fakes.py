"""Tiny synthetic inputs and fake methods for runner tests (the real methods are exercised in test_acceptance)."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oodml.features.io import FeatureSet
from oodml.methods import METHODS, Method, MethodContext, MethodInfo
from oodml.splits.frechet import frechet_distance
from oodml.splits.spec import Level, SplitSpec
from tests.conftest import make_blobs

#: fit() calls per method name in this process (to see the fit cache at work)
FIT_CALLS: dict[str, int] = {}


def build_split(fs: FeatureSet, *, levels: int = 3, ks: Sequence[int] = (2,), episodes: int = 2, seed: int = 0,
                basenames: bool = False) -> SplitSpec:
    """A hand-built ladder: level i moves i classes of the conventional test half into train and back; the levels
    carry their FIDs on `fs` and are numbered in rising FID."""
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
        lvls.append(Level(level=i, fid=_fid(fs, train, test), train_classes=train, test_classes=test, episodes=eps))
    lvls.sort(key=lambda lv: lv.fid)  # levels rise in FID, as in a real split file
    for number, lv in enumerate(lvls, start=1):
        lv.level = number
    return SplitSpec(dataset=fs.dataset, backbone=fs.backbone, feature_hash=fs.hash, seed=seed, source="test",
                     levels=lvls)


def _fid(fs: FeatureSet, train: list[str], test: list[str]) -> float:
    index, means = fs.class_index(), fs.class_means()
    return frechet_distance(means[[index[c] for c in train]], means[[index[c] for c in test]])


def write_inputs(tmp: Path, *, n_classes: int = 12, per_class: int = 6, dim: int = 8, levels: int = 3,
                 ks: Sequence[int] = (2,), episodes: int = 2, basenames: bool = False) -> tuple[Path, Path]:
    """A features file and a matching split file under `tmp`."""
    fs = make_blobs(n_classes=n_classes, per_class=per_class, dim=dim)
    f = fs.save(tmp / "feats.npz")
    s = build_split(FeatureSet.load(f), levels=levels, ks=ks, episodes=episodes, basenames=basenames)
    return f, s.save(tmp / "splits.json")


@dataclass(frozen=True)
class FakeParams:
    """Hyperparameters of the fake methods."""

    dim: int = 4


class ProjMethod(Method):
    """A random projection fitted with both an explicit seed and the (seeded) global torch RNG."""

    info = MethodInfo("fake_proj", family="baseline", trains=True, uses_support=True, description="test method",
                      params=FakeParams)

    def __init__(self, info: MethodInfo, ctx: MethodContext, params: FakeParams) -> None:
        self.seed, self.dim, self.w = ctx.seed, params.dim, torch.zeros(0)

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

    info = MethodInfo("fake_boom", family="baseline", trains=True, uses_support=True, description="always fails",
                      params=FakeParams)

    def fit(self, x: Any, y: np.ndarray) -> None:
        raise RuntimeError("boom in fit")


class FewOnlyMethod(ProjMethod):
    """No zero-shot setting and no adaptation (nearest prototype of the unadapted embeddings)."""

    info = MethodInfo("fake_fewonly", family="baseline", trains=False, uses_support=False, description="k>0 only",
                      zero_shot=False, params=FakeParams)

    def adapt(self, x: Any, y: np.ndarray) -> Method:
        raise AssertionError("uses_support=False must not adapt")


class SlowMethod(ProjMethod):
    """Sleeps in fit (`FAKE_SLOW_S` seconds), so a test can kill a run while cells are in flight."""

    info = MethodInfo("fake_slow", family="baseline", trains=True, uses_support=True, description="sleeps",
                      params=FakeParams)

    def fit(self, x: Any, y: np.ndarray) -> None:
        time.sleep(float(os.environ.get("FAKE_SLOW_S", "0.3")))
        super().fit(x, y)


class DieMethod(ProjMethod):
    """Kills its own process in fit, like an out-of-memory kill (only run it in a worker process)."""

    info = MethodInfo("fake_die", family="baseline", trains=True, uses_support=True, description="dies",
                      params=FakeParams)

    def fit(self, x: Any, y: np.ndarray) -> None:
        os._exit(3)


FAKES = {c.info.name: c for c in (ProjMethod, BoomMethod, FewOnlyMethod, SlowMethod, DieMethod)}


def register() -> None:
    """Add the fake methods to METHODS (idempotent); also what `--plugin tests.runner.fake_plugin` does."""
    for name, cls in FAKES.items():
        if name not in METHODS:
            METHODS.add(cls.info, cls)


def unregister() -> None:
    """Remove the fake methods from METHODS."""
    for name in FAKES:
        METHODS._entries.pop(name, None)


@contextmanager
def fake_methods() -> Iterator[None]:
    """The fake methods, registered for the duration of the block."""
    register()
    FIT_CALLS.clear()
    try:
        yield
    finally:
        unregister()
