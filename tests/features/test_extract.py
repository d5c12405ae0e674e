"""Feature extraction and its cache, on a tiny folder dataset with the conv4 backbone (fast), plus the real-data
acceptance check of the Lite0 features against an independent timm forward pass."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from oodml.errors import OodmlError
from oodml.features.cache import find_cached_features
from oodml.features.extract import embed_dataset, load_or_compute_features
from oodml.features.io import FeatureSet
from tests.data.helpers import write_class_tree, write_image


@pytest.fixture(autouse=True)
def _per_test_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))  # identical trees would share cache entries


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_class_tree(tmp_path / "imgs", {"cat": 4, "dog": 3, "emu": 5})


def _embed(tree: Path, **kw: object) -> Path:
    args: dict = dict(dataset="folder", backbone="conv4", data_root=tree, batch_size=5, workers=0)
    args.update(kw)
    return embed_dataset(**args)


def test_embed_writes_a_spec_features_file(tree: Path, tmp_path: Path) -> None:
    out = _embed(tree, out=tmp_path / "out" / "f.npz")
    assert out == tmp_path / "out" / "f.npz"
    with np.load(out, allow_pickle=False) as z:
        assert set(z.files) == {"features", "labels", "class_names", "paths", "meta"}
        assert z["features"].dtype == np.float32 and z["features"].shape == (12, 64)
        assert z["labels"].dtype == np.int64 and z["class_names"].tolist() == ["cat", "dog", "emu"]
        assert z["paths"].tolist() == sorted(z["paths"].tolist()) and z["paths"][0] == "cat/img00.png"
        meta = json.loads(str(z["meta"]))
    assert meta["dataset"] == "imgs" and meta["backbone"] == "conv4" and "Resize" in meta["transform"]
    fs = FeatureSet.load(out)
    assert fs.hash == meta["feature_hash"] and find_cached_features(fs.hash) is not None


def test_rows_equal_a_direct_forward_pass(tree: Path) -> None:
    from oodml.data import load_dataset
    from oodml.features.backbones import create_backbone

    fs = load_or_compute_features("folder", "conv4", data_root=tree, batch_size=4, workers=0)
    ds = load_dataset("folder", tree)
    bb = create_backbone("conv4")
    with torch.inference_mode():
        ref = bb(torch.stack([bb.eval_transform(ds.open(i)) for i in range(len(ds))])).numpy()
    np.testing.assert_allclose(fs.features, ref, rtol=1e-4, atol=1e-5)
    assert fs.paths.tolist() == ds.paths


def test_second_call_uses_the_cache_and_a_changed_image_misses(tree: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    first = _embed(tree)
    assert "using cached features" not in capsys.readouterr().err
    mtime = first.stat().st_mtime_ns
    assert _embed(tree) == first and first.stat().st_mtime_ns == mtime
    assert "using cached features" in capsys.readouterr().err
    write_image(tree / "dog" / "img01.png", seed=1234)
    second = _embed(tree)
    assert second != first and "using cached features" not in capsys.readouterr().err
    assert _embed(tree, classes=("cat", "e*")) not in (first, second)


def test_same_input_gives_byte_identical_files_and_workers_do_not_matter(tree: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a = _embed(tree, out=tmp_path / "a.npz").read_bytes()
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "fresh-cache"))  # force a recompute
    b = _embed(tree, out=tmp_path / "b.npz", workers=1, batch_size=5).read_bytes()
    assert a == b


def test_subset_classes(tree: Path) -> None:
    fs = FeatureSet.load(_embed(tree, classes=("[ce]*",)))
    assert fs.class_names.tolist() == ["cat", "emu"] and len(fs.paths) == 9
    assert fs.meta["classes"] == ["[ce]*"]


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_stops_with_one_line_naming_it(tree: Path, workers: int) -> None:
    (tree / "emu" / "img03.png").write_bytes(b"garbage")
    with pytest.raises(OodmlError) as e:
        _embed(tree, workers=workers)
    assert "emu/img03.png" in str(e.value) and "\n" not in str(e.value)


def test_bad_out_suffix_and_batch_size(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(OodmlError, match=".npz"):
        _embed(tree, out=tmp_path / "f.csv")
    with pytest.raises(OodmlError, match="batch-size"):
        _embed(tree, batch_size=0)


@pytest.mark.data
def test_cub_acceptance_matches_independent_timm_forward(shared_data: Path, tmp_path: Path) -> None:
    """`oodml embed cub200 --classes '00[1-3].*'` rows vs timm tf_efficientnet_lite0 + converted package weights."""
    from PIL import Image

    from oodml.compat import import_timm
    from oodml.features.backbones import lite0_timm_model

    archive = shared_data / "cub200_subset" / "CUB_200_2011_subset050.tgz"
    fs = FeatureSet.load(embed_dataset(dataset="cub200", data_root=archive.parent, classes=("00[1-3].*",),
                                       out=tmp_path / "f.npz", batch_size=32, workers=1))
    assert fs.class_names.tolist() == ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    timm = import_timm()
    model = lite0_timm_model().eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    images = {}
    with tarfile.open(archive) as tf:  # read the images straight from the archive, not through oodml
        for m in tf:
            rel = m.name.removeprefix("CUB_200_2011/images/")
            if m.isfile() and rel != m.name and rel.startswith(("001.", "002.", "003.")):
                f = tf.extractfile(m)
                assert f is not None
                images[rel] = Image.open(f).convert("RGB")
    assert sorted(images) == fs.paths.tolist()
    rows = np.arange(0, len(fs.paths), 3)  # every third image keeps the test short
    with torch.inference_mode():
        ref = model.forward_head(model.forward_features(
            torch.stack([transform(images[fs.paths[r]]) for r in rows])), pre_logits=True).numpy()
    got = fs.features[rows]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.99


def test_zip_backed_dataset_in_worker_processes_matches_in_process() -> None:
    """omniglot_small is read straight from its zip; forked workers must reopen it (no shared file offsets)."""
    from oodml.data import load_dataset
    from oodml.features.backbones import create_backbone
    from oodml.features.extract import compute_features

    ds = load_dataset("omniglot_small").subset_classes(["Latin/character0[1-4]"])
    bb = create_backbone("conv4")
    ds.open(0)  # the parent opens the zip before forking
    a = compute_features(ds, bb, batch_size=7, workers=0)
    b = compute_features(ds, bb, batch_size=7, workers=2)
    assert a.shape == (80, 64) and np.array_equal(a, b)


def test_forward_chunks_keep_activations_small_but_never_exceed_the_batch() -> None:
    from oodml.features.extract import forward_chunk

    assert forward_chunk(224, 64) == 5 and forward_chunk(224, 2) == 2 and forward_chunk(28, 64) == 64
    assert forward_chunk(2048, 64) == 1


class _Pixels:
    """A forward pass returning 64 of each image's pixels (so rows compare decoding exactly) on a stated runtime
    (`onnx`: decoded in threads; `torch`: in processes), recording torch's thread count while it runs."""

    def __init__(self, runtime: str) -> None:
        self.runtime, self.threads_seen = runtime, set()

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        self.threads_seen.add(torch.get_num_threads())
        flat = x.reshape(len(x), -1)
        return flat[:, :: flat.shape[1] // 64][:, :64].numpy().copy()


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_decoding_threads_give_the_rows_of_decoding_processes(tree: Path, threads: int) -> None:
    from oodml.data import load_dataset
    from oodml.features.backbones import create_backbone
    from oodml.features.extract import compute_features

    ds = load_dataset("folder", tree)
    bb = create_backbone("conv4")
    assert bb.feature_dim == 64
    before = torch.get_num_threads()
    onnx = _Pixels("onnx")
    got = compute_features(ds, bb, batch_size=5, workers=threads, forward=onnx)  # type: ignore[arg-type]
    assert onnx.threads_seen == {1} and torch.get_num_threads() == before  # transforms on one thread, restored
    ref = compute_features(ds, bb, batch_size=5, workers=1, forward=_Pixels("torch"))  # type: ignore[arg-type]
    assert np.array_equal(got, ref) and len(np.unique(got, axis=0)) == len(ds)
    (tree / "dog" / "img01.png").write_bytes(b"garbage")
    with pytest.raises(OodmlError, match="dog/img01.png"):
        compute_features(ds, bb, batch_size=2, workers=threads, forward=onnx)  # type: ignore[arg-type]
    assert torch.get_num_threads() == before
