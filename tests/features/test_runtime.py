"""The backbone's forward pass on ONNX Runtime vs torch: agreement, the export cache (keyed, atomic, corrupt files
re-exported), the fallback of `auto`, and the runtime in the features file's meta and cache key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import oodml.features.runtime as rt
from oodml.errors import OodmlError
from oodml.features.backbones import create_backbone
from oodml.features.extract import embed_dataset
from oodml.features.io import FeatureSet
from tests.data.helpers import write_class_tree


@pytest.fixture(autouse=True)
def _per_test_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_class_tree(tmp_path / "imgs", {"cat": 4, "dog": 3, "emu": 5})


def _embed(tree: Path, runtime: str, **kw: object) -> FeatureSet:
    return FeatureSet.load(embed_dataset(dataset="folder", backbone="conv4", data_root=tree, batch_size=5,
                                         workers=0, runtime=runtime, **kw))  # type: ignore[arg-type]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows of |a - b| / |b| (Euclidean norms)."""
    return float((np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).max())


def test_onnx_and_torch_features_agree_and_are_cached_apart(tree: Path) -> None:
    onnx, torch_ = _embed(tree, "onnx"), _embed(tree, "torch")
    assert onnx.meta["runtime"] == "onnx" and torch_.meta["runtime"] == "torch"
    assert onnx.paths.tolist() == torch_.paths.tolist()
    assert _relative(onnx.features, torch_.features) <= 1e-5
    cached = sorted((Path(rt.cache_dir()) / "features" / "imgs").glob("*.npz"))
    assert len(cached) == 2  # one file per runtime, never the same key
    assert _embed(tree, "auto").meta["runtime"] == "onnx"  # auto: ONNX Runtime when it is installed
    assert len(sorted((Path(rt.cache_dir()) / "features" / "imgs").glob("*.npz"))) == 2  # auto hit onnx's file


def test_auto_reuses_features_cached_by_torch(tree: Path) -> None:
    torch_ = _embed(tree, "torch")
    again = _embed(tree, "auto")  # e.g. a cache filled before ONNX Runtime: used, not recomputed
    assert again.meta["runtime"] == "torch" and np.array_equal(again.features, torch_.features)


def test_torch_cache_key_is_the_one_from_before_runtimes() -> None:
    from oodml.features.cache import cache_key

    assert cache_key("d", "b", "w", "t") == cache_key("d", "b", "w", "t", "torch")
    assert cache_key("d", "b", "w", "t", "onnx") != cache_key("d", "b", "w", "t", "torch")
    assert cache_key("d", "b", "w", "t") == "a2d8058b247c285ed40b"  # value before runtimes existed: caches stay valid


def test_export_is_cached_per_weights_and_a_corrupt_file_is_exported_again(monkeypatch: pytest.MonkeyPatch) -> None:
    bb = create_backbone("conv4")
    x = torch.randn(3, 3, 28, 28)
    first = rt.OnnxForward(bb, threads=1)
    assert first.path.is_file() and first.path.parent == rt.onnx_cache_dir()
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temp file left behind
    ref = first(x)
    mtime = first.path.stat().st_mtime_ns
    exports: list[Path] = []
    real_export = rt.export_onnx
    monkeypatch.setattr(rt, "export_onnx", lambda b, p: exports.append(p) or real_export(b, p))
    assert np.array_equal(rt.OnnxForward(bb, threads=1)(x), ref)
    assert exports == [] and first.path.stat().st_mtime_ns == mtime  # loaded from the cache
    for damage in (b"not a protobuf", first.path.read_bytes()[:1000]):  # garbage, truncated
        first.path.write_bytes(damage)
        assert np.array_equal(rt.OnnxForward(bb, threads=1)(x), ref)
    assert exports == [first.path, first.path]
    other = create_backbone("conv4")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert rt.onnx_model_path(other) != first.path  # other weights, other export


