"""The eval-transform decoding of `oodml/features/decode.py`: bit for bit the backbone's transform by default, on small
images made here (JPEG of several shapes, grayscale and CMYK JPEG, PNG with alpha); DCT-scaled JPEG decoding only on
request and only for images larger than the resize target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from oodml.data import load_dataset
from oodml.errors import OodmlError
from oodml.features import decode
from oodml.features.backbones import create_backbone
from oodml.features.decode import EvalImages, check_decode, eval_steps, resize_and_crop, to_float

# (width, height): upscaled (CUB-subset-like), downscaled landscape, a tall one whose vertical pass Pillow runs first,
# already at the target's short side, square, tiny
SIZES = [(320, 223), (500, 375), (288, 596), (256, 300), (240, 240), (40, 30)]


def _noise(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth-ish random RGB pixels (JPEG keeps some detail of them)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)).astype(np.int16)
    return np.clip(big + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("decode")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for j, (w, h) in enumerate(SIZES):
        Image.fromarray(_noise(w, h, j)).save(root / "a" / f"rgb{j}.jpg", quality=90)
    Image.fromarray(_noise(300, 200, 10)[:, :, 0]).save(root / "b" / "gray.jpg")
    Image.fromarray(_noise(260, 280, 11)).convert("CMYK").save(root / "b" / "cmyk.jpg")
    rgba = np.dstack([_noise(230, 250, 12), np.full((250, 230), 200, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(root / "b" / "alpha.png")
    Image.fromarray(_noise(1000, 760, 13)).save(root / "b" / "large.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def transforms() -> dict[str, Any]:
    """Lite0's timm eval transform (bicubic, mean = std = 0.5) and ResNet-50's torchvision one (bilinear, ImageNet
    statistics)."""
    return {name: create_backbone(name, pretrained=False).eval_transform for name in ("efficientnet_lite0",
                                                                                     "resnet50")}


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet50"])
def test_exact_decode_is_the_transform_bit_for_bit(folder: Path, transforms: dict[str, Any], backbone: str) -> None:
    ds = load_dataset("folder", folder)
    t = transforms[backbone]
    images = EvalImages(ds, t)
    assert images.steps is not None and len(images) == len(SIZES) + 4
    for i in range(len(ds)):
        got, want = images(i), t(ds.open(i)).numpy()
        assert got.dtype == np.float32 and got.shape == (3, 224, 224)
        assert np.array_equal(got, want), ds.paths[i]


def test_two_pass_resize_and_table_on_random_sizes(transforms: dict[str, Any]) -> None:
    """Crop-aware resizing (`resize_and_crop`) and the uint8 -> float table against the transform on noise images of
    many shapes, both of Pillow's pass orders among them."""
    rng = np.random.default_rng(0)
    for backbone, t in transforms.items():
        steps = eval_steps(t)
        assert steps is not None and steps.table.shape == (3, 256)
        for _ in range(25):
            w, h = (int(v) for v in rng.integers(60, 700, 2))
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            got = to_float(steps, np.asarray(resize_and_crop(steps, img)))
            assert np.array_equal(got, t(img).numpy()), (backbone, w, h)


def test_scaled_decode_shrinks_only_images_larger_than_the_target(folder: Path, transforms: dict[str, Any]) -> None:
    ds = load_dataset("folder", folder)
    t = transforms["efficientnet_lite0"]
    exact, scaled = EvalImages(ds, t), EvalImages(ds, t, decode="scaled")
    large = ds.paths.index("b/large.jpg")
    img, target = scaled.pixels(large)
    assert target == (256, 336)  # Resize(256) of the full 1000 x 760 image
    assert img.size == (375, 285)  # decoded at 3/8 in the DCT domain: the smallest scale still >= the target
    a, b = exact(large), scaled(large)
    assert a.shape == b.shape == (3, 224, 224) and not np.array_equal(a, b)
    assert float(np.abs(a - b).mean()) < 0.02  # same picture, slightly other pixels
    shrunk = []
    for i in range(len(ds)):  # an image decoded in full gives the exact values; only larger ones are shrunk
        full, (img, target) = ds.open(i).size, scaled.pixels(i)
        if img.size == full:
            assert np.array_equal(exact(i), scaled(i)), ds.paths[i]
        else:
            assert target is not None and full[0] > img.size[0] >= target[1] and full[1] > img.size[1] >= target[0]
            shrunk.append(ds.paths[i])
    assert shrunk == ["a/rgb1.jpg", "b/large.jpg"]  # 500 x 375 (to 375 x 282 for 341 x 256) and 1000 x 760


