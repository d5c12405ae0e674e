"""Real data: on CUB-200 subset features (EfficientNet-Lite0), a head-regime multisimilarity embedding trained on
classes 1-25 beats the pretrained features on held-out images of those classes (it learns)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oodml.eval import retrieval_metrics
from oodml.methods import MethodContext, build_method, make_inputs

pytestmark = [pytest.mark.data, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_multisimilarity_beats_pretrained_on_held_out_images(shared_data: Path) -> None:
    from oodml.features.extract import load_or_compute_features

    fs = load_or_compute_features("cub200", data_root=shared_data / "cub200_subset")
    assert len(fs.class_names) == 50 and fs.features.shape[1] == 1280
    rows = fs.select_classes([str(c) for c in sorted(fs.class_names)[:25]])
    # every other image of each class (in path order) trains, the rest are held out
    rank = np.zeros(len(rows), dtype=np.int64)
    for c in np.unique(fs.labels[rows]):
        members = np.flatnonzero(fs.labels[rows] == c)
        rank[members] = np.arange(len(members))
    train, held = rows[rank % 2 == 0], rows[rank % 2 == 1]
    r1 = {}
    for spec in ("pretrained", "multisimilarity"):
        m = build_method(spec, MethodContext(in_dim=1280, seed=0))
        m.fit(make_inputs("head", features=fs, rows=train), fs.labels[train])
        emb = m.embed(make_inputs("head", features=fs, rows=held))
        r1[spec] = retrieval_metrics(emb, fs.labels[held], (1,))["recall@1"]
    assert r1["multisimilarity"] > r1["pretrained"] + 0.02, r1  # measured: 0.822 vs 0.785
