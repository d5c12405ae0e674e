"""Backbone registry contract, the EfficientNet-Lite0 weight conversion, conv4 shapes, clear weight errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from oodml.features.backbones import (BACKBONES, Backbone, convert_lite0_state_dict, create_backbone,
                                      lite0_timm_model, lite0_weights_file)
from oodml.errors import OodmlError

OFFLINE_BUILDABLE = ["efficientnet_lite0", "conv4", "conv4_84"]


def test_registry_lists_the_backbones() -> None:
    assert set(BACKBONES.names()) == {"efficientnet_lite0", "resnet50", "conv4", "conv4_84", "timm:<name>",
                                    "scott_mnist_conv", "scott_omniglot_conv"}
    assert all(BACKBONES.info(n).description for n in BACKBONES.names())


@pytest.mark.parametrize("name", OFFLINE_BUILDABLE + ["resnet50", "timm:mobilenetv3_small_050"])
def test_backbone_contract(name: str) -> None:
    bb = create_backbone(name, pretrained=name in OFFLINE_BUILDABLE)
    assert isinstance(bb, Backbone) and not bb.training
    info_dim = BACKBONES.info(name).feature_dim if not name.startswith("timm:") else None
    assert info_dim in (None, bb.feature_dim)
    gray = Image.new("L", (40, 30), color=200)  # grayscale input -> 3 channels
    x = torch.stack([bb.eval_transform(gray), bb.eval_transform(gray.convert("RGB"))])
    assert x.shape == (2, 3, bb.input_size, bb.input_size)
    with torch.inference_mode():
        y = bb(x)
    assert y.shape == (2, bb.feature_dim) and torch.isfinite(y).all()
    torch.testing.assert_close(y[0], y[1])
    t = bb.train_transform(Image.new("RGB", (50, 50), color=(10, 200, 30)))
    assert t.shape == (3, bb.input_size, bb.input_size)


def test_conv4_dims_and_deterministic_init() -> None:
    assert create_backbone("conv4").feature_dim == 64 and create_backbone("conv4_84").feature_dim == 1600
    state = torch.get_rng_state()
    a, b = create_backbone("conv4"), create_backbone("conv4")
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_lite0_conversion_covers_every_key_strictly() -> None:
    state = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    converted = convert_lite0_state_dict(state)
    model = lite0_timm_model(pretrained=False)
    assert set(converted) == set(model.state_dict()) and len(converted) == len(state)
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())
    with pytest.raises(OodmlError, match="unexpected key"):
        convert_lite0_state_dict({"_blocks.0.bogus.weight": torch.zeros(1), "junk": torch.zeros(1)})


def test_resnet50_without_cached_weights_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(OodmlError, match="not in the torch hub cache .*resnet50-"):
        create_backbone("resnet50")


def test_timm_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(OodmlError, match="unknown timm model 'resnet5O'"):
        create_backbone("timm:resnet5O", pretrained=False)
    with pytest.raises(OodmlError, match="local Hugging Face cache"):
        monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")
        create_backbone("timm:resnet18", pretrained=True)
    with pytest.raises(OodmlError, match="unknown backbone"):
        create_backbone("efficientnet_lite9")


@pytest.mark.data
def test_lite0_classifies_the_cub_albatross_as_imagenet_146(shared_data: Path) -> None:
    from oodml.data import load_dataset

    ds = load_dataset("cub200", shared_data / "cub200_subset").subset_classes(["001.*"])
    bb = create_backbone("efficientnet_lite0")
    x = torch.stack([bb.eval_transform(ds.open(i)) for i in range(3)])
    with torch.inference_mode():
        logits = bb.body(x)
    assert logits.argmax(1).tolist() == [146, 146, 146]  # albatross


# --- own backbone: a local weights file, the Hugging Face cache, random weights ------------------------------------

TINY = "test_resnet"  # a timm test model: 0.5 M parameters, 160 px


@pytest.fixture
def tiny_weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A state dict of the tiny timm model (with its classifier), saved to a temporary file."""
    from oodml.compat import import_timm

    torch.manual_seed(3)
    state = import_timm().create_model(TINY, pretrained=False).state_dict()
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    return path, state


