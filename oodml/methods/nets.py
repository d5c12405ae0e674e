"""Networks and inputs for the two regimes: an embedding head on cached features (`head`), or backbone + head on
images (`full`)."""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.methods.base import FeatureInputs, Inputs
from oodml.seeding import derive_seed

REGIMES = ("head", "full")


def create_backbone(name: str) -> Any:
    """The registered backbone `name` (imported lazily: `oodml.features.backbones`)."""
    from oodml.features.backbones import create_backbone as create

    return create(name)


@functools.lru_cache(maxsize=8)
def backbone_transforms(name: str) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """(eval_transform, train_transform) of a backbone, built once per process."""
    bb = create_backbone(name)
    return bb.eval_transform, bb.train_transform


@dataclass
class ImageInputs:
    """Full-regime inputs: images `rows` of a dataset, through the backbone's transforms.

    Augmented batches (`train=True`) are seeded from (seed, view, the batch's rows), so they are reproducible and
    `view` selects an independent augmentation stream (dmml input views).
    """

    dataset: Any
    rows: np.ndarray
    eval_transform: Callable[..., torch.Tensor]
    train_transform: Callable[..., torch.Tensor]
    seed: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def fetch(self, idx: np.ndarray, *, train: bool = False, view: int = 0) -> torch.Tensor:
        """A (B, 3, H, W) float batch of rows `idx`."""
        idx = np.asarray(idx, dtype=np.int64)
        images = [self.dataset.open(int(self.rows[i])) for i in idx]
        if not train:
            return torch.stack([self.eval_transform(im) for im in images])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, view, idx.tobytes().hex()))
            return torch.stack([self.train_transform(im) for im in images])


_PATH_INDEX: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def dataset_rows(dataset: Any, paths: np.ndarray) -> np.ndarray:
    """Indices into `dataset` of the image ids `paths` (features-file rows -> dataset images)."""
    try:
        index = _PATH_INDEX[dataset]
    except (KeyError, TypeError):
        index = {str(p): i for i, p in enumerate(dataset.paths)}
        with contextlib.suppress(TypeError):
            _PATH_INDEX[dataset] = index
    try:
        return np.array([index[str(p)] for p in paths], dtype=np.int64)
    except KeyError as e:
        where = getattr(dataset, "root", "?")
        raise OodmlError(f"image {e.args[0]!r} of the features file is not in the dataset at {where}; "
                         "pass the --data-root the features were computed from") from None


def make_inputs(regime: str, *, features: FeatureSet | None, rows: np.ndarray, dataset: Any | None = None,
                backbone: str | None = None) -> Inputs:
    """Inputs for a method: cached feature rows (`head`) or images (`full`).

    Args:
        regime: `head` or `full`.
        features: the features file (needed for `head`).
        rows: row indices of the features file (in `full` without `features`: dataset image indices).
        dataset: an ImageDataset (needed for `full`).
        backbone: backbone name whose transforms are used (needed for `full`).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if regime == "head":
        if features is None:
            raise OodmlError("the head regime needs a features file; pass --features or a split file with features")
        return FeatureInputs(torch.from_numpy(np.ascontiguousarray(features.features[rows])))
    if regime == "full":
        if dataset is None or backbone is None:
            raise OodmlError("the full regime needs the images; pass --data-root for the dataset")
        ev, tr = backbone_transforms(backbone)
        if features is not None:
            rows = dataset_rows(dataset, features.paths[rows])
        return ImageInputs(dataset, rows, ev, tr)
    raise OodmlError(f"regime {regime!r} is not one of {', '.join(REGIMES)}")


def make_head(in_dim: int, embed_dim: int, kind: str = "linear", hidden_dim: int = 512) -> nn.Sequential:
    """Linear D -> embed_dim, or an MLP D -> hidden -> BatchNorm -> ReLU -> embed_dim; the last module is the last
    layer.

    The MLP normalises before its ReLU as Scott et al.'s conv blocks do (conv - BN - ReLU): without it, a softmax
    classifier over thousands of source classes (weight transfer on Omniglot with rotations, 3,856 classes) drove every
    hidden unit dead at Adam lr 1e-3 and the embedding became a constant (nearest-prototype accuracy at chance).
    """
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, embed_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, embed_dim))


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode and stop its affine parameters from training (ooDML)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


class EmbeddingNet(nn.Module):
    """trunk (identity on features, or a backbone on images) followed by a head; returns unnormalised embeddings."""

    def __init__(self, trunk: nn.Module, head: nn.Sequential, freeze_bn: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.freeze_bn = freeze_bn
        if freeze_bn:
            freeze_batchnorm(trunk)

    def train(self, mode: bool = True) -> EmbeddingNet:
        """Train mode, keeping frozen BatchNorm layers in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self.trunk)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) unnormalised embeddings."""
        return self.head(self.trunk(x))

    def last_layer(self) -> nn.Module:
        """The head's last layer (what ooDML adapts)."""
        return self.head[-1]


def build_trunk(regime: str, backbone: str) -> tuple[nn.Module, int | None, bool]:
    """(trunk, its output dim or None when it is the features themselves, whether BatchNorm is frozen)."""
    if regime == "head":
        return nn.Identity(), None, False
    if regime != "full":
        raise OodmlError(f"regime {regime!r} is not one of {', '.join(REGIMES)}")
    bb = create_backbone(backbone)
    pretrained = bool(getattr(bb, "pretrained", False))
    if not pretrained:  # from scratch: initialise from the caller's (seeded) torch RNG, so each seed differs
        for mod in bb.modules():
            reset = getattr(mod, "reset_parameters", None)
            if callable(reset):
                reset()
    return bb, int(bb.feature_dim), pretrained


def batched_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: Inputs, device: str,
                    batch_size: int) -> np.ndarray:
    """Apply `fn` to all of `x` in evaluation batches; (N, d) float32 numpy."""
    n = len(x)
    out = []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            xb = x.fetch(np.arange(s, min(n, s + batch_size))).to(device=device, dtype=torch.float32)
            out.append(fn(xb).float().cpu())
    if not out:
        raise OodmlError("nothing to embed: the input set is empty")
    return torch.cat(out).numpy().astype(np.float32, copy=False)
