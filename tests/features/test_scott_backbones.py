"""Scott et al. (2018) networks as registered backbones: layers and parameter counts equal to their code's.

The counts are derived by hand from tylersco/adapted_deep_embeddings `models/*_model.py` (MNIST and Omniglot
classes), trainable variables of the embedding net up to `fc1` (128-d), with TF SAME padding on 28 x 28 inputs:
- MNIST: conv1 3*3*1*32 + 32 = 320; conv2 3*3*32*32 + 32 = 9,248; pool -> 14*14*32 = 6,272;
  fc1 6,272*128 + 128 = 802,944; total 812,512.
- Omniglot: conv1 320 + BN beta 32; pool -> 14x14; conv2 9,248 + 32; pool -> 7x7; conv3 9,248 + 32 (no pool);
  7*7*32 = 1,568; fc1 1,568*128 + 128 = 200,832; total 219,744 (BN with center=True, scale=False: one offset per
  channel; the moving mean/variance are not trainable).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from oodml.features.backbones import BACKBONES, CenterOnlyBatchNorm2d, create_backbone

THEIRS = {"scott_mnist_conv": (6272, 812_512), "scott_omniglot_conv": (1568, 219_744)}


def _trainable(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(THEIRS))
def test_parameter_count_equals_their_embedding_net(name: str) -> None:
    dim, total = THEIRS[name]
    bb = create_backbone(name)
    assert bb.feature_dim == dim == BACKBONES.info(name).feature_dim
    net = nn.Sequential(bb, nn.Linear(bb.feature_dim, 128))  # + the method's linear head (embed_dim 128) = fc1
    assert _trainable(net) == total


@pytest.mark.parametrize("name", sorted(THEIRS))
def test_one_channel_unit_range_input_and_shapes(name: str) -> None:
    bb = create_backbone(name)
    img = Image.new("L", (105, 105), color=255)  # Omniglot's size; resized to 28 x 28, scaled to [0, 1]
    x = bb.eval_transform(img)
    assert x.shape == (1, 28, 28) and float(x.max()) == 1.0
    assert torch.equal(x, bb.train_transform(img))  # no augmentation, as in their code
    with torch.no_grad():
        y = bb(torch.stack([x, bb.eval_transform(Image.new("RGB", (28, 28)))]))
    assert y.shape == (2, bb.feature_dim) and torch.isfinite(y).all()


def test_layers_in_their_order() -> None:
    mnist = [type(m).__name__ for m in create_backbone("scott_mnist_conv").body]
    assert mnist == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Flatten"]
    omni = [type(m).__name__ for m in create_backbone("scott_omniglot_conv").body]
    block = ["Conv2d", "CenterOnlyBatchNorm2d", "ReLU"]
    assert omni == block + ["MaxPool2d"] + block + ["MaxPool2d"] + block + ["Flatten"]


def test_center_only_batchnorm_offsets_without_scale() -> None:
    bn = CenterOnlyBatchNorm2d(3)
    assert [n for n, _ in bn.named_parameters()] == ["bias"]
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    y = bn.train()(torch.randn(16, 3, 5, 5) * 4 + 3)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.tensor([1.0, -2.0, 0.5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    # TF momentum 0.1 keeps 10% of the old moving mean: torch momentum 0.9
    assert bn.momentum == pytest.approx(0.9)
