"""`oodml embed`: dataset images -> backbone features file (docs/formats.md), batched, decoded by a worker pool, the
forward pass on ONNX Runtime or torch (`features/runtime.py`), cached on disk by dataset content + backbone (and its
weights) + transform + runtime."""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import shutil
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from oodml.data import ImageDataset, load_dataset
from oodml.errors import OodmlError
from oodml.features.backbones import (DEFAULT_BACKBONE, Backbone, backbone_weights_id, canonical_backbone,
                                      create_backbone)
from oodml.features.cache import cache_key, cache_path, find_cached_features, read_meta
from oodml.features.decode import EvalImages, check_decode
from oodml.features.io import FeatureSet
from oodml.features.runtime import OnnxForward, TorchForward, forward_chunk, make_forward, resolve_runtime
from oodml.io import JsonMemo, atomic_write
from oodml.progress import log, progress

__all__ = ["compute_features", "embed_dataset", "find_cached_features", "forward_chunk", "load_or_compute_features"]


def default_workers(n_images: int) -> int:
    """Decoding processes: none for small jobs, else up to 4, leaving one core to the forward pass."""
    if n_images < 256:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class _Images(torch.utils.data.Dataset):
    """(index, tensor, error) per image; an unreadable image becomes an error message instead of an exception, so
    that the main process can raise it as one clean line (DataLoader would wrap it in a traceback)."""

    def __init__(self, ds: ImageDataset, transform: Any, decode: str = "exact") -> None:
        self.ds, self.images = ds, EvalImages(ds, transform, decode)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, torch.from_numpy(self.images(i)), None
        except OodmlError as e:
            return i, None, str(e)


def _collate(batch: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[np.ndarray, torch.Tensor | None,
                                                                                 str | None]:
    idx = np.array([b[0] for b in batch], dtype=np.int64)
    errors = [b[2] for b in batch if b[2]]
    if errors:
        return idx, None, errors[0]
    return idx, torch.stack([b[1] for b in batch if b[1] is not None]), None


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def default_decode_threads() -> int:
    """Decoding threads beside an ONNX Runtime forward: one per 4 cores, at least 1, at most 4 (a thread decodes and
    resizes a CUB image in ~3 ms, about 1/10 of Lite0's forward per image on one core)."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


_Batch = tuple[np.ndarray, torch.Tensor | None, str | None]
_T = TypeVar("_T")

#: niceness added to the decoding threads (Linux): the forward pass's threads get the cores first and decoding fills
#: their idle gaps, instead of delaying one of them and with it each of the forward pass's parallel steps
DECODE_NICE = 5


def _lower_priority() -> None:
    """Raise the calling thread's niceness by DECODE_NICE where the OS has per-thread priorities (Linux)."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICE)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for a block (the transforms' small tensor ops: with 2 threads on a loaded
    2-core machine each op waits for a second core, ~10x slower per image)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _decoded_in_threads(ds: ImageDataset, transform: Any, batch_size: int, threads: int, decode: str = "exact",
                        ) -> Generator[_Batch, None, None]:
    """The batches of `ds` in order, decoded by `threads` threads that work ahead of the consumer (at most
    `threads + 1` batches in flight): libjpeg-turbo's and Pillow's decode, Pillow's resize and numpy's table look-up
    release the GIL, so decoding runs while the caller's forward pass (which releases it too) computes.
    `threads=0`: decoded in the calling thread."""
    images = _Images(ds, transform, decode)
    starts = range(0, len(ds), batch_size)

    def load(s: int) -> _Batch:
        return _collate([images[i] for i in range(s, min(len(ds), s + batch_size))])

    if threads == 0:
        yield from (load(s) for s in starts)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="oodml-decode", initializer=_lower_priority) as pool:
        yield from _in_order(pool, load, starts, threads + 1)


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[int], _T], items: Iterable[int], ahead: int,
              ) -> Generator[_T, None, None]:
    """fn(item) for each item, computed on `pool` with at most `ahead` calls in flight, yielded in order; calls not
    started when the consumer stops are cancelled."""
    pending: collections.deque[Future[_T]] = collections.deque()
    todo = iter(items)
    try:
        for s in itertools.islice(todo, ahead):
            pending.append(pool.submit(fn, s))
        while pending:
            done = pending.popleft().result()
            for s in itertools.islice(todo, 1):
                pending.append(pool.submit(fn, s))
            yield done
    finally:
        for f in pending:
            f.cancel()


