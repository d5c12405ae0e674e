"""Issue 16 items 3 (pickle bombs), 6 (malformed features), 7 (malformed ooDML pickles), 8 (NaN/Inf features),
9 (hand-edited split files) and 12 (report.md escaping, messages): files from others are checked on load, and a bad
one is one `error:` line, never a traceback, a silently changed benchmark or markup in the report."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oodml.config import build_run_cfg
from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.report import build_report
from oodml.splits.importer import safe_load
from oodml.splits.spec import SplitSpec
from tests.conftest import make_blobs
from tests.report.conftest import make_row, write_cell, write_grid
from tests.runner.fakes import fake_methods, write_inputs
from tests.security.helpers import one_error

# ---- ooDML pickles ---------------------------------------------------------------------------------------------


def _pickle(tmp_path: Path, obj: Any = None, raw: bytes | None = None) -> Path:
    p = tmp_path / "s.pkl"
    p.write_bytes(raw if raw is not None else pickle.dumps(obj, protocol=2))
    return p


def test_pickle_alias_bomb_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaf: list[Any] = ["x", "x"]
    for _ in range(40):  # 2^41 leaves once expanded, a few hundred bytes pickled (every level memoised)
        leaf = [leaf, leaf]
    p = _pickle(tmp_path, {1: {"train": leaf, "test": ["c"], "fid": 1.0}})
    assert p.stat().st_size < 2000
    with pytest.raises(OodmlError, match="expands to more than"):
        safe_load(p.read_bytes())
    assert "expands" in one_error(capsys, ["import-splits", str(p), "--dataset", "sop", "--out", str(tmp_path / "o")])


def test_deeply_nested_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 200_000  # 200,000 nested lists: EMPTY_LIST n times, then APPEND n-1 times (no recursion in the unpickler)
    p = _pickle(tmp_path, raw=b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")
    line = one_error(capsys, ["import-splits", str(p), "--dataset", "sop", "--out", str(tmp_path / "o.json")])
    assert "nests deeper" in line


@pytest.mark.parametrize(("split", "words"), [
    ({"train": ["a", "b"], "test": ["c", "d"], "fid": "12.5"}, "`fid` must be a finite number"),
    ({"train": ["a", "b"], "test": ["c", "d"], "fid": float("nan")}, "`fid` must be a finite number"),
    ({"train": ["a", "b"], "test": ["c", "d"], "fid": float("inf")}, "`fid` must be a finite number"),
    ({"train": 5, "test": ["c", "d"], "fid": 1.0}, "`train` must be a list of class names"),
    ({"train": ["a", "b"], "test": ["c", "d"], "fid": 1.0, "test_episodes": [1, 2]}, "`test_episodes` must map"),
    ({"train": ["a", "b"], "test": ["c", "d"], "fid": 1.0, "test_episodes": {"two": {}}}, "number of shots"),
    ({"train": ["a", "b"], "test": ["c", "d"], "fid": 1.0, "test_episodes": {2: {0: {"c": 5}}}}, "lists of file"),
])
def test_malformed_pickle_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], split: dict[str, Any],
                                 words: str) -> None:
    out = tmp_path / "o.json"
    p = _pickle(tmp_path, {1: split, 2: {"train": ["a", "c"], "test": ["b", "d"], "fid": 2.0}})
    assert words in one_error(capsys, ["import-splits", str(p), "--dataset", "sop", "--out", str(out)])
    assert not out.exists()


def test_oversized_pickle_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oodml.splits import importer

    monkeypatch.setattr(importer, "MAX_PICKLE_BYTES", 10)
    p = _pickle(tmp_path, {1: {"train": ["a"], "test": ["b"], "fid": 1.0}})
    with pytest.raises(OodmlError, match="bytes; an ooDML split pickle is a few MB"):
        importer.import_splits_command(pickle_file=p, dataset="sop", out=tmp_path / "o.json")


# ---- features files --------------------------------------------------------------------------------------------


def _npz(path: Path, **over: Any) -> Path:
    fs = make_blobs(n_classes=6, per_class=4, dim=4)
    arrays: dict[str, Any] = dict(features=fs.features, labels=fs.labels, class_names=fs.class_names,
                                  paths=fs.paths, meta=np.array(json.dumps({"dataset": "synthetic"})))
    arrays.update(over)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("over", "words"), [
    ({"meta": np.array(json.dumps([1, 2]))}, "`meta` that is a JSON list"),
    ({"meta": np.array("{not json")}, "`meta` that is not JSON"),
    ({"meta": np.array(json.dumps({"dataset": 5}))}, "not a valid name"),
    ({"features": np.zeros((24, 0), np.float32)}, "zero-width features"),
    ({"features": np.array(["a"] * 24)}, "`features` has dtype"),
    ({"labels": np.linspace(0, 1, 24)}, "`labels` has dtype"),
])
def test_malformed_features_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], over: dict[str, Any],
                                 words: str) -> None:
    path = _npz(tmp_path / "f.npz", **over)
    with pytest.raises(OodmlError, match="f.npz"):
        FeatureSet.load(path)
    assert words in one_error(capsys, ["make-splits", "--features", str(path), "--out", str(tmp_path / "s.json")])
    _, split = write_inputs(tmp_path / "ok")
    assert words in one_error(capsys, ["run", "--method", "pretrained", "--splits", str(split), "--features",
                                       str(path), "--results", str(tmp_path / "r")])
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "r").exists()


def test_nan_and_inf_rows_name_their_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # they used to move the classes to removed_classes silently (exit 0); an error naming them is what a user needs:
    # the embedding broke, and a benchmark without those classes is another benchmark
    fs = make_blobs(n_classes=6, per_class=4, dim=4)
    feats = fs.features.copy()
    feats[np.flatnonzero(fs.labels == 2)[0], 1] = np.nan
    feats[np.flatnonzero(fs.labels == 4)[1], 0] = np.inf
    path = _npz(tmp_path / "f.npz", features=feats)
    line = one_error(capsys, ["make-splits", "--features", str(path), "--out", str(tmp_path / "s.json")])
    assert "NaN or Inf in 2 row(s)" in line
    assert repr(str(fs.class_names[2])) in line and repr(str(fs.class_names[4])) in line
    assert not (tmp_path / "s.json").exists()


# ---- split files -----------------------------------------------------------------------------------------------


def _edit(split: Path, change: Any) -> Path:
    d = json.loads(split.read_text())
    change(d)
    split.write_text(json.dumps(d))
    return split


def _move_train_class_into_episode(d: dict[str, Any]) -> None:
    lv = d["levels"][0]
    ep = lv["episodes"]["2"][0]
    ep[lv["train_classes"][0]] = ep.pop(lv["test_classes"][0])


def _episode_class_nowhere(d: dict[str, Any]) -> None:
    ep = d["levels"][0]["episodes"]["2"][0]
    ep["no_such_class"] = ep.pop(sorted(ep)[0])


def _drop_class_at_one_level(d: dict[str, Any]) -> None:
    lv = d["levels"][1]
    lv["train_classes"] = lv["train_classes"][1:]
    lv["val_classes"] = [c for c in lv["val_classes"] if c in lv["train_classes"]]


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d.update(schema_version=99), "schema_version 99"),
    (lambda d: d["levels"][0].update(fid=float("nan")), "finite number"),
    (lambda d: d["levels"][0].update(fid="10"), "finite number"),
    (lambda d: d["levels"][0].update(train_classes="abc"), "list of names"),
    (lambda d: d["levels"][0]["episodes"].update(x=[]), "number of shots"),
    (_move_train_class_into_episode, "is a train class; episodes may use test classes only"),
    (_episode_class_nowhere, "'no_such_class' is not a test class"),
    (lambda d: d["levels"][0]["episodes"]["2"][0].update({d["levels"][0]["test_classes"][0]: ["x"]}),
     "support image(s)"),
    (_drop_class_at_one_level, "every level must partition the same classes"),
])
def test_hand_edited_split_file_is_refused_on_load(tmp_path: Path, change: Any, words: str) -> None:
    _, split = write_inputs(tmp_path)
    with pytest.raises(OodmlError, match="split file"):
        SplitSpec.load(_edit(split, change))
    with pytest.raises(OodmlError) as e:
        SplitSpec.load(split)
    assert words in str(e.value)


def test_edited_level_fid_is_checked_against_the_features(tmp_path: Path) -> None:
    from oodml.runner import plan_grid

    feats, split = write_inputs(tmp_path)
    cfg = build_run_cfg(dict(method="fake_proj", features=str(feats), splits=str(split), k="0", seeds="0",
                             results=str(tmp_path / "r")))
    with fake_methods():
        assert len(plan_grid(cfg).cells) == 3
        _edit(split, lambda d: d["levels"][0].update(fid=d["levels"][0]["fid"] * 0.5))
        with pytest.raises(OodmlError, match="level 1 records FID .* but its features give"):
            plan_grid(cfg)


def test_splits_folder_and_data_root_file_say_what_they_are(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert "is a folder" in one_error(capsys, ["run", "--method", "pretrained", "--splits", str(tmp_path),
                                               "--results", str(tmp_path / "r")])
    assert "--data-root '/etc/hostname' is a file" in one_error(
        capsys, ["embed", "mnist", "--data-root", "/etc/hostname", "--out", str(tmp_path / "f.npz")])


# ---- report ----------------------------------------------------------------------------------------------------


def test_report_md_escapes_names_from_cell_files(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_grid(results)
    evil = {"<img src=x onerror=alert(1)>": "a", "[click](http://evil.example)": "b", "x`y <b>z</b>": "c"}
    for i, method in enumerate(evil):
        for level in (1, 2, 3):
            row = make_row(dataset="synthetic", method=method, family="baseline", level=level, k=0, seed=0,
                           metric="recall@1", value=0.5, status="error", error=f"boom <script>{i}</script>")
            write_cell(results, [row], status="error", error=f"boom <script>{i}</script>",
                       cid=f"evil{i}_{level}")
    build_report(results=results)
    md = (results / "synthetic" / "report.md").read_text()
    html = (results / "synthetic" / "report.html").read_text()
    markup = re.compile(r"(?<!\\)(<img|<script>|<b>|\[click\])")  # not backslash-escaped
    for line in md.splitlines():
        text_parts = re.split(r"(`[^`\n]*`)", line)[::2]  # code spans show their content literally
        assert not any(markup.search(p) for p in text_parts), line
    for raw in ("<img", "<script>", "<b>"):  # in HTML a `[text](url)` is plain text
        assert raw not in html
    assert "\\<img src=x onerror=alert(1)\\>" in md and "\\[click\\](http://evil.example)" in md
