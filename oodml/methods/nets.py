"""Networks and inputs for the two regimes: an embedding head on cached features (`head`), or backbone + head on
images (`full`)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
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


def default_loader_workers() -> int:
    """Decode/augment worker processes for full-regime batches: with CUDA, up to 8 (leaving a core to the training
    process); on CPU none, so that CPU-only runs (one thread per cell, `--workers` cells in parallel) stay as they
    were."""
    if not torch.cuda.is_available():
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


#: a batch request: (image rows as int64 bytes, train, view)
_Request = tuple[bytes, bool, int]


class _Requests(torch.utils.data.Sampler):  # type: ignore[type-arg]
    """The DataLoader's sampler: yields the current stream's batch requests, remembering each one handed out."""

    def __init__(self) -> None:
        self.source: Iterator[_Request] = iter(())
        self.issued: collections.deque[_Request] = collections.deque()

    def __iter__(self) -> Iterator[_Request]:
        for req in self.source:
            self.issued.append(req)
            yield req


class _Batches(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Map-style view of an ImageInputs whose "index" is a batch request; runs in the DataLoader's workers.

    It holds a loader-less copy of the inputs, so that inputs -> loader -> dataset is no reference cycle: dropping
    the inputs shuts their workers down at once (a cycle would leave that to the garbage collector, which may run it
    in a forked child that cannot stop its parent's workers)."""

    def __init__(self, inputs: ImageInputs) -> None:
        self.inputs = inputs

    def __getitem__(self, req: _Request) -> torch.Tensor:
        return self.inputs.compute(np.frombuffer(req[0], dtype=np.int64), train=req[1], view=req[2])


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


@dataclass
class ImageInputs:
    """Full-regime inputs: images `rows` of a dataset, through the backbone's transforms.

    Augmented batches (`train=True`) are seeded from (seed, view, the batch's rows), so they are reproducible and
    `view` selects an independent augmentation stream (dmml input views). With `loader_workers > 0`, batches
    announced with `prefetch` are decoded and augmented ahead of time in a DataLoader's persistent worker
    processes (pinned memory when CUDA is there); each batch is computed by the same code as in process, so the
    tensors are identical either way.
    """

    dataset: Any
    rows: np.ndarray
    eval_transform: Callable[..., torch.Tensor]
    train_transform: Callable[..., torch.Tensor]
    seed: int = 0
    loader_workers: int = 0
    pin_memory: bool = False
    _loader: Any = field(default=None, init=False, repr=False, compare=False)
    _requests: _Requests | None = field(default=None, init=False, repr=False, compare=False)
    _stream: Iterator[torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    #: batches served from the workers so far
    prefetched: int = field(default=0, init=False, compare=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle/copy without the loader (worker processes get their own copy of the inputs only)."""
        state = dict(self.__dict__)
        state.update(_loader=None, _requests=None, _stream=None)
        return state

    def compute(self, idx: np.ndarray, *, train: bool = False, view: int = 0) -> torch.Tensor:
        """Decode and transform rows `idx` in this process: a (B, 3, H, W) float batch."""
        idx = np.asarray(idx, dtype=np.int64)
        images = [self.dataset.open(int(self.rows[i])) for i in idx]
        if not train:
            return torch.stack([self.eval_transform(im) for im in images])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, view, idx.tobytes().hex()))
            return torch.stack([self.train_transform(im) for im in images])

    def prefetch(self, requests: Iterable[tuple[np.ndarray, bool, int]], *, replace: bool = True) -> None:
        """Announce the coming `fetch` calls, in order, as (rows, train, view); the workers compute them ahead.

        The iterable is read lazily (a few batches ahead of the consumer). A `fetch` that is not the next announced
        one is computed in process; a new `prefetch` drops what is left of the previous one, unless `replace` is
        False and that one is still in flight (then the new one is computed in process). No-op without workers.
        """
        if self.loader_workers < 1 or (not replace and self._requests is not None and self._requests.issued):
            return
        if self._loader is None:
            self._requests = _Requests()
            self._loader = torch.utils.data.DataLoader(
                _Batches(dataclasses.replace(self, loader_workers=0)), batch_size=None, sampler=self._requests,
                num_workers=self.loader_workers, pin_memory=self.pin_memory, persistent_workers=True,
                prefetch_factor=2, worker_init_fn=_worker_init)
        assert self._requests is not None
        self._requests.issued.clear()
        self._requests.source = ((np.asarray(i, dtype=np.int64).tobytes(), bool(t), int(v)) for i, t, v in requests)
        self._stream = iter(self._loader)

    def fetch(self, idx: np.ndarray, *, train: bool = False, view: int = 0) -> torch.Tensor:
        """A (B, 3, H, W) float batch of rows `idx` (from the workers when it is the next prefetched one)."""
        idx = np.asarray(idx, dtype=np.int64)
        req = self._requests
        if self._stream is not None and req is not None and req.issued \
                and req.issued[0] == (idx.tobytes(), bool(train), int(view)):
            req.issued.popleft()
            self.prefetched += 1
            return next(self._stream)
        return self.compute(idx, train=train, view=view)


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
                backbone: str | None = None, loader_workers: int | None = None) -> Inputs:
    """Inputs for a method: cached feature rows (`head`) or images (`full`).

    Args:
        regime: `head` or `full`.
        features: the features file (needed for `head`).
        rows: row indices of the features file (in `full` without `features`: dataset image indices).
        dataset: an ImageDataset (needed for `full`).
        backbone: backbone name whose transforms are used (needed for `full`).
        loader_workers: `full`: decode/augment processes (default `default_loader_workers()`: 0 without CUDA).
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
        workers = default_loader_workers() if loader_workers is None else loader_workers
        return ImageInputs(dataset, rows, ev, tr, loader_workers=workers, pin_memory=torch.cuda.is_available())
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


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the full regime's backbone on `device`: bf16 on a CUDA GPU that supports it, else None
    (float32; always on CPU, so that CPU results stay bit-identical)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """`torch.autocast` to `amp_dtype(device)`, or a no-op context where that is None."""
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


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
        self._channels_last = False
        if freeze_bn:
            freeze_batchnorm(trunk)

    def train(self, mode: bool = True) -> EmbeddingNet:
        """Train mode, keeping frozen BatchNorm layers in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self.trunk)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) unnormalised embeddings.

        A backbone trunk on CUDA runs channels_last under bf16 autocast where the GPU supports bf16 (`amp_dtype`);
        the head and the loss stay float32. On CPU nothing changes (float32, default memory format)."""
        if isinstance(self.trunk, nn.Identity) or x.device.type != "cuda":
            return self.head(self.trunk(x))
        if not self._channels_last:
            self.trunk.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self._channels_last = True
        with autocast(x.device):
            z = self.trunk(x.contiguous(memory_format=torch.channels_last))
        return self.head(z.float())

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
    prefetch = getattr(x, "prefetch", None)
    if prefetch is not None:  # images: decoded ahead in worker processes (not replacing a training stream)
        prefetch(((np.arange(s, min(n, s + batch_size)), False, 0) for s in range(0, n, batch_size)), replace=False)
    with torch.no_grad():
        for s in range(0, n, batch_size):
            xb = x.fetch(np.arange(s, min(n, s + batch_size))).to(device=device, dtype=torch.float32,
                                                                  non_blocking=True)
            out.append(fn(xb).float().cpu())
    if not out:
        raise OodmlError("nothing to embed: the input set is empty")
    return torch.cat(out).numpy().astype(np.float32, copy=False)