def _in_lanes(ds: ImageDataset, transform: Any, batch_size: int, lanes: int, decode: str,
              forward_one: Callable[[torch.Tensor], np.ndarray],
              ) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """(indices, features) of the batches of `ds` in order: `lanes` threads each decode a whole batch and run it
    through `forward_one` (a single-threaded forward pass; at most 2 x `lanes` batches in flight). Decoding, the
    transform and ONNX Runtime release the GIL, so the lanes compute side by side with no thread waiting for another
    inside an operator."""
    images = _Images(ds, transform, decode)

    def task(s: int) -> tuple[np.ndarray, np.ndarray]:
        idx, x = _pixels(_collate([images[i] for i in range(s, min(len(ds), s + batch_size))]))
        return idx, forward_one(x)

    with ThreadPoolExecutor(lanes, thread_name_prefix="oodml-embed") as pool:
        yield from _in_order(pool, task, range(0, len(ds), batch_size), 2 * lanes)


def _pixels(batch: _Batch) -> tuple[np.ndarray, torch.Tensor]:
    """(indices, images) of a decoded batch; OodmlError naming an unreadable image."""
    idx, x, error = batch
    if error is not None:
        raise OodmlError(error)
    assert x is not None
    return idx, x


def _forwarded(batches: Iterable[_Batch], run: TorchForward | OnnxForward) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, features) of each decoded batch; OodmlError naming an unreadable image."""
    for batch in batches:
        idx, x = _pixels(batch)
        yield idx, run(x)


def compute_features(ds: ImageDataset, backbone: Backbone, *, batch_size: int = 64, workers: int | None = None,
                     forward: TorchForward | OnnxForward | None = None, decode: str = "exact") -> np.ndarray:
    """(N, D) float32 features of every image of `ds`, in `ds.paths` order; OodmlError naming an unreadable image.

    `forward`: the backbone's forward pass (`make_forward`); default: torch. With ONNX Runtime and `workers` None
    (the default), the forward's `threads` lanes each decode a batch of `batch_size / threads` images and run it on
    a single-threaded session (`OnnxForward.single_threaded`: the same values); with `workers` given, images are
    decoded by `workers` threads (0: the calling thread) at a lower priority beside the forward pass's own threads.
    torch (which only runs the transforms then) computes on one thread. With the torch forward, images are decoded
    by `workers` processes (default `default_workers`). `decode`: `exact` (the eval transform's values bit for bit)
    or `scaled` (JPEGs larger than the resize target shrunk while decoding; other features), see
    `oodml/features/decode.py` and docs/features.md."""
    if batch_size < 1:
        raise OodmlError(f"--batch-size must be >= 1, got {batch_size}")
    out = np.empty((len(ds), backbone.feature_dim), dtype=np.float32)
    run = forward or TorchForward(backbone, batch_size)
    results: Iterable[tuple[np.ndarray, np.ndarray]]
    with contextlib.ExitStack() as stack:
        if run.runtime == "onnx":  # torch only runs the transforms' small tensor ops then
            stack.enter_context(_torch_threads(1))
        if isinstance(run, OnnxForward) and workers is None and run.threads > 1:
            # the batch shared out: `threads` lanes of batch_size / threads images in flight at a time (on 2 cores,
            # 2 lanes of 32 images keep decoding and the forward passes apart better than 2 of 64: 0.94 vs 0.79 of
            # the bare forward, benchmarks/embed.py)
            per_lane = max(1, batch_size // run.threads)
            desc = f"embed {ds.name} with {backbone.name} on onnx ({run.threads} lanes of {per_lane}: decode + forward)"
            results = stack.enter_context(contextlib.closing(
                _in_lanes(ds, backbone.eval_transform, per_lane, run.threads, decode, run.single_threaded())))
        else:
            batches: Iterable[_Batch]
            if run.runtime == "onnx":
                n_workers = default_decode_threads() if workers is None else workers
                kind = "threads"
                batches = stack.enter_context(contextlib.closing(
                    _decoded_in_threads(ds, backbone.eval_transform, batch_size, n_workers, decode)))
            else:
                n_workers = default_workers(len(ds)) if workers is None else workers
                kind = "workers"
                batches = torch.utils.data.DataLoader(
                    _Images(ds, backbone.eval_transform, decode), batch_size=batch_size, shuffle=False,
                    num_workers=n_workers, collate_fn=_collate, worker_init_fn=_worker_init if n_workers else None,
                    prefetch_factor=4 if n_workers else None,
                )
            desc = f"embed {ds.name} with {backbone.name} on {run.runtime} ({n_workers} decoding {kind})"
            results = _forwarded(batches, run)
        with progress(desc, len(ds), unit="img") as bar:
            for idx, feats in results:
                out[idx] = feats
                bar.update(len(idx))
    if not np.isfinite(out).all():
        raise OodmlError(f"backbone {backbone.name} produced non-finite features on {ds.name}; check the images")
    return out


def _transform_id(name: str) -> str:
    """The backbone's eval-transform description, memoised per library versions (so a cache hit builds no model)."""
    versions = "|".join(f"{p}={_version(p)}" for p in ("timm", "torchvision", "torch"))
    key = f"{name}|{backbone_weights_id(name)}|{versions}"
    memo = JsonMemo("transforms.json")
    hit = memo.get(key)
    if isinstance(hit, str):
        return hit
    tid = create_backbone(name, pretrained=False).transform_id()
    memo.put(key, tid)
    return tid


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def features_file(dataset: str, backbone: str = DEFAULT_BACKBONE, data_root: str | Path | None = None,
                  classes: Sequence[str] = (), batch_size: int = 64, workers: int | None = None,
                  options: Mapping[str, Any] | None = None, runtime: str = "auto",
                  weights: str | Path | None = None, decode: str = "exact") -> Path:
    """The cached features file for (dataset content, backbone, transform, runtime), computed and stored when absent.

    `options`: the dataset loader's options (e.g. omniglot `rotations`); they change the content hash and so the
    cache entry. `runtime`: `auto` (ONNX Runtime when it works, else torch; a cached torch file is used as it is),
    `onnx` or `torch`; the one used is recorded in `meta.runtime`. `weights`: a local weights file for the backbone
    (`--backbone-weights`); its sha256 is part of the cache key and recorded in `meta.weights_sha256`. `decode`:
    `exact` or `scaled` (`compute_features`); `scaled` is part of the cache key and recorded in `meta.decode`."""
    check_decode(decode)
    if batch_size < 1:
        raise OodmlError(f"--batch-size must be >= 1, got {batch_size}")
    wanted = resolve_runtime(runtime)
    ds = load_dataset(dataset, data_root, **dict(options or {}))
    if classes:
        ds = ds.subset_classes(classes)
    name = canonical_backbone(backbone)
    transform = _transform_id(name) + ("" if decode == "exact" else f" decode={decode}")
    content = ds.content_hash()
    weights_id = backbone_weights_id(name, weights)

    def cached(rt: str) -> tuple[Path, bool]:
        path = cache_path(ds.name, name, cache_key(content, name, weights_id, transform, rt))
        found = path.is_file() and bool(read_meta(path))
        if found:
            log(f"embed: using cached features {path} ({len(ds)} images of {ds.name}, {name}, {rt}); "
                "delete it to recompute")
        return path, found

    path, found = cached(wanted)
    if found:
        return path
    if runtime == "auto" and wanted != "torch":  # features cached before ONNX Runtime: reuse, don't recompute
        torch_path, found = cached("torch")
        if found:
            return torch_path
    bb = create_backbone(name, weights=weights)
    forward = make_forward(bb, runtime, batch_size=batch_size)
    if forward.runtime != wanted:  # auto fell back to torch (whose cache entry is absent, see above)
        path = cached(forward.runtime)[0]
    feats = compute_features(ds, bb, batch_size=batch_size, workers=workers, forward=forward, decode=decode)
    meta = {"dataset": ds.name, "backbone": name, "transform": bb.transform_id(), "weights": weights_id,
            "dataset_hash": content, "classes": list(classes), "input_size": bb.input_size,
            "pretrained": bb.pretrained, "runtime": forward.runtime,
            **({"dataset_options": dict(options)} if options else {}),
            **({"decode": decode} if decode != "exact" else {}),
            **({"weights_sha256": bb.weights_sha256, "weights_file": Path(weights).name} if weights else {})}
    split = np.array(ds.class_split) if ds.class_split is not None else None
    FeatureSet(feats, ds.labels, np.array(ds.class_names), np.array(ds.paths), meta, split).save(path)
    log(f"embed: wrote {path}")
    return path


def embed_dataset(*, dataset: str, backbone: str = DEFAULT_BACKBONE, data_root: str | Path | None = None,
                  classes: Sequence[str] = (), out: str | Path | None = None, batch_size: int = 64,
                  workers: int | None = None, options: Mapping[str, Any] | None = None,
                  runtime: str = "auto", weights: str | Path | None = None, decode: str = "exact") -> Path:
    """The CLI's `embed`: features of every image (or of the `classes` subset); returns the written/cached file."""
    if out is not None and Path(out).suffix != ".npz":
        raise OodmlError(f"--out {str(out)!r} must end in .npz")
    path = features_file(dataset, backbone, data_root, classes, batch_size, workers, options, runtime, weights,
                         decode)
    if out is None:
        return path
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dest, "wb") as f, open(path, "rb") as src:
        shutil.copyfileobj(src, f)
    return dest


def load_or_compute_features(dataset: str, backbone: str = DEFAULT_BACKBONE, data_root: str | Path | None = None,
                             classes: Sequence[str] = (), batch_size: int = 64, workers: int | None = None,
                             options: Mapping[str, Any] | None = None, runtime: str = "auto",
                             weights: str | Path | None = None) -> FeatureSet:
    """The FeatureSet for (dataset, backbone), from the on-disk cache or computed and cached (`runtime` and
    `weights` as in `features_file`)."""
    return FeatureSet.load(features_file(dataset, backbone, data_root, classes, batch_size, workers, options,
                                         runtime, weights))
