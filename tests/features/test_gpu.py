"""The GPU feeding path of `oodml/features/gpu.py` on CPU tensors (the same ops run on CUDA), the ladder arithmetic
of `benchmarks/paper_scale.py`, and that `benchmarks/gpu.sh` parses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oodml.data import load_dataset
from oodml.features.gpu import (crop_boxes, crop_flip, decode_uint8, ladder_hours, random_resized_crop_flip,
                                split_train_images)

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]


def _images(b: int = 2, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, 3, side, side), dtype=np.uint8))


def _pixels(out: torch.Tensor) -> torch.Tensor:
    """Normalised floats back to 0..255."""
    return out * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255


def test_boxes_follow_torchvisions_sampling() -> None:
    boxes = crop_boxes(4000, 60, 90, np.random.default_rng(0))
    top, left, h, w = boxes.T
    assert boxes.dtype == np.int64 and (h > 0).all() and (w > 0).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 60).all() and (left + w <= 90).all()
    area = h * w / (60 * 90)
    assert area.min() >= 0.07 and area.max() <= 1.0 and 0.3 < np.median(area) < 0.7
    aspect = w / h
    assert aspect.min() > 0.7 and aspect.max() < 1.45  # 3/4..4/3 up to the rounding of small boxes
    assert np.array_equal(boxes, crop_boxes(4000, 60, 90, np.random.default_rng(0)))  # the generator decides
    # no box of 2-3x the image's area fits: torchvision's fallback, the centre crop clamped to the ratio range
    assert crop_boxes(3, 40, 100, np.random.default_rng(1), scale=(2.0, 3.0)).tolist() == [[0, 23, 40, 53]] * 3
    assert crop_boxes(2, 32, 32, np.random.default_rng(1), scale=(2.0, 3.0)).tolist() == [[0, 0, 32, 32]] * 2


def test_whole_box_is_the_image_and_a_flip_mirrors_it() -> None:
    x = _images()
    whole = np.array([[0, 0, 16, 16]] * 2)
    same = crop_flip(x, whole, np.array([False, False]), 16, MEAN, STD)
    assert same.dtype == torch.float32 and same.shape == (2, 3, 16, 16)
    torch.testing.assert_close(_pixels(same), x.float(), atol=1e-3, rtol=0)
    mirrored = crop_flip(x, whole, np.array([True, False]), 16, MEAN, STD)
    torch.testing.assert_close(_pixels(mirrored)[0], x[0].flip(-1).float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(mirrored[1], same[1])


def test_a_box_at_its_own_size_is_that_slice() -> None:
    x = _images(side=20)
    boxes = np.array([[4, 2, 8, 8], [0, 11, 8, 8]])
    out = crop_flip(x, boxes, np.array([False, True]), 8, MEAN, STD)
    torch.testing.assert_close(_pixels(out)[0], x[0, :, 4:12, 2:10].float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(_pixels(out)[1], x[1, :, 0:8, 11:19].flip(-1).float(), atol=1e-3, rtol=0)


def test_random_resized_crop_flip_is_seeded_and_resamples_to_the_size() -> None:
    x = _images(b=5, side=32)
    a = random_resized_crop_flip(x, 24, np.random.default_rng(3), MEAN, STD)
    b = random_resized_crop_flip(x, 24, np.random.default_rng(3), MEAN, STD)
    c = random_resized_crop_flip(x, 24, np.random.default_rng(4), MEAN, STD)
    assert a.shape == (5, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    p = _pixels(a)
    assert p.min() >= -1e-3 and p.max() <= 255 + 1e-3  # bilinear: within the input's range


def test_decode_uint8_keeps_the_centre_square(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "k").mkdir()
    square = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(square).save(tmp_path / "k" / "a.png")
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(tmp_path / "k" / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(tmp_path / "k" / "c.jpg")
    ds = load_dataset("folder", tmp_path)
    x = decode_uint8(ds, side=24, threads=2)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 24, 24)
    assert np.array_equal(x[0].numpy(), square.transpose(2, 0, 1))  # already 24 x 24: kept as it is
    assert torch.equal(decode_uint8(ds, side=24, rows=[2, 1], threads=1), x[[2, 1]])


def test_ladder_hours_and_the_shipped_cub_ladder() -> None:
    assert ladder_hours([3600], 1, 1.0) == 1.0
    assert ladder_hours([5864] * 9, 200, 5864 * 9 * 200 / 3600) == pytest.approx(1.0)
    assert ladder_hours([1], 1, 0.0) == float("inf")
    counts = json.loads((ROOT / "benchmarks" / "cub200_class_counts.json").read_text())["counts"]
    assert len(counts) == 200 and sum(counts.values()) == 11788
    assert sum(v for c, v in counts.items() if int(c[:3]) <= 100) == 5864  # the conventional training split
    per_level = split_train_images(ROOT / "splits" / "cub200.json", counts)
    split = json.loads((ROOT / "splits" / "cub200.json").read_text())
    assert len(per_level) == len(split["levels"]) and per_level[split["start_level"] - 1] == 5864
    assert all(0 < n <= 11788 for n in per_level)


def test_gpu_script_parses_and_names_its_steps() -> None:
    script = ROOT / "benchmarks" / "gpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for part in ("nvidia-smi", "-m gpu", "benchmarks/train.py --device cuda", "benchmarks/paper_scale.py"):
        assert part in text


@pytest.mark.slow
def test_paper_scale_runs_on_cpu_with_a_tiny_model() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_scale.py"), "--device", "cpu",
                          "--backbone", "conv4", "--size", "28", "--store", "32", "--batch", "8", "--iterations",
                          "1", "--warmup", "1", "--images", "64"], capture_output=True, text=True, check=True)
    assert "training step" in out.stdout and "paper CUB ladder: 9 levels, 52,776 training images" in out.stdout
