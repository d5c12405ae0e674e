"""Per-unit values in the store: episodes and zero-shot classes read from hand-made cell files, old cell files
without them, the unit rows of all.csv, and the leaderboard's intervals and significance columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oodml.errors import OodmlError
from oodml.report import aggregate, build_report, read_store
from oodml.report.build import ALL_COLUMNS
from oodml.schema import ROW_COLUMNS
from tests.report.conftest import make_row, write_cell, write_unit_cell


def test_classes_and_episodes_are_read(tmp_path: Path) -> None:
    write_unit_cell(tmp_path, method="m", level=1, seed=0, k=0, values=[1.0, 0.0, 0.5], n_queries=[3, 1, 4],
                    classes=["001.A", "002.B", "003.C"])
    write_unit_cell(tmp_path, method="m", variant="ens", level=1, seed=0, k=0, values=[0.2, 0.4],
                    n_queries=[1, 1])
    write_unit_cell(tmp_path, method="m", level=1, seed=0, k=2, values=[0.1, 0.3, 0.5])
    store = read_store(tmp_path)
    u = store.units
    zero = u[u["k_shot"] == 0]
    assert set(zero["method"].astype(str)) == {"m", "m[ens]"}  # the variant is appended to the cell's spec
    plain = zero[zero["method"] == "m"].set_index("class")
    assert plain["n_queries"].to_dict() == {"001.A": 3.0, "002.B": 1.0, "003.C": 4.0}
    assert plain["episode"].isna().all()
    few = u[u["k_shot"] == 2]
    assert list(few["episode"]) == [0, 1, 2] and few["class"].isna().all()
    assert (u["split_level"] == 1).all() and (u["seed"] == 0).all() and (u["split_hash"] == "h1").all()
    # the stored aggregate is the query-weighted mean of the class values, so the report's mean is it
    t = aggregate(store, "u", None)
    assert t.leaderboards[0].set_index("method").loc["m", "L1"] == pytest.approx((3 + 0 + 2) / 8)


def test_all_csv_has_unit_rows(tmp_path: Path) -> None:
    write_unit_cell(tmp_path, method="m", level=1, seed=0, k=0, values=[1.0, 0.0], n_queries=[3, 1],
                    classes=["a", "b"])
    write_unit_cell(tmp_path, method="m", level=1, seed=0, k=5, values=[0.25, 0.75])
    build_report(results=tmp_path, metric=None)
    table = pd.read_csv(tmp_path / "u" / "all.csv", keep_default_na=False)
    assert tuple(table.columns) == ALL_COLUMNS == (*ROW_COLUMNS, "episode", "class")
    agg = table[(table["episode"] == "") & (table["class"] == "")]
    units = table.drop(agg.index)
    assert len(agg) == 2 and len(units) == 4
    assert (agg["config_json"] != "").all()
    cls = units[units["class"] != ""].set_index("class")
    assert cls.loc["a", "value"] == 1.0 and cls.loc["a", "n_queries"] == "3" and cls.loc["a", "k_shot"] == 0
    eps = units[units["episode"] != ""].set_index("episode")
    assert eps["value"].to_dict() == {"0": 0.25, "1": 0.75}
    assert set(units["cell_id"]) <= set(agg["cell_id"]) and (units["config_json"] == "").all()
    # anyone can recompute a mean from the unit rows: query-weighted over classes
    assert float((cls["value"] * cls["n_queries"].astype(float)).sum() / cls["n_queries"].astype(float).sum()) == \
        pytest.approx(float(agg[agg["k_shot"] == 0]["value"].iloc[0]))


@pytest.mark.parametrize(("entry", "what"), [
    ({"variant": "", "k": 0, "class": "a", "metric": "recall@1", "value": 1.5, "n_queries": 2}, "outside"),
    ({"variant": "", "k": 0, "class": "a", "metric": "recall@1", "value": 0.5}, "n_queries"),
])
def test_bad_unit_entries_name_the_file(tmp_path: Path, entry: dict[str, object], what: str) -> None:
    row = make_row(dataset="d", method="m", family="dml", level=1, k=0, seed=0, metric="recall@1", value=0.5)
    path = write_cell(tmp_path, [row], classes=[entry])
    with pytest.raises(OodmlError, match=path.name) as e:
        read_store(tmp_path)
    assert what in str(e.value)


def test_leaderboard_significance_against_rank_1(tmp_path: Path) -> None:
    """`best` beats `worse` by 0.3 on every episode, `close` differs from `best` by +-0.01 at random: `worse` is
    resolved (small Holm p, not tied), `close` is not (tied with the best)."""
    rng = np.random.default_rng(1)
    for lv in (1, 2):
        for s in (0, 1, 2):
            base = rng.uniform(0.4, 0.6, 10)
            write_unit_cell(tmp_path, method="best", level=lv, seed=s, k=5, values=list(base))
            write_unit_cell(tmp_path, method="worse", level=lv, seed=s, k=5, values=list(base - 0.3))
            write_unit_cell(tmp_path, method="close", level=lv, seed=s, k=5,
                            values=list(base + rng.choice([-0.01, 0.01], 10) - 0.0005))
    build_report(results=tmp_path, metric=None)
    board = pd.read_csv(tmp_path / "u" / "leaderboard_k5.csv").set_index("method")
    assert list(board.index) == ["best", "close", "worse"]
    assert np.isnan(board.loc["best", "vs_best_p"]) and bool(board.loc["best", "tied_with_best"])
    assert board.loc["worse", "vs_best_p_holm"] < 0.01 and not bool(board.loc["worse", "tied_with_best"])
    assert board.loc["close", "vs_best_p_holm"] >= 0.05 and bool(board.loc["close", "tied_with_best"])
    md = (tmp_path / "u" / "report.md").read_text()
    assert "close ≈" in md and "worse ≈" not in md


def test_same_store_same_intervals(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vals = {(lv, s): list(rng.uniform(size=5)) for lv in (1, 2) for s in (0, 1)}
    for name in ("a", "b"):
        for (lv, s), v in vals.items():
            write_unit_cell(tmp_path / name, method="m", level=lv, seed=s, k=0, values=v, n_queries=[1, 2, 3, 4, 5])
    for name in ("a", "b"):
        build_report(results=tmp_path / name, metric=None)
    for f in ("leaderboard_k0.csv", "all.csv"):
        assert (tmp_path / "a" / "u" / f).read_bytes() == (tmp_path / "b" / "u" / f).read_bytes()


def test_chunked_reading_gives_the_same_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading 2 files at a time (chunks end inside the episode and class lists' cells) gives the same rows and
    units as reading all at once; the units keep their order: every cell's episodes, then every cell's classes."""
    from oodml.report import store as store_mod

    for s in (0, 1, 2):
        write_unit_cell(tmp_path, method="m", variant="ens" if s == 1 else "", level=1, seed=s, k=0,
                        values=[0.1 * s, 0.5], n_queries=[2, 3], classes=["b", "a"])
        write_unit_cell(tmp_path, method="m", level=1 + s, seed=s, k=2, values=[0.3, 0.6, 0.2 * s])
    whole = read_store(tmp_path)
    monkeypatch.setattr(store_mod, "_CHUNK", 2)
    chunked = read_store(tmp_path)
    pd.testing.assert_frame_equal(whole.rows, chunked.rows)
    pd.testing.assert_frame_equal(whole.units, chunked.units)
    u = chunked.units
    assert list(u["episode"].isna()) == [False] * 9 + [True] * 6  # episodes first, then classes
    assert list(u["class"].dropna()) == ["b", "a"] * 3
    assert set(u["method"].astype(str)) == {"m", "m[ens]"}
    assert sorted(u.loc[u["k_shot"] == 2, "split_level"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_old_cell_files_without_units_get_the_same_seed_level_intervals(tmp_path: Path) -> None:
    """A cell file without per-unit values holds its seed's value, which is all a seed-level interval needs."""
    for s, v in ((0, 0.5), (1, 0.7), (2, 0.6)):
        write_cell(tmp_path, [make_row(dataset="o", method="old", family="dml", level=1, k=0, seed=s,
                                       metric="recall@1", value=v)])
        write_unit_cell(tmp_path, dataset="o", method="new", level=1, seed=s, k=0, values=[v - 0.1, v + 0.1],
                        n_queries=[2, 2])
    build_report(results=tmp_path, metric=None)
    board = pd.read_csv(tmp_path / "o" / "leaderboard_k0.csv").set_index("method")
    half = 4.302653 * 0.1 / np.sqrt(3)  # seeds 0.5, 0.7, 0.6: sd 0.1, t(2)
    for m in ("old", "new"):
        assert board.loc[m, "mean"] == pytest.approx(0.6)
        assert (board.loc[m, "ci_low"], board.loc[m, "ci_high"]) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-6)
    assert "0.600 \\[" in (tmp_path / "o" / "report.md").read_text()  # mean [low, high], brackets escaped


def test_intervals_do_not_depend_on_the_resampling_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for s in (0, 1, 2):
        for m in ("a", "b"):
            write_unit_cell(tmp_path / "x", method=m, level=1, seed=s, k=5, values=list(rng.uniform(size=4)))
    out = {}
    for n in (0, 50, 2000):
        build_report(results=tmp_path / "x", metric=None, bootstrap=n)
        out[n] = (tmp_path / "x" / "u" / "leaderboard_k5.csv").read_bytes()
    assert out[0] == out[50] == out[2000]
    assert not pd.read_csv(tmp_path / "x" / "u" / "leaderboard_k5.csv")["ci_low"].isna().any()


def test_integer_unit_codes_sort_as_their_labels(tmp_path: Path) -> None:
    """With 12 episodes, the labels `e:10`, `e:11` sort before `e:2` as text; the integer unit codes of
    `unit_frame` keep that order."""
    from oodml.report import intervals as iv
    from oodml.report.leaderboard import ok_rows, seed_values

    rng = np.random.default_rng(3)
    for s in (0, 1):
        write_unit_cell(tmp_path, method="m", level=1, seed=s, k=5, values=list(rng.uniform(0, 1, 12)))
    store = read_store(tmp_path)
    frame = iv.unit_frame(store.units, seed_values(ok_rows(store.rows)), k=5, metric="recall@1")
    labels = iv.unit_labels(store.units, k=5, metric="recall@1")
    assert [labels[c] for c in sorted(set(frame["unit"]))] == sorted(f"e:{i}" for i in range(12))


def test_a_one_seed_store_says_so_once_per_report(tmp_path: Path) -> None:
    """One seed (with or without units): one line names every k without an interval and why, the per-method notes
    stay out, and the curves' caption and title say that they draw no band and why."""
    for method in ("a", "b"):
        for lv in (1, 2):
            write_cell(tmp_path, [make_row(dataset="o", method=method, family="dml", level=lv, k=0, seed=0,
                                           metric="recall@1", value=0.5)])
            write_unit_cell(tmp_path, dataset="o", method=method, level=lv, seed=0, k=5, values=[0.4, 0.6, 0.8])
    t = aggregate(read_store(tmp_path), "o", None)
    assert t.coverage.one_seed_ks == [0, 5] and t.coverage.notes == []
    build_report(results=tmp_path, metric=None)
    md = (tmp_path / "o" / "report.md").read_text()
    assert "k = 0, 5: no value has an interval (1 seed: training variance not estimated" in md
    assert "`a` L1" not in md and "no band: one seed: training variance not estimated" in md
    board = pd.read_csv(tmp_path / "o" / "leaderboard_k5.csv")
    assert board[["ci_low", "ci_high", "vs_best_p"]].isna().all().all()
    assert (board["interval_note"] == "1 seed: training variance not estimated").all()


def test_some_one_seed_levels_are_named(tmp_path: Path) -> None:
    for s in (0, 1, 2):
        write_unit_cell(tmp_path, method="a", level=1, seed=s, k=5, values=[0.4, 0.6 + 0.01 * s])
    write_unit_cell(tmp_path, method="a", level=2, seed=0, k=5, values=[0.4, 0.6])
    t = aggregate(read_store(tmp_path), "u", None)
    assert t.coverage.notes == ["k=5 `a` L2: no interval, 1 seed: training variance not estimated"]
    board = t.leaderboards[5].set_index("method")
    assert np.isfinite(board.loc["a", "L1_ci_low"]) and np.isnan(board.loc["a", "L2_ci_low"])
    assert np.isnan(board.loc["a", "ci_low"])  # a level of the mean rests on one seed: its variance is unknown