def test_auto_falls_back_to_torch_and_onnx_says_why(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(rt, "export_onnx", broken)
    with pytest.raises(OodmlError, match=r"--runtime onnx: cannot run conv4 on ONNX Runtime \(RuntimeError: "
                                         r"exporter exploded\); use --runtime torch") as e:
        _embed(tree, "onnx")
    assert "\n" not in str(e.value)
    fs = _embed(tree, "auto")
    assert fs.meta["runtime"] == "torch" and "using torch" in capsys.readouterr().err
    assert np.array_equal(fs.features, _embed(tree, "torch").features)  # the torch cache entry, shared


def test_missing_onnxruntime(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails
    assert rt.onnx_unavailable() is not None and rt.resolve_runtime("auto") == "torch"
    with pytest.raises(OodmlError, match="--runtime onnx: onnxruntime is not installed.*pip install onnxruntime"):
        rt.resolve_runtime("onnx")
    assert _embed(tree, "auto").meta["runtime"] == "torch"
    with pytest.raises(OodmlError, match="--runtime 'gpu' is not one of auto, onnx, torch"):
        rt.check_runtime("gpu")


def test_session_uses_the_thread_budget_and_features_do_not_depend_on_it() -> None:
    bb = create_backbone("conv4")
    one, two = rt.OnnxForward(bb, threads=1), rt.OnnxForward(bb, threads=2)
    assert two.threads == 2 and rt.OnnxForward(bb).threads == torch.get_num_threads()
    x = torch.randn(9, 3, 28, 28)
    assert np.array_equal(one(x), two(x))  # deterministic across threads and batch splits: split files stay stable
    assert np.array_equal(two(x)[:4], two(x[:4]))


@pytest.mark.data
def test_lite0_real_weights_onnx_matches_torch_on_cub(shared_data: Path) -> None:
    """Real EfficientNet-Lite0 weights on real CUB images: ONNX Runtime features within 1e-5 (relative) of torch."""
    from oodml.data import load_dataset
    from oodml.features.extract import compute_features

    ds = load_dataset("cub200", shared_data / "cub200_subset").subset_classes(["001.*"])
    bb = create_backbone("efficientnet_lite0")
    onnx = compute_features(ds, bb, batch_size=16, workers=0, forward=rt.make_forward(bb, "onnx"))
    ref = compute_features(ds, bb, batch_size=16, workers=0, forward=rt.make_forward(bb, "torch"))
    assert onnx.shape == ref.shape == (len(ds), 1280)
    assert _relative(onnx, ref) <= 1e-5
    assert float(np.abs(onnx - ref).max() / np.abs(ref).max()) <= 1e-5


def test_lanes_give_the_same_features_as_one_session_and_name_an_unreadable_image(tree: Path) -> None:
    """The default ONNX path (lanes: each thread decodes a batch and runs it on a single-threaded session) computes
    exactly what one session with decoding threads beside it computes, in order; a bad image still stops it with one
    line naming the file."""
    from oodml.data import load_dataset
    from oodml.features.extract import compute_features

    ds = load_dataset("folder", tree)
    bb = create_backbone("conv4")
    fwd = rt.OnnxForward(bb, threads=2)
    lanes = compute_features(ds, bb, batch_size=4, forward=fwd)  # 2 lanes of 2 images
    assert fwd._single is not None  # the lanes' single-threaded session ran
    beside = compute_features(ds, bb, batch_size=4, workers=1, forward=fwd)
    alone = compute_features(ds, bb, batch_size=5, workers=0, forward=rt.OnnxForward(bb, threads=1))
    assert lanes.shape == (12, bb.feature_dim) and np.array_equal(lanes, beside) and np.array_equal(lanes, alone)
    (tree / "emu" / "img03.png").write_bytes(b"garbage")
    with pytest.raises(OodmlError) as e:
        compute_features(load_dataset("folder", tree), bb, batch_size=4, forward=fwd)
    assert "emu/img03.png" in str(e.value) and "\n" not in str(e.value)
