"""Decoding for the frozen backbones' eval transform, fast enough to keep up with an ONNX Runtime forward pass.

The usual eval transform (`ToRGB`, `Resize`, optional `CenterCrop`, `ToTensor`, optional `Normalize`) runs here as:

1. JPEG files decoded by libjpeg-turbo through `simplejpeg` (the same library and settings as Pillow's decoder:
   accurate integer IDCT, fancy upsampling, so the same pixels); other formats, and JPEGs it refuses, by Pillow;
2. the transform's Resize and CenterCrop on the uint8 image, Pillow's two resampling passes run one at a time so that
   the second runs only on the rows or columns the crop keeps (`resize_and_crop`: the same pixels);
3. `ToTensor` + `Normalize` as one look-up in a 3 x 256 table that those two transforms computed once, so every value
   is the float32 that they would have produced.

The result is bit for bit the transform's output (`decode="exact"`, the default: features, their `feature_hash` and
the shipped split files do not change), in about 0.6 of the time per image. Transforms of another shape run as they
are.

`decode="scaled"` (opt-in, changes features) also lets libjpeg-turbo scale a JPEG in the DCT domain (to k/8 of its
size) while decoding, to the smallest size that is still at least the resize target; an image that is not larger
than the target decodes exactly as with `exact`. See docs/features.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from oodml.compat import import_torchvision
from oodml.data.base import DirSource, ImageDataset, ImageSource, MultiSource, ZipSource
from oodml.errors import OodmlError
from oodml.features.backbones import ToRGB

DECODES = ("exact", "scaled")
_JPEG_MAGIC = b"\xff\xd8"
_DECODED_SPACES = ("YCbCr", "Gray")  # JPEG colour spaces that libjpeg-turbo turns into Pillow's RGB values


def check_decode(decode: str) -> str:
    """`decode` if it is one of DECODES, else OodmlError naming them."""
    if decode not in DECODES:
        raise OodmlError(f"--decode {decode!r} is not one of {', '.join(DECODES)}")
    return decode


@dataclass(frozen=True)
class EvalSteps:
    """The parts of a recognised eval transform: its Resize and CenterCrop (None: none) objects, and the float32
    value of each uint8 input per channel after its ToTensor and Normalize (`table`, 3 x 256)."""

    resize: Any
    crop: Any | None
    table: np.ndarray


def flatten_transform(transform: Any) -> list[Any]:
    """The transform's steps, nested Compose objects expanded."""
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return [step for t in inner for step in flatten_transform(t)]
    return [transform]


def eval_steps(transform: Any) -> EvalSteps | None:
    """The EvalSteps of `transform` when it is ToRGB, Resize (PIL antialiasing, no max_size), optional CenterCrop,
    ToTensor (torchvision's or timm's MaybeToTensor) and optional Normalize, in that order; else None."""
    tvt = import_torchvision().transforms
    steps = flatten_transform(transform)
    if len(steps) < 3 or not isinstance(steps[0], ToRGB) or not isinstance(steps[1], tvt.Resize):
        return None
    resize, rest = steps[1], steps[2:]
    if resize.max_size is not None:
        return None
    crop = rest.pop(0) if rest and isinstance(rest[0], tvt.CenterCrop) else None
    if not rest or type(rest[0]).__name__ not in ("ToTensor", "MaybeToTensor"):
        return None
    tail = rest[1:]
    if len(tail) > 1 or (tail and not (isinstance(tail[0], tvt.Normalize) and not tail[0].inplace)):
        return None
    levels = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (1, 256, 3))
    values = rest[0](Image.fromarray(np.ascontiguousarray(levels), mode="RGB"))  # (3, 1, 256), the same ops
    for t in tail:
        values = t(values)
    table = np.ascontiguousarray(values.numpy()[:, 0, :], dtype=np.float32)
    return EvalSteps(resize, crop, table)


def resized_size(steps: EvalSteps, height: int, width: int) -> tuple[int, int]:
    """(height, width) that the Resize step gives an image of that size (torchvision's own rule)."""
    size = steps.resize.size
    size = [size] if isinstance(size, int) else list(size)
    fn = import_torchvision().transforms.functional._compute_resized_output_size
    h, w = fn((height, width), size, None)
    return int(h), int(w)