def test_timm_backbone_loads_a_local_weights_file(tiny_weights: tuple[Path, dict[str, torch.Tensor]]) -> None:
    import hashlib

    from oodml.features.backbones import backbone_weights_id, has_trained_weights

    path, state = tiny_weights
    bb = create_backbone(f"timm:{TINY}", weights=path)
    assert bb.pretrained and bb.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = bb.body.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)  # every kept tensor is the file's
    assert not any(k.startswith("fc.") for k in loaded)  # the classifier is dropped (num_classes=0)
    other = create_backbone(f"timm:{TINY}", pretrained=False)
    x = torch.randn(2, 3, bb.input_size, bb.input_size)
    with torch.inference_mode():
        assert not torch.allclose(bb(x), other(x))
    assert backbone_weights_id(f"timm:{TINY}", path) == f"file:sha256:{bb.weights_sha256}"
    assert has_trained_weights(f"timm:{TINY}", path) and not has_trained_weights("conv4")
    assert has_trained_weights("conv4", path) and has_trained_weights("efficientnet_lite0")


def test_weights_file_errors_are_one_clear_line(tmp_path: Path,
                                                tiny_weights: tuple[Path, dict[str, torch.Tensor]]) -> None:
    with pytest.raises(OodmlError, match="is not a file"):
        create_backbone(f"timm:{TINY}", weights=tmp_path / "missing.pth")
    with pytest.raises(OodmlError, match="does not fit timm:resnet18"):
        create_backbone("timm:resnet18", weights=tiny_weights[0])
    with pytest.raises(OodmlError, match="does not fit backbone conv4"):
        create_backbone("conv4", weights=tiny_weights[0])


def test_registered_backbone_loads_its_own_state_dict(tmp_path: Path) -> None:
    trained = create_backbone("conv4")
    with torch.no_grad():
        for p in trained.body.parameters():
            p.add_(1.0)
    torch.save(trained.body.state_dict(), tmp_path / "conv4.pth")
    bb = create_backbone("conv4", weights=tmp_path / "conv4.pth")
    assert bb.pretrained and all(torch.equal(a, b) for a, b in zip(bb.body.state_dict().values(),
                                                                   trained.body.state_dict().values()))


def test_offline_timm_weights_come_from_the_hugging_face_cache(monkeypatch: pytest.MonkeyPatch,
                                                               tiny_weights: tuple[Path, dict[str, torch.Tensor]]
                                                               ) -> None:
    import huggingface_hub

    path, state = tiny_weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, filename, **kw: str(path) if filename == "pytorch_model.bin" else None)
    bb = create_backbone(f"timm:{TINY}")
    loaded = bb.body.state_dict()
    assert bb.pretrained and all(torch.equal(loaded[k], state[k]) for k in loaded)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename, **kw: None)
    with pytest.raises(OodmlError, match="HF_HUB_OFFLINE.*--backbone-weights FILE"):
        create_backbone(f"timm:{TINY}")


def test_features_meta_records_the_weights_checksum(tmp_path: Path,
                                                    tiny_weights: tuple[Path, dict[str, torch.Tensor]]) -> None:
    from oodml.features.extract import embed_dataset
    from oodml.features.io import FeatureSet
    from tests.data.helpers import write_class_tree

    tree = write_class_tree(tmp_path / "birds", {"a": 2, "b": 2})
    path = tiny_weights[0]
    kw: dict = dict(dataset="folder", backbone=f"timm:{TINY}", data_root=tree, workers=0, runtime="torch")
    own = FeatureSet.load(embed_dataset(weights=path, **kw))
    assert own.meta["weights_sha256"] == create_backbone(f"timm:{TINY}", weights=path).weights_sha256
    assert own.meta["weights"] == f"file:sha256:{own.meta['weights_sha256']}" and own.meta["pretrained"] is True
    torch.save({k: v + 0.5 for k, v in tiny_weights[1].items()}, tmp_path / "other.pth")
    other = FeatureSet.load(embed_dataset(weights=tmp_path / "other.pth", **kw))  # other weights: not a cache hit
    assert other.meta["weights_sha256"] != own.meta["weights_sha256"] and other.hash != own.hash


