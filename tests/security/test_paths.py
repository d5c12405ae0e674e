"""Issue 16 items 2 (names that become paths) and 4 (every destination checked writable before any work)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import oodml.runner
from oodml.config import RunCfg
from oodml.errors import OodmlError, check_name, check_writable
from oodml.features.io import FeatureSet
from oodml.report import build_report
from oodml.splits.spec import SplitSpec
from tests.conftest import make_blobs
from tests.report.conftest import write_grid
from tests.runner.fakes import write_inputs
from tests.security.helpers import one_error


@pytest.fixture
def no_grid(monkeypatch: pytest.MonkeyPatch) -> list[RunCfg]:
    seen: list[RunCfg] = []
    monkeypatch.setattr(oodml.runner, "run_grid", lambda cfg: seen.append(cfg) or 0)
    return seen


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody (root included) can create files in (`chattr +i`); skipped where chattr is not allowed."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("name", ["../../../../tmp/x", "a/b", "..", ".hidden", "", "x" * 200, "cub200\n"])
def test_path_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(OodmlError, match="not a valid name"):
        check_name(name, "dataset")
    assert check_name("cub200_subset.v2-a", "dataset") == "cub200_subset.v2-a"


def test_split_file_dataset_cannot_be_a_path(tmp_path: Path) -> None:
    _, split = write_inputs(tmp_path)
    d = json.loads(split.read_text())
    d["dataset"] = "../../../../tmp/x"
    split.write_text(json.dumps(d))
    with pytest.raises(OodmlError, match="split file .*`dataset`.*not a valid name"):
        SplitSpec.load(split)


def test_report_refuses_a_dataset_name_that_is_a_path(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_grid(results, dataset="../../escaped")
    with pytest.raises(OodmlError, match="not a valid name"):
        build_report(results=results)
    assert not (tmp_path / "escaped").exists() and sorted(p.name for p in results.iterdir()) == ["cells"]


def test_import_splits_dataset_must_be_registered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkl = tmp_path / "s.pkl"
    pkl.write_bytes(pickle.dumps({1: {"train": ["a", "b"], "test": ["c", "d"], "fid": 1.0}}))
    out = tmp_path / "o.json"
    line = one_error(capsys, ["import-splits", str(pkl), "--dataset", "../../../tmp/x", "--out", str(out)])
    assert "unknown dataset" in line
    assert "did you mean cub200" in one_error(capsys, ["import-splits", str(pkl), "--dataset", "cubb200"])
    assert not out.exists() and not Path("splits/cubb200_oodml.json").exists()


def test_features_meta_dataset_cannot_be_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fs = make_blobs(dataset="../../../tmp/evil")
    path = fs.save(tmp_path / "f.npz")
    line = one_error(capsys, ["make-splits", "--features", str(path), "--levels", "2", "--k", "1", "--episodes", "1"])
    assert "meta.dataset" in line and "not a valid name" in line


# ---- destinations ----------------------------------------------------------------------------------------------

def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "deeper", "--out")  # created later by the command: its parent is probed
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OodmlError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "x", "--results")


@pytest.mark.parametrize("args", [
    ["run", "--method", "margin", "--results", "/etc/hostname/x"],
    ["embed", "mnist", "--out", "/etc/hostname/f.npz"],
    ["make-splits", "mnist", "--out", "/etc/hostname/s.json"],
    ["import-splits", "nope.pkl", "--dataset", "cars196", "--out", "/etc/hostname/s.json"],
])
def test_destination_under_a_file_is_refused_first(capsys: pytest.CaptureFixture[str], no_grid: list[RunCfg],
                                                   args: list[str]) -> None:
    assert "'/etc/hostname' is a file" in one_error(capsys, args)
    assert not no_grid


def test_destinations_in_an_immutable_folder(immutable: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             no_grid: list[RunCfg]) -> None:
    assert "not writable" in one_error(capsys, ["run", "--method", "margin", "--results", str(immutable)])
    assert "not writable" in one_error(capsys, ["embed", "mnist", "--out", str(immutable / "f.npz")])
    feats, _ = write_inputs(tmp_path)
    line = one_error(capsys, ["make-splits", "--features", str(feats), "--out", str(immutable / "s.json")])
    assert "not writable" in line
    assert not no_grid and list(immutable.iterdir()) == []


def test_report_into_an_immutable_dataset_folder(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_grid(results)
    (results / "synthetic").mkdir()
    if subprocess.run(["chattr", "+i", str(results / "synthetic")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(OodmlError, match="report folder .* is not writable"):
            build_report(results=results)
    finally:
        subprocess.run(["chattr", "-i", str(results / "synthetic")], check=True)


def test_cache_that_is_a_file_or_immutable(tmp_path: Path, immutable: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cachefile"))
    assert "OODML_CACHE" in one_error(capsys, ["embed", "mnist", "--out", str(tmp_path / "f.npz")])
    monkeypatch.setenv("OODML_CACHE", str(immutable))
    assert "OODML_CACHE" in one_error(capsys, ["make-splits", "mnist", "--out", str(tmp_path / "s.json")])
    assert not (tmp_path / "f.npz").exists()


def test_os_errors_of_a_path_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # the backstop behind the checks: a permission error from deep inside a command is one line, not a traceback
    import oodml.report

    def denied(**_: object) -> list[Path]:
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(oodml.report, "build_report", denied)
    assert "Permission denied" in one_error(capsys, ["report", "--results", str(tmp_path)])
    monkeypatch.setenv("OODML_DEBUG", "1")
    with pytest.raises(PermissionError):
        from oodml.cli import main

        main(["report", "--results", str(tmp_path)])
    assert os.environ["OODML_DEBUG"] == "1" and np is not None


def test_run_checks_the_cache_before_computing_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a split file whose features are not cached: `run` would embed the images into $OODML_CACHE; an unusable
    # cache is reported before that work
    from oodml.config import build_run_cfg
    from oodml.runner import plan_grid

    _, split = write_inputs(tmp_path)
    split.write_text(split.read_text().replace('"backbone": "none"', '"backbone": "efficientnet_lite0"'))
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cachefile"))
    import oodml.features.extract as extract

    monkeypatch.setattr(extract, "load_or_compute_features", lambda *a, **k: pytest.fail("computed features"))
    cfg = build_run_cfg({"method": "pretrained", "splits": str(split), "results": str(tmp_path / "r")})
    with pytest.raises(OodmlError, match="OODML_CACHE"):
        plan_grid(cfg)