def _horizontal_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Whether Pillow's resize runs its horizontal pass first (its rule since Pillow 11: the vertical pass goes first
    only when it shrinks the height by more than twice as many pixels as the width shrinks)."""
    dy = height - out_height
    return not (dy > 0 and dy > (width - out_width) * 2)


@functools.cache
def _passes_split_exactly() -> bool:
    """Whether this Pillow's resize equals its two passes run one after the other in the order of
    `_horizontal_first` (checked once on small noise images of both orders; else the plain resize is used)."""
    rng = np.random.default_rng(0)
    for (w, h), (ow, oh) in (((40, 30), (52, 36)), ((36, 60), (30, 20)), ((50, 41), (37, 44))):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
        for resample in (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR):
            whole = img.resize((ow, oh), resample)
            if _horizontal_first(w, h, ow, oh):
                parts = img.resize((ow, h), resample).resize((ow, oh), resample)
            else:
                parts = img.resize((w, oh), resample).resize((ow, oh), resample)
            if not np.array_equal(np.asarray(whole), np.asarray(parts)):
                return False
    return True


def resize_and_crop(steps: EvalSteps, img: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """`steps.crop(steps.resize(img))`, pixel for pixel, with less work (`size`: resize to this (height, width)
    instead of the Resize step's rule). Pillow resamples in two passes, each rounding to uint8, and each pass computes
    an output pixel from its own row (horizontal) or column (vertical) alone; so the second pass runs only on the
    rows or columns that the centre crop keeps. (Resizing the crop box itself would place the filter by other
    floating-point operations: not the same pixels.)"""
    h, w = size or resized_size(steps, img.height, img.width)
    resample = import_torchvision().transforms.functional.pil_modes_mapping[steps.resize.interpolation]
    crop = steps.crop
    ch, cw = (h, w) if crop is None else (crop.size, crop.size) if isinstance(crop.size, int) else crop.size
    if crop is None or ch > h or cw > w or not _passes_split_exactly():  # torchvision's own steps
        img = img if (h, w) == (img.height, img.width) else img.resize((w, h), resample)
        return crop(img) if crop is not None else img
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    if _horizontal_first(img.width, img.height, w, h):
        if w != img.width:
            img = img.resize((w, img.height), resample)  # the horizontal pass alone
        img = img.crop((left, 0, left + cw, img.height))
        if h != img.height:
            img = img.resize((cw, h), resample)  # the vertical pass alone, on the kept columns
        return img.crop((0, top, cw, top + ch))
    img = img.resize((img.width, h), resample)  # the vertical pass alone
    img = img.crop((0, top, img.width, top + ch))
    if w != img.width:
        img = img.resize((w, ch), resample)  # the horizontal pass alone, on the kept rows
    return img.crop((left, 0, left + cw, ch))


def jpeg_bytes(source: ImageSource, image_id: str) -> bytes | None:
    """The file bytes of `image_id` when `source` keeps it as a JPEG file (folder, zip), else None."""
    if isinstance(source, MultiSource):
        part = source.parts.get(image_id.split("/", 1)[0])
        return jpeg_bytes(part, image_id) if part is not None else None
    try:
        if isinstance(source, DirSource):
            data = (source.base / image_id).read_bytes()
        elif isinstance(source, ZipSource):
            data = source.read(source.prefix + image_id)
        else:
            return None
    except (OSError, KeyError, ValueError):
        return None  # the Pillow path raises the dataset's one-line error for it
    return data if data[:2] == _JPEG_MAGIC else None


def decode_jpeg(data: bytes, min_size: tuple[int, int] | None = None) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB pixels of a JPEG by libjpeg-turbo, or None when it refuses the file (CMYK, corrupt data:
    left to Pillow). `min_size` (height, width): decode scaled down in the DCT domain to the smallest size of at
    least that; None: full size."""
    import simplejpeg

    try:
        if min_size is None:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")  # type: ignore[no-any-return]
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_size[0],  # type: ignore[no-any-return]
                                      min_width=min_size[1])
    except ValueError:
        return None


def to_float(steps: EvalSteps, pixels: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 from (H, W, 3) uint8 RGB pixels by the table (= ToTensor + Normalize)."""
    out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    for c in range(3):
        np.take(steps.table[c], pixels[:, :, c], out=out[c])
    return out


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a YCbCr or grayscale JPEG from its header; None for other colour spaces (CMYK, YCCK,
    whose conversion to RGB is Pillow's own) and unreadable headers."""
    import simplejpeg

    try:
        h, w, space, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (int(h), int(w)) if space in _DECODED_SPACES else None


def _bomb(height: int, width: int) -> bool:
    """Whether Pillow would refuse an image of this size as a decompression bomb (then Pillow opens it, and the
    dataset's one-line error says so)."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and height * width > 2 * limit


class EvalImages:
    """Image `i` of a dataset through its eval transform, as a (3, H, W) float32 array: by EvalSteps where the
    transform is recognised (`decode` as in the module doc), else the transform itself; unreadable images raise the
    dataset's OodmlError."""

    def __init__(self, ds: ImageDataset, transform: Callable[[Image.Image], torch.Tensor],
                 decode: str = "exact") -> None:
        self.ds, self.transform, self.decode = ds, transform, check_decode(decode)
        self.steps = eval_steps(transform)

    def __len__(self) -> int:
        return len(self.ds)

    def pixels(self, i: int) -> tuple[Image.Image, tuple[int, int] | None]:
        """Image `i` decoded as an RGB PIL image (libjpeg-turbo for JPEG files, else Pillow), and with
        `decode="scaled"` the (height, width) to resize it to, computed from the full image's size (None: the Resize
        step's own rule on the decoded image)."""
        assert self.steps is not None
        data = jpeg_bytes(self.ds.source, self.ds.paths[i])
        full = jpeg_size(data) if data is not None else None
        rgb, target = None, None
        if data is not None and full is not None and not _bomb(*full):
            target = resized_size(self.steps, *full) if self.decode == "scaled" else None
            rgb = decode_jpeg(data, target)
        if rgb is None:
            img = self.ds.open(i)
            return (img if img.mode == "RGB" else img.convert("RGB")), None
        return Image.fromarray(rgb, mode="RGB"), target

    def __call__(self, i: int) -> np.ndarray:
        """(3, H, W) float32: the eval transform's output for image `i`."""
        if self.steps is None:
            return np.asarray(self.transform(self.ds.open(i)).numpy(), dtype=np.float32)
        img, target = self.pixels(i)
        img = resize_and_crop(self.steps, img, target)
        return to_float(self.steps, np.asarray(img))
