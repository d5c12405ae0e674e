"""Folder datasets have names: the folder's own name or --name, so two folders never share a split file, features
or a report; an unregistered name is read as a folder dataset of that name."""

from __future__ import annotations

from pathlib import Path

import pytest

from oodml.data import load_dataset
from oodml.data.folder import folder_name
from oodml.errors import OodmlError
from tests.data.helpers import write_class_tree


def test_a_folder_dataset_is_named_after_its_folder(tmp_path: Path) -> None:
    birds = write_class_tree(tmp_path / "birds", {"a": 2, "b": 2})
    cars = write_class_tree(tmp_path / "my cars!", {"a": 2, "b": 2})
    assert load_dataset("folder", birds).name == "birds"
    assert load_dataset("folder", cars).name == "my_cars_"
    assert load_dataset("folder", birds, name="sparrows").name == "sparrows"
    assert load_dataset("folder", birds).content_hash() != load_dataset("folder", birds, name="x").content_hash()


def test_bad_or_registered_names_are_refused(tmp_path: Path) -> None:
    cub = write_class_tree(tmp_path / "cub200", {"a": 2})
    with pytest.raises(OodmlError, match="registered dataset; pass --name NAME"):
        load_dataset("folder", cub)
    assert load_dataset("folder", cub, name="my_cub").name == "my_cub"
    with pytest.raises(OodmlError, match="not a usable dataset name"):
        folder_name(cub, "../etc")
    with pytest.raises(OodmlError, match="--name is for folder datasets"):
        load_dataset("cub200", cub, name="x")
    assert folder_name(tmp_path / "folder") == "folder"  # $OODML_DATA/folder keeps its old name


def test_an_unregistered_name_is_a_folder_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OODML_DATA", str(tmp_path / "data"))
    write_class_tree(tmp_path / "data" / "birds", {"a": 2, "b": 3})
    ds = load_dataset("birds")
    assert ds.name == "birds" and ds.class_names == ["a", "b"] and len(ds) == 5
    assert ds.content_hash() == load_dataset("folder", tmp_path / "data" / "birds").content_hash()
    other = write_class_tree(tmp_path / "elsewhere", {"c": 2})
    assert load_dataset("sparrows", other).name == "sparrows"  # DATASET with --data-root names it
    with pytest.raises(OodmlError, match="unknown dataset 'cub20'.*did you mean cub200.*--data-root DIR"):
        load_dataset("cub20")


def test_two_folders_keep_two_split_files_and_two_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two folder datasets with default names: two split files, two results folders (the pooling of issue 28)."""
    import json

    from typer.testing import CliRunner

    from oodml.cli import app

    monkeypatch.chdir(tmp_path)
    for name in ("birds", "cats"):
        tree = write_class_tree(tmp_path / "photos" / name, {f"{name[0]}{i:02d}": 3 for i in range(10)})
        r = CliRunner().invoke(app, ["make-splits", "folder", "--data-root", str(tree), "--backbone", "conv4",
                                     "--allow-random-weights", "--levels", "2", "--k", "1", "--episodes", "1",
                                     "--runtime", "torch"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(app, ["run", "--dataset", name, "--method", "pretrained", "--k", "0", "--seeds", "0",
                                     "--workers", "1", "--results", "results"])
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "splits").glob("*.json")) == ["birds.json", "cats.json"]
    assert {json.loads((tmp_path / "splits" / f"{n}.json").read_text())["dataset"] for n in ("birds", "cats")} == \
        {"birds", "cats"}
    r = CliRunner().invoke(app, ["report", "--results", "results", "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert all((tmp_path / "results" / name / "all.csv").is_file() for name in ("birds", "cats"))
