"""Backbone registry contract, the EfficientNet-Lite0 weight conversion, conv4 shapes, clear weight errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from oodml.features.backbones import (BACKBONES, Backbone, convert_lite0_state_dict, create_backbone,
                                      lite0_timm_model, lite0_weights_file)
from oodml.errors import OodmlError

OFFLINE_BUILDABLE = ["efficientnet_lite0", "conv4", "conv4_84"]


def test_registry_lists_the_backbones() -> None:
    assert set(BACKBONES.names()) == {"efficientnet_lite0", "resnet50", "conv4", "conv4_84", "timm:<name>",
                                    "scott_mnist_conv", "scott_omniglot_conv"}
    assert all(BACKBONES.info(n).description for n in BACKBONES.names())


@pytest.mark.parametrize("name", OFFLINE_BUILDABLE + ["resnet50", "timm:mobilenetv3_small_050"])
def test_backbone_contract(name: str) -> None:
    bb = create_backbone(name, pretrained=name in OFFLINE_BUILDABLE)
    assert isinstance(bb, Backbone) and not bb.training
    info_dim = BACKBONES.info(name).feature_dim if not name.startswith("timm:") else None
    assert info_dim in (None, bb.feature_dim)
    gray = Image.new("L", (40, 30), color=200)  # grayscale input -> 3 channels
    x = torch.stack([bb.eval_transform(gray), bb.eval_transform(gray.convert("RGB"))])
    assert x.shape == (2, 3, bb.input_size, bb.input_size)
    with torch.inference_mode():
        y = bb(x)
    assert y.shape == (2, bb.feature_dim) and torch.isfinite(y).all()
    torch.testing.assert_close(y[0], y[1])
    t = bb.train_transform(Image.new("RGB", (50, 50), color=(10, 200, 30)))
    assert t.shape == (3, bb.input_size, bb.input_size)


def test_conv4_dims_and_deterministic_init() -> None:
    assert create_backbone("conv4").feature_dim == 64 and create_backbone("conv4_84").feature_dim == 1600
    state = torch.get_rng_state()
    a, b = create_backbone("conv4"), create_backbone("conv4")
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_lite0_conversion_covers_every_key_strictly() -> None:
    state = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    converted = convert_lite0_state_dict(state)
    model = lite0_timm_model(pretrained=False)
    assert set(converted) == set(model.state_dict()) and len(converted) == len(state)
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())
    with pytest.raises(OodmlError, match="unexpected key"):
        convert_lite0_state_dict({"_blocks.0.bogus.weight": torch.zeros(1), "junk": torch.zeros(1)})


def test_resnet50_without_cached_weights_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(OodmlError, match="not in the torch hub cache .*resnet50-"):
        create_backbone("resnet50")


def test_timm_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(OodmlError, match="unknown timm model 'resnet5O'"):
        create_backbone("timm:resnet5O", pretrained=False)
    with pytest.raises(OodmlError, match="local Hugging Face cache"):
        monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")
        create_backbone("timm:resnet18", pretrained=True)
    with pytest.raises(OodmlError, match="unknown backbone"):
        create_backbone("efficientnet_lite9")


@pytest.mark.data
def test_lite0_classifies_the_cub_albatross_as_imagenet_146(shared_data: Path) -> None:
    from oodml.data import load_dataset

    ds = load_dataset("cub200", shared_data / "cub200_subset").subset_classes(["001.*"])
    bb = create_backbone("efficientnet_lite0")
    x = torch.stack([bb.eval_transform(ds.open(i)) for i in range(3)])
    with torch.inference_mode():
        logits = bb.body(x)
    assert logits.argmax(1).tolist() == [146, 146, 146]  # albatross
