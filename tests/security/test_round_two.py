"""Issue 30 (reliability, round two): writes stay inside the results folder, a config runs no code, one folder takes
many writers, reused results are checked, and every bad input listed there ends in one `error:` line, exit code 2."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from oodml.config import build_run_cfg
from oodml.errors import OodmlError
from oodml.features.cache import read_meta
from oodml.features.io import FeatureSet
from oodml.io import folder_lock, safe_name, safe_path
from oodml.report import build_report
from oodml.report.store import read_store
from oodml.runner import CellStore, run_grid
from oodml.runner.plan import Cell
from oodml.splits.spec import SplitSpec
from tests.report.conftest import write_grid
from tests.runner.fakes import fake_methods, write_inputs
from tests.security.helpers import one_error

PLUGIN = "tests.runner.fake_plugin"


@pytest.fixture
def fakes() -> Iterator[None]:
    with fake_methods():
        yield


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_inputs(tmp_path, n_classes=12, per_class=6, dim=8, levels=2, ks=(2,))


def run(files: tuple[Path, Path], results: Path, **kw: Any) -> int:
    opts: dict[str, Any] = dict(method="fake_proj", features=str(files[0]), splits=str(files[1]), shifts="1",
                                k="0", seeds="0", results=str(results), workers=1)
    opts.update(kw)
    return run_grid(build_run_cfg(opts))


def run_args(files: tuple[Path, Path], results: Path, *extra: str) -> list[str]:
    return ["run", "--method", "fake_proj", "--features", str(files[0]), "--splits", str(files[1]), "--shifts", "1",
            "--k", "0", "--seeds", "0", "--results", str(results), "--workers", "1", *extra]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ---- 1. writes stay inside the results folder -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x/" + "../" * 12 + "tmp/pwn_metric", "..", ".hidden", "a\0b", "é" * 300])
def test_names_from_data_become_one_harmless_component(name: str) -> None:
    safe = safe_name(name)
    assert "/" not in safe and ".." not in safe and not safe.startswith(".") and len(safe) <= 120
    assert safe_name("recall@1") == "recall@1" and safe_name("map@r") == "map@r"
    assert safe_name("é" * 300) != safe_name("é" * 301)  # cut names stay distinct


def test_safe_path_refuses_separators_and_links(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "d").symlink_to(tmp_path / "out")
    for part in ("a/b", "..", ".", ""):
        with pytest.raises(OodmlError, match="not one file name"):
            safe_path(tmp_path / "root", part)
    with pytest.raises(OodmlError, match="symbolic link"):
        safe_path(tmp_path / "root", "d", "report.md")


def test_cells_folder_linked_outside_is_refused(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    results = tmp_path / "r"
    results.mkdir()
    (results / "cells").symlink_to(outside)
    assert "symbolic link" in one_error(capsys, run_args(files, results))
    assert files_under(outside) == []


def test_cells_folder_that_is_a_file_is_one_line(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "r"
    results.mkdir()
    (results / "cells").write_text("not a folder")
    assert "is a file, not a folder" in one_error(capsys, run_args(files, results))


@pytest.mark.parametrize("link", ["dataset", "report.md", "all.csv"])
def test_report_never_writes_through_links(tmp_path: Path, link: str) -> None:
    results = tmp_path / "results"
    write_grid(results, levels=(1, 2), seeds=(0, 1))
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    if link == "dataset":
        (results / "synthetic").symlink_to(outside)
    else:
        (results / "synthetic").mkdir()
        (results / "synthetic" / link).symlink_to(victim)
    with pytest.raises(OodmlError, match="symbolic link"):
        build_report(results=results, metric=None, bootstrap=0)
    assert files_under(outside) == [victim] and victim.read_text() == "keep me"


def test_metric_named_like_a_path_stays_inside(tmp_path: Path) -> None:
    results = tmp_path / "deep" / "er" / "results"
    write_grid(results, levels=(1, 2), seeds=(0, 1))
    evil = "x/" + "../" * 6 + "pwn_metric"
    for p in (results / "cells").glob("*.json"):
        cell = json.loads(p.read_text())
        for r in cell["rows"]:
            r["metric"] = evil if r["metric"] == "map@r" else r["metric"]
        p.write_text(json.dumps(cell))
    (results / "synthetic" / "curves_x").mkdir(parents=True)
    written = build_report(results=results, metric=evil, bootstrap=0)
    assert all(p.resolve().is_relative_to(results.resolve()) for p in written)
    assert [p for p in files_under(tmp_path) if "pwn" in p.name and not p.is_relative_to(results)] == []


# ---- 2. a config runs no code ------------------------------------------------------------------------------------


def test_config_plugins_need_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evilplug_r2.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "study.yaml").write_text("method: margin\nplugins: [evilplug_r2]\n")
    err = one_error(capsys, ["run", "--config", "study.yaml", "--results", str(tmp_path / "r")])
    assert "--plugin evilplug_r2" in err and not marker.exists()


# ---- 3. one folder, many writers ---------------------------------------------------------------------------------


def test_a_cell_extended_elsewhere_keeps_both_k(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    # run A finished k = 0 in the shared folder; run B, which planned before that file existed, finishes k = 2
    shared, fresh = tmp_path / "shared", tmp_path / "fresh"
    assert run(files, shared, k="0") == 0
    assert run(files, fresh, k="2") == 0
    (late,) = CellStore(fresh).cells()
    CellStore(shared).write(late)
    (cell,) = CellStore(shared).cells()
    assert cell["config"]["ks"] == [0, 2]
    assert sorted({r["k_shot"] for r in cell["rows"]}) == [0, 2]
    assert len({r["config_hash"] for r in cell["rows"]}) == 1
    # the same as one run asked for both k
    assert run(files, tmp_path / "both", k="0,2") == 0
    (both,) = CellStore(tmp_path / "both").cells()
    assert cell["config_hash"] == both["config_hash"]
    key = sorted((r["k_shot"], r["metric"], r["value"]) for r in both["rows"])
    assert sorted((r["k_shot"], r["metric"], r["value"]) for r in cell["rows"]) == key
    assert run(files, shared, k="0,2") == 0  # nothing left to do
    # an error arriving later never replaces finished values
    failed = {**late, "status": "error", "error": "boom", "rows": []}
    CellStore(shared).write(failed)
    assert CellStore(shared).cells()[0]["status"] == "ok"


@pytest.mark.slow
def test_two_processes_on_one_folder_keep_both_runs_values(files: tuple[Path, Path], tmp_path: Path) -> None:
    """`oodml run --k 0` and `--k 2` started together on one folder (a fake method that sleeps 8 s, so both
    have planned before either writes): both exit 0 and the cell holds both k afterwards."""
    import subprocess
    import sys

    from tests.conftest import REPO

    results = tmp_path / "shared"
    env = dict(os.environ, PYTHONPATH=str(REPO), FAKE_SLOW_S="8", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "oodml", *run_args(files, results, "--k", k, "--method",
                                                                      "fake_slow", "--plugin", PLUGIN)],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for k in ("0", "2")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs if p.stderr]
    (cell,) = CellStore(results).cells()
    assert cell["config"]["ks"] == [0, 2] and {r["k_shot"] for r in cell["rows"]} == {0, 2}


def test_folder_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    with folder_lock(tmp_path):
        fd = os.open(tmp_path / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the holder
    os.close(fd)


def test_full_disk_is_named(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    import oodml.runner.store as store

    def full(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "atomic_write", full)
    with pytest.raises(OodmlError, match="no space left"):
        run(files, tmp_path / "r")


# ---- 4. integrity of what is reused ------------------------------------------------------------------------------


def test_report_counts_an_identical_copy_once_and_refuses_a_conflicting_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    write_grid(results, levels=(1, 2), seeds=(0, 1))
    n_rows = len(read_store(results).rows)
    first = sorted((results / "cells").glob("*.json"))[0]
    copy = results / "cells" / "zz_copy.json"
    copy.write_text(first.read_text())
    capsys.readouterr()
    assert len(read_store(results).rows) == n_rows
    assert "counted once" in capsys.readouterr().err
    cell = json.loads(first.read_text())
    cell["rows"][0]["value"] = 0.5 * cell["rows"][0]["value"] + 0.01
    copy.write_text(json.dumps(cell))
    with pytest.raises(OodmlError, match="both hold cell .* different values"):
        read_store(results)


def test_deep_json_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    write_grid(results, levels=(1,), seeds=(0,))
    deep = results / "cells" / "deep.json"
    deep.write_text('{"rows": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nests too deeply" in one_error(capsys, ["report", "--results", str(results), "--bootstrap", "0"])
    assert CellStore(results).read("deep") is None  # run recomputes it


def test_features_that_miss_episode_ids_say_how_many(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    fs = FeatureSet.load(files[0])
    renamed = FeatureSet(fs.features, fs.labels, fs.class_names, np.array([f"{p}.x" for p in fs.paths]), fs.meta)
    path = renamed.save(tmp_path / "renamed.npz")
    with pytest.raises(OodmlError, match=r"lacks \d+ of the \d+ image ids"):
        run((path, files[1]), tmp_path / "r", k="2")
    assert not (tmp_path / "r").exists()


def test_other_features_never_share_a_cell_identity() -> None:
    base = Cell(dataset="d", backbone="b", feature_hash="f" * 64, regime="head", method="m", params_json="{}",
                level=1, split_hash="s", seed=0, shots=(0,))
    other = Cell(**{**base.__dict__, "features_used": "e" * 64})
    assert other.cell_id != base.cell_id and other.fit_id != base.fit_id
    assert other.seed_key() == base.seed_key()  # the same seeds: rounding differences stay rounding differences


# ---- 5. bounds and types ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,needle", [
    (["--k", "6"], "leaves 0 class(es) with a query"),
    (["--episodes", str(10**9)], "--episodes must be in 1..100,000"),
    (["--ways", "1"], "'--ways'"),
])
def test_make_splits_bounds(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            extra: list[str], needle: str) -> None:
    out = tmp_path / "s.json"
    err = one_error(capsys, ["make-splits", "--features", str(files[0]), "--levels", "2", "--out", str(out), *extra])
    assert needle in err and not out.exists()


def _edit_split(files: tuple[Path, Path], tmp_path: Path, edit: Any) -> tuple[Path, Path]:
    spec = SplitSpec.load(files[1])
    edit(spec.levels[0])
    d = spec.to_dict()
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(d))
    return files[0], path


def test_one_way_episodes_and_empty_train_side_are_refused(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    def one_way(lv: Any) -> None:
        lv.episodes["2"] = [{c: ids for c, ids in sorted(ep.items())[:1]} for ep in lv.episodes["2"]]

    def no_train(lv: Any) -> None:
        lv.removed_classes, lv.train_classes, lv.val_classes = sorted(lv.removed_classes + lv.train_classes), [], []

    err = one_error(capsys, run_args(_edit_split(files, tmp_path, one_way), tmp_path / "r", "--k", "2"))
    assert "fewer than 2 classes" in err
    err = one_error(capsys, run_args(_edit_split(files, tmp_path, no_train), tmp_path / "r"))
    assert "0 train class(es)" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("config,needle", [
    ("method: fake_proj\nseeds: 0\nseeds: 1\n", "gives key 'seeds' twice"),
    ("method: fake_proj\nmethod_params:\n  dim: .inf\n", "not a finite number"),
    ("method: fake_proj\ndataset_options:\n  no_such_option: 1\n", "has no option"),
])
def test_config_values(fakes: None, files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       config: str, needle: str) -> None:
    (tmp_path / "c.yaml").write_text(config)
    assert needle in one_error(capsys, run_args(files, tmp_path / "r", "--config", str(tmp_path / "c.yaml")))


@pytest.mark.parametrize("param,needle", [
    ("dim=!!python/object/apply:os.system ['true']", "not a plain value"),
    ("dim=nan", "not a finite number"),
])
def test_method_param_values(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str], param: str, needle: str) -> None:
    assert needle in one_error(capsys, run_args(files, tmp_path / "r", "--method-param", param))


def test_huge_bootstrap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "100000" in one_error(capsys, ["report", "--results", str(tmp_path), "--bootstrap", str(10**12)])


def _forged(src: Path, dest: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dest, "w") as w:
        for n in z.namelist():
            w.writestr(n, payload if n == member else z.read(n))
    return dest


def test_features_files_checked_before_numpy_allocates(files: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 1000)})
    big = _forged(files[0], tmp_path / "big.npz", "features.npy", head.getvalue() + b"\0" * 64)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "plain.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    d = dict(np.load(files[0]))
    d["class_split"] = np.array(["train"])
    np.savez(tmp_path / "split.npz", **d)
    for path, needle in ((big, "claims shape"), (tmp_path / "plain.npz", "not an .npz"),
                         (tmp_path / "split.npz", "class_split has shape")):
        assert needle in one_error(capsys, ["make-splits", "--features", str(path), "--out", str(tmp_path / "s.json")])
    # the same file planted in the feature cache is skipped with a note, not fatal
    assert read_meta(big) == {} and "skipped" in capsys.readouterr().err


def test_decompression_bomb_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oodml.data.base import DirSource, ImageDataset

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    ds = ImageDataset("bombs", tmp_path, ["a.png"], np.zeros(1, dtype=np.int64), ["a"], None, DirSource(tmp_path))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is then more than twice the limit
    with pytest.raises(OodmlError, match="cannot read image .*DecompressionBombError"):
        ds.open(0)


@pytest.mark.parametrize("where", ["train", "episode class", "episode file"])
def test_import_splits_refuses_path_like_names(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               where: str) -> None:
    evil = "../../../etc/passwd"
    split: dict[str, Any] = {"train": ["a", "b"], "test": ["c", "d"], "fid": 1.0,
                             "test_episodes": {1: {0: {"c": ["x.jpg"], "d": ["y.jpg"]}}}}
    if where == "train":
        split["train"] = ["a", evil]
    elif where == "episode class":
        split["test_episodes"] = {1: {0: {evil: ["x.jpg"], "d": ["y.jpg"]}}}
    else:
        split["test_episodes"] = {1: {0: {"c": [evil], "d": ["y.jpg"]}}}
    pkl = tmp_path / "x_splits.pkl"
    pkl.write_bytes(pickle.dumps({0: split, 1: {**split, "fid": 2.0}}))
    out = tmp_path / "s.json"
    err = one_error(capsys, ["import-splits", str(pkl), "--dataset", "cub200", "--out", str(out)])
    assert "looks like a path" in err and not out.exists()


def test_replaced_fit_cache_entry_is_refitted(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    results = tmp_path / "r"
    assert run(files, results) == 0
    clean = [(r["metric"], r["value"]) for r in CellStore(results).cells()[0]["rows"]]
    (entry,) = CellStore(results).fits_dir.glob("*.pt")
    state = torch.load(entry, weights_only=True)
    torch.save({k: v + 1 if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}, entry)
    for p in CellStore(results).cells_dir.glob("*.json"):
        p.unlink()
    capsys.readouterr()
    assert run(files, results) == 0
    assert "differs from the sha256 recorded" in capsys.readouterr().err
    assert [(r["metric"], r["value"]) for r in CellStore(results).cells()[0]["rows"]] == clean


def test_features_shuffled_within_classes_are_refused_when_the_own_are_cached(
        fakes: None, files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FeatureSet.load(files[0])
    cache = tmp_path / "cache"
    (cache / "features" / "synthetic").mkdir(parents=True)
    (cache / "features" / "synthetic" / "own.npz").write_bytes(files[0].read_bytes())
    monkeypatch.setenv("OODML_CACHE", str(cache))
    paths = fs.paths.copy()
    for label in np.unique(fs.labels):  # the class means (and every FID) stay, the images move
        rows = np.flatnonzero(fs.labels == label)
        paths[rows] = paths[np.roll(rows, 1)]
    shuffled = FeatureSet(fs.features, fs.labels, fs.class_names, paths, dict(fs.meta)).save(tmp_path / "sh.npz")
    with pytest.raises(OodmlError, match=r"features of \d+ of \d+ images differ from the split file's own"):
        run((shuffled, files[1]), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_compare_never_writes_through_a_linked_dataset_folder(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    write_grid(results, levels=(1, 2), seeds=(0, 1))
    outside = tmp_path / "outside"
    outside.mkdir()
    (results / "synthetic").symlink_to(outside)
    err = one_error(capsys, ["compare", "margin", "transfer", "--results", str(results), "--bootstrap", "0"])
    assert "symbolic link" in err and files_under(outside) == []
