"""Shared fixtures: tiny synthetic data (milliseconds), the real shared datasets, device/dtype from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from oodml.features.io import FeatureSet

REPO = Path(__file__).resolve().parents[1]

#: like PML's TEST_DEVICE / TEST_DTYPES
TEST_DEVICE = torch.device(os.environ.get("OODML_TEST_DEVICE", "cpu"))
TEST_DTYPES = [getattr(torch, d) for d in os.environ.get("OODML_TEST_DTYPES", "float32,float64").split(",")]


def shared_data_dir() -> Path:
    """`$OODML_DATA` if set, else `../shared/data` beside the repository."""
    return Path(os.environ.get("OODML_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (../shared/data). Missing data fails under CI and skips elsewhere."""
    root = shared_data_dir()
    if not (root / "README.md").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"shared data not found at {root}; set OODML_DATA")
        pytest.skip(f"shared data not found at {root}")
    return root


def make_blobs(n_classes: int = 12, per_class: int = 6, dim: int = 8, seed: int = 0, spread: float = 3.0,
               dataset: str = "synthetic") -> FeatureSet:
    """Gaussian blobs with a known class layout, as a FeatureSet (conventional split: first half train)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    feats = centers[labels] + rng.normal(0, 1.0, size=(len(labels), dim))
    names = np.array([f"c{i:03d}" for i in range(n_classes)])
    paths = np.array([f"{names[c]}/img{j:03d}.png" for c in range(n_classes) for j in range(per_class)])
    split = np.array(["train" if i < n_classes // 2 else "test" for i in range(n_classes)])
    meta = {"dataset": dataset, "backbone": "none", "transform": "none"}
    return FeatureSet(feats.astype(np.float32), labels, names, paths, meta, split).sorted()


@pytest.fixture
def blobs() -> FeatureSet:
    """12 classes x 6 points, D = 8."""
    return make_blobs()


@pytest.fixture
def blobs_file(tmp_path: Path) -> Path:
    """A features file of 40 classes x 12 images, D = 16, on disk."""
    return make_blobs(n_classes=40, per_class=12, dim=16).save(tmp_path / "blobs.npz")
