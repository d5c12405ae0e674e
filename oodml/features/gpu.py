"""Feeding a GPU with full-regime training batches without a CPU decoding pipeline, and the arithmetic of a
paper-scale training budget.

- `decode_uint8`: a dataset decoded once into one (N, 3, S, S) uint8 tensor (shorter side resized to S, centre S x S
  kept), which then lives on the device: CUB-200 at S = 256 is 11,788 x 196,608 bytes = 2.3 GB.
- `random_resized_crop_flip`: the train augmentation of the ooDML protocol (random-resized crop to 224 px with
  torchvision's sampling of the box: area 8-100%, aspect 3/4-4/3, 10 tries then the centre crop; horizontal flip with
  probability 1/2; then the normalisation) as one batched `grid_sample` on whatever device the images are; the boxes
  and flips come from an explicit `numpy.random.Generator`. Bilinear sampling without antialiasing: not the pixels of
  Pillow's bicubic resize on the CPU path (a train augmentation, not a reference value).
- `ladder_hours`: hours of a training ladder (images per level x epochs) at a measured rate.

Used by `benchmarks/paper_scale.py` (run by `benchmarks/gpu.sh`); docs/features.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oodml.data.base import ImageDataset
from oodml.features.decode import decode_jpeg, jpeg_bytes, jpeg_size

#: torchvision RandomResizedCrop defaults (the ooDML train transform)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
_TRIES = 10


def _square(img: Image.Image, side: int) -> np.ndarray:
    """(3, side, side) uint8: shorter side resized to `side` (bilinear, antialiased), the centre square kept."""
    w, h = img.size
    s = side / min(w, h)
    nw, nh = max(side, round(w * s)), max(side, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - side) // 2, (nh - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side))).transpose(2, 0, 1)


def _rgb(ds: ImageDataset, i: int) -> Image.Image:
    """Image `i` as RGB, JPEGs by libjpeg-turbo."""
    data = jpeg_bytes(ds.source, ds.paths[i])
    rgb = decode_jpeg(data) if data is not None and jpeg_size(data) is not None else None
    if rgb is not None:
        return Image.fromarray(rgb, mode="RGB")
    img = ds.open(i)
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_uint8(ds: ImageDataset, side: int = 256, rows: Sequence[int] | None = None,
                 threads: int = 4) -> torch.Tensor:
    """(N, 3, side, side) uint8 CPU tensor of the dataset's images (`rows`, default all), decoded by `threads`
    threads; move it to the device once (`.to("cuda")`)."""
    idx = list(range(len(ds))) if rows is None else [int(r) for r in rows]
    out = torch.empty((len(idx), 3, side, side), dtype=torch.uint8)
    view = out.numpy()

    def one(k: int) -> None:
        view[k] = _square(_rgb(ds, idx[k]), side)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(one, range(len(idx))))
    return out


def crop_boxes(n: int, height: int, width: int, rng: np.random.Generator, scale: tuple[float, float] = SCALE,
               ratio: tuple[float, float] = RATIO) -> np.ndarray:
    """(n, 4) int64 boxes (top, left, h, w) sampled as torchvision's `RandomResizedCrop.get_params` does: up to 10
    tries of an area fraction in `scale` and a log-uniform aspect ratio in `ratio`, the first that fits; else the
    centre crop of the image clamped to `ratio`."""
    area = height * width
    log_r = np.log(np.asarray(ratio, dtype=np.float64))
    target = area * rng.uniform(scale[0], scale[1], (n, _TRIES))
    aspect = np.exp(rng.uniform(log_r[0], log_r[1], (n, _TRIES)))
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
    rows = np.arange(n)
    bw, bh = w[rows, first], h[rows, first]
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    fallback = first < 0
    bw, bh = np.where(fallback, fw, bw), np.where(fallback, fh, bh)
    top = np.floor(rng.random(n) * (height - bh + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (width - bw + 1)).astype(np.int64)
    top = np.where(fallback, (height - bh) // 2, top)
    left = np.where(fallback, (width - bw) // 2, left)
    return np.stack([top, left, bh, bw], axis=1)


def crop_flip(x: torch.Tensor, boxes: np.ndarray, flips: np.ndarray, size: int, mean: Sequence[float],
              std: Sequence[float]) -> torch.Tensor:
    """(B, 3, size, size) float32 on x's device: each image's box (top, left, h, w) resampled bilinearly to size x
    size, mirrored where `flips`, scaled to [0, 1] and normalised by mean/std; x: (B, 3, H, W) uint8."""
    b, _, height, width = x.shape
    top, left, h, w = (torch.as_tensor(boxes[:, k], dtype=torch.float32) for k in range(4))
    sign = torch.where(torch.as_tensor(flips, dtype=torch.bool), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sign * w / width  # output x in [-1, 1] -> the box's columns (align_corners=False)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    theta = theta.to(x.device)
    grid = torch.nn.functional.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255
    return (out - m) / s


def random_resized_crop_flip(x: torch.Tensor, size: int, rng: np.random.Generator, mean: Sequence[float],
                             std: Sequence[float], scale: tuple[float, float] = SCALE,
                             ratio: tuple[float, float] = RATIO, flip_p: float = 0.5) -> torch.Tensor:
    """The train augmentation of a (B, 3, H, W) uint8 batch on its device (see the module doc)."""
    boxes = crop_boxes(len(x), int(x.shape[2]), int(x.shape[3]), rng, scale, ratio)
    return crop_flip(x, boxes, rng.random(len(x)) < flip_p, size, mean, std)


# --- budget arithmetic -----------------------------------------------------------------------------------------------

def ladder_hours(images_per_level: Sequence[int], epochs: int, images_per_s: float) -> float:
    """Hours to train every level of a ladder for `epochs` epochs of its training images at `images_per_s`."""
    if images_per_s <= 0:
        return math.inf
    return sum(images_per_level) * epochs / images_per_s / 3600


def split_train_images(split_file: str | Path, class_counts: Mapping[str, int]) -> list[int]:
    """Training images per level of a split file: the images of its `train_classes`, from `class_counts`."""
    levels = json.loads(Path(split_file).read_text())["levels"]
    return [sum(int(class_counts[c]) for c in level["train_classes"]) for level in levels]
