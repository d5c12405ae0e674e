"""The `full` regime: backbone + head trained end to end on tiny images (conv4 from scratch, 28 x 28, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from oodml.data.base import ArraySource, ImageDataset
from oodml.features.io import FeatureSet
from oodml.methods import EmbeddingMethod, ImageInputs, MethodContext, build_method, make_inputs
from oodml.methods.nets import EmbeddingNet, make_head

pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

TINY = {"iterations": 2, "adapt_iterations": 2, "batch_size": 8, "embed_dim": 8, "ways": 3, "shots": 1,
        "queries": 1, "dmml_models": 2}
SPECS = ["pretrained", "multisimilarity", "adapted_proto", "weight_transfer", "adapted_margin+sec", "triplet+dmml",
         "baseline"]


@pytest.fixture(scope="module")
def images() -> ImageDataset:
    """8 random 28 x 28 grayscale images per class, 6 classes (a class-dependent brightness so classes differ)."""
    rng = np.random.default_rng(0)
    n_classes, per = 6, 8
    arrays = np.stack([np.clip(rng.normal(40 * (i // per) + 20, 30, (28, 28)), 0, 255)
                       for i in range(n_classes * per)]).astype(np.uint8)
    paths = [f"img/{i:05d}" for i in range(len(arrays))]
    labels = np.repeat(np.arange(n_classes), per)
    return ImageDataset("tiny", Path("."), paths, labels, [f"c{c}" for c in range(n_classes)], None,
                        ArraySource({"img": arrays}, "test"))


def _inputs(ds: ImageDataset, rows: np.ndarray) -> ImageInputs:
    x = make_inputs("full", features=None, rows=rows, dataset=ds, backbone="conv4")
    assert isinstance(x, ImageInputs)
    return x


@pytest.mark.parametrize("spec", SPECS)
def test_full_regime_contract(spec: str, images: ImageDataset) -> None:
    src = np.flatnonzero(images.labels < 3)
    sup = np.concatenate([np.flatnonzero(images.labels == c)[:2] for c in range(3, 6)])
    tgt = np.flatnonzero(images.labels >= 3)

    def run(seed: int) -> tuple:
        m = build_method(spec, MethodContext(regime="full", backbone="conv4", seed=seed), TINY)
        m.fit(_inputs(images, src), images.labels[src])
        before = m.state_dict()
        a = m.adapt(_inputs(images, sup), images.labels[sup])
        return m, a, before, a.embed_variants(_inputs(images, tgt))

    m, a, before, out = run(0)
    for emb in out.values():
        assert emb.shape[0] == len(tgt) and emb.dtype == np.float32 and np.isfinite(emb).all()
    _, _, _, again = run(0)
    for k in out:
        np.testing.assert_array_equal(out[k], again[k])
    after = m.state_dict()
    if isinstance(m, EmbeddingMethod):
        for s1, s2 in zip(before["nets"], after["nets"]):
            assert all(torch.equal(s1[k], s2[k]) for k in s1)
        assert m.grad_probe(_inputs(images, src), images.labels[src], "fit") == []
        names = {n for n, _ in m.nets[0].named_parameters()}
        assert any(n.startswith("trunk.") for n in names)  # the backbone is part of the trained model
        if m.info.uses_support:
            assert isinstance(a, EmbeddingMethod)
            if a.params.adapt_scope == "last":  # the backbone, BatchNorm statistics included, is not adapted
                t0, t1 = m.nets[0].trunk.state_dict(), a.nets[0].trunk.state_dict()
                assert all(torch.equal(t0[k], t1[k]) for k in t0)
            assert a.grad_probe(_inputs(images, sup), images.labels[sup], "adapt") == []


def test_full_inputs_map_feature_rows_to_images(images: ImageDataset) -> None:
    """With a features file, rows are features rows; they are mapped to the dataset's images by image id."""
    order = np.arange(len(images))[::-1]
    fs = FeatureSet(np.zeros((len(images), 2)), images.labels[order], images.class_names,
                    np.array(images.paths)[order])  # FeatureSet keeps the given order here
    x = make_inputs("full", features=fs, rows=np.array([0, 1]), dataset=images, backbone="conv4")
    assert isinstance(x, ImageInputs)
    assert [images.paths[r] for r in x.rows] == [fs.paths[0], fs.paths[1]]


def test_augmented_batches_reproducible_and_views_differ(images: ImageDataset) -> None:
    x = _inputs(images, np.arange(8))
    idx = np.arange(4)
    a, b = x.fetch(idx, train=True, view=0), x.fetch(idx, train=True, view=0)
    assert torch.equal(a, b)
    assert not torch.equal(a, x.fetch(idx, train=True, view=1))
    assert a.shape == (4, 3, 28, 28)


def test_frozen_batchnorm_stays_frozen() -> None:
    """Pretrained backbones keep BatchNorm statistics and affine parameters fixed, in train mode too (ooDML)."""
    trunk = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    net = EmbeddingNet(trunk, make_head(4, 3), freeze_bn=True).train()
    bn = trunk[1]
    assert not bn.training and not any(p.requires_grad for p in bn.parameters())
    mean = bn.running_mean.clone()
    net(torch.randn(8, 4) * 5 + 3).sum().backward()
    assert torch.equal(mean, bn.running_mean)
    assert trunk[0].weight.grad is not None
