"""`oodml embed` and `oodml list datasets|backbones` through the CLI (typer CliRunner) and one subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import oodml.features.extract
from oodml.cli import app
from tests.data.helpers import isolate, write_class_tree


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path / "cache")


def test_embed_forwards_every_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def fake(**kw: Any) -> Path:
        seen.append(kw)
        return tmp_path / "x.npz"

    monkeypatch.setattr(oodml.features.extract, "embed_dataset", fake)
    r = CliRunner().invoke(app, ["embed", "cub200", "--backbone", "resnet50", "--data-root", "/d", "--classes",
                                 "00[1-3].*", "--classes", "01*", "--out", "f.npz", "--batch-size", "8",
                                 "--workers", "2", "--dataset-option", "rotations=true", "--runtime", "torch",
                                 "--decode", "scaled"])
    assert r.exit_code == 0, r.output
    assert seen == [dict(dataset="cub200", backbone="resnet50", data_root=Path("/d"), classes=("00[1-3].*", "01*"),
                         out=Path("f.npz"), batch_size=8, workers=2, options={"rotations": True}, runtime="torch",
                         weights=None, decode="scaled")]
    assert r.output.strip() == str(tmp_path / "x.npz")


def test_embed_folder_end_to_end_then_cache(tmp_path: Path) -> None:
    tree = write_class_tree(tmp_path / "imgs", {"a": 2, "b": 3})
    args = ["embed", "folder", "--data-root", str(tree), "--backbone", "conv4", "--out", str(tmp_path / "f.npz")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        assert z["features"].shape == (5, 64) and z["class_names"].tolist() == ["a", "b"]
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0 and "using cached features" in r2.output


def test_embed_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    tree = write_class_tree(tmp_path / "imgs", {"a": 2})
    (tree / "a" / "img01.png").write_bytes(b"broken")
    cases = [
        (["embed", "folder", "--data-root", str(tree), "--backbone", "conv4"], "a/img01.png"),
        (["embed", "cub200", "--data-root", str(tmp_path / "nonexistent")], "dataset cub200 not found"),
        (["embed", "mnistt"], "did you mean mnist"),
        (["embed", "folder", "--data-root", str(tree), "--backbone", "lite0"], "unknown backbone"),
        (["embed", "folder", "--data-root", str(tree), "--backbone", "conv4", "--classes", "zz"], "matches no class"),
        (["embed", "folder", "--data-root", str(tree), "--backbone", "conv4", "--runtime", "tensorrt"],
         "--runtime 'tensorrt' is not one of auto, onnx, torch"),
    ]
    for argv, needle in cases:
        r = CliRunner().invoke(app, argv)
        assert r.exit_code == 2, (argv, r.output)
        err = r.stderr if hasattr(r, "stderr") else r.output
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1 and needle in lines[0], (argv, err)


def test_list_datasets_and_backbones() -> None:
    r = CliRunner().invoke(app, ["list", "datasets"])
    names = [line.split("\t")[0] for line in r.output.splitlines()]
    assert r.exit_code == 0 and names == ["cars196", "cub200", "folder", "mnist", "omniglot", "omniglot_small", "sop"]
    r = CliRunner().invoke(app, ["list", "backbones"])
    assert r.exit_code == 0 and "efficientnet_lite0\t" in r.output and "timm:<name>\t" in r.output


def test_python_m_oodml_missing_dataset_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "OODML_CACHE": str(tmp_path / "c"), "OODML_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "oodml", "embed", "cub200", "--data-root", "/nonexistent"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: dataset cub200 not found in /nonexistent")


def test_embed_with_dataset_options(tmp_path: Path) -> None:
    # Omniglot with rotations (Scott et al.): each character also rotated by 90/180/270 degrees as a class of its own
    base = ["embed", "omniglot_small", "--classes", "Greek/character0[12]*", "--backbone", "conv4"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "plain.npz")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [*base, "--dataset-option", "rotations=true", "--out", str(tmp_path / "rot.npz")])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "plain.npz") as a, np.load(tmp_path / "rot.npz") as b:
        assert len(b["class_names"]) == 4 * len(a["class_names"]) == 8
        assert len(b["features"]) == 4 * len(a["features"])
    r = CliRunner().invoke(app, [*base, "--dataset-option", "nosuch=1"])
    assert r.exit_code == 2 and "has no option 'nosuch'" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, [*base, "--dataset-option", "rotations"])
    assert r.exit_code == 2 and "is not NAME=VALUE" in r.output