def test_transforms_of_another_shape_run_as_they_are(folder: Path) -> None:
    ds = load_dataset("folder", folder)
    t = create_backbone("conv4").eval_transform  # Grayscale first: not the ToRGB/Resize/crop/normalise shape
    images = EvalImages(ds, t)
    assert images.steps is None
    assert all(np.array_equal(images(i), t(ds.open(i)).numpy()) for i in range(len(ds)))


def test_a_corrupt_jpeg_ends_in_the_datasets_one_line_error(tmp_path: Path, transforms: dict[str, Any]) -> None:
    (tmp_path / "c").mkdir()
    Image.fromarray(_noise(64, 48, 0)).save(tmp_path / "c" / "ok.jpg")
    (tmp_path / "c" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = load_dataset("folder", tmp_path)
    images = EvalImages(ds, transforms["efficientnet_lite0"])
    with pytest.raises(OodmlError, match="c/bad.jpg"):
        images(ds.paths.index("c/bad.jpg"))
    assert images(ds.paths.index("c/ok.jpg")).shape == (3, 224, 224)


def test_decode_names_are_checked() -> None:
    assert check_decode("exact") == "exact"
    with pytest.raises(OodmlError, match="exact, scaled"):
        check_decode("fast")


def test_compute_features_gives_the_same_rows_as_the_transform(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `compute_features` (decoding threads, as with ONNX Runtime): the rows equal those of the plain
    transform, which the module runs when it does not recognise a transform."""
    from oodml.features.extract import compute_features

    class Pixels:
        runtime = "onnx"

        def __call__(self, x: torch.Tensor) -> np.ndarray:
            return x.reshape(len(x), -1)[:, ::997].numpy().copy()

    ds = load_dataset("folder", folder)
    bb = create_backbone("efficientnet_lite0", pretrained=False)
    bb.feature_dim = 3 * 224 * 224 // 997 + 1
    fast = compute_features(ds, bb, batch_size=3, workers=1, forward=Pixels())  # type: ignore[arg-type]
    monkeypatch.setattr(decode, "eval_steps", lambda transform: None)
    plain = compute_features(ds, bb, batch_size=3, workers=1, forward=Pixels())  # type: ignore[arg-type]
    assert np.array_equal(fast, plain) and len(np.unique(fast, axis=0)) == len(ds)


def test_embed_with_scaled_decoding_is_its_own_cache_entry(folder: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from oodml.features.extract import embed_dataset
    from oodml.features.io import FeatureSet

    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    kw: dict[str, Any] = dict(dataset="folder", backbone="efficientnet_lite0", data_root=folder,
                              classes=["b"], batch_size=4, workers=0, runtime="torch")
    exact, scaled = embed_dataset(**kw), embed_dataset(**kw, decode="scaled")
    assert exact != scaled
    a, b = FeatureSet.load(exact), FeatureSet.load(scaled)
    assert "decode" not in a.meta and b.meta["decode"] == "scaled"
    large = a.paths.tolist().index("b/large.jpg")
    others = [i for i in range(len(a.paths)) if i != large]
    assert np.array_equal(a.features[others], b.features[others])  # not larger than the target: decoded in full
    assert not np.array_equal(a.features[large], b.features[large])
    with pytest.raises(OodmlError, match="--decode 'fast'"):
        embed_dataset(**kw, decode="fast")


def test_cli_embed_takes_decode(folder: Path) -> None:
    from typer.testing import CliRunner

    from oodml.cli import app

    result = CliRunner().invoke(app, ["embed", "folder", "--data-root", str(folder), "--decode", "fast"])
    assert result.exit_code == 2 and "--decode 'fast' is not one of exact, scaled" in result.output