def test_make_splits_refuses_random_weights_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from oodml.cli import main
    from tests.data.helpers import write_class_tree

    monkeypatch.chdir(tmp_path)
    tree = write_class_tree(tmp_path / "shapes", {f"c{i:02d}": 3 for i in range(10)})
    args = ["make-splits", "folder", "--data-root", str(tree), "--backbone", "conv4", "--levels", "2", "--k", "1",
            "--episodes", "1", "--runtime", "torch"]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "random weights" in err[0] and "--allow-random-weights" in err[0]
    assert not (tmp_path / "splits").exists()
    with pytest.raises(SystemExit) as e:
        main([*args, "--allow-random-weights"])
    assert e.value.code == 0 and "warning: backbone conv4 has random weights" in capsys.readouterr().err
    spec = json.loads((tmp_path / "splits" / "shapes.json").read_text())
    assert spec["dataset"] == "shapes" and spec["backbone"] == "conv4"
    assert "pretrained" not in json.dumps(spec["levels"]) and "pretrained" in json.dumps(spec)  # recorded: false
    # its frozen-features rows never say `pretrained` (issue 28): the report and compare call them random_features
    for seed in ("0", "1"):
        with pytest.raises(SystemExit) as e:
            main(["run", "--dataset", "shapes", "--method", "pretrained,margin", "--k", "0", "--seeds", seed,
                  "--workers", "1", "--results", "results", "--method-param", "margin.iterations=5"])
        assert e.value.code == 0
    cell = json.loads(next((tmp_path / "results" / "cells").glob("*.json")).read_text())
    assert cell["config"]["backbone_weights"] == "random"
    with pytest.raises(SystemExit) as e:
        main(["report", "--results", "results", "--bootstrap", "0"])
    assert e.value.code == 0
    board = (tmp_path / "results" / "shapes" / "leaderboard_k0.csv").read_text()
    assert "random_features" in board and "pretrained" not in board
    assert "random weights" in (tmp_path / "results" / "shapes" / "report.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["compare", "margin", "random_features", "--results", "results", "--k", "0"])
    assert e.value.code == 0 and "random_features" in capsys.readouterr().out


def test_run_recomputes_features_with_the_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       tiny_weights: tuple[Path, dict[str, torch.Tensor]]) -> None:
    import json
    import shutil

    from typer.testing import CliRunner

    from oodml.cli import app
    from tests.data.helpers import write_class_tree

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    tree = write_class_tree(tmp_path / "birds", {f"c{i:02d}": 3 for i in range(10)})
    weights = str(tiny_weights[0])
    common = ["--backbone-weights", weights, "--runtime", "torch"]
    r = CliRunner().invoke(app, ["make-splits", "folder", "--data-root", str(tree), "--backbone", f"timm:{TINY}",
                                 "--levels", "2", "--k", "1", "--episodes", "1", *common])
    assert r.exit_code == 0, r.output
    spec = json.loads((tmp_path / "splits" / "birds.json").read_text())
    assert spec["backbone"] == f"timm:{TINY}" and "weights_sha256" in json.dumps(spec)
    shutil.rmtree(tmp_path / "cache" / "features")  # run must compute them again, with the same weights
    run = ["run", "--dataset", "birds", "--data-root", str(tree), "--method", "pretrained", "--k", "0", "--seeds",
           "0", "--shifts", "1", "--workers", "1", "--results", "results"]
    r = CliRunner().invoke(app, [*run, *common])
    assert r.exit_code == 0, r.output
    cells = [json.loads(p.read_text()) for p in (tmp_path / "results" / "cells").glob("*.json")]
    assert len(cells) == 1 and cells[0]["status"] == "ok"
    assert {row["feature_hash"] for row in cells[0]["rows"]} == {spec["feature_hash"]}
