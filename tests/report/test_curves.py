"""Plots: valid PNG/SVG files, the plotted data itself (golden), reproducible bytes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from oodml.report import aggregate, build_report, read_store
from oodml.report.curves import build_figure, method_styles, metric_series
from tests.report.conftest import FIDS, make_row, write_cell, write_unit_cell

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data_lines(ax: object) -> list[Line2D]:
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]  # type: ignore[attr-defined]


def test_files_are_valid_png_and_svg(grid_report: tuple[Path, list[Path]]) -> None:
    paths = grid_report[1]
    images = [p for p in paths if p.suffix in (".png", ".svg")]
    assert {p.name for p in images} == {"curves_recall@1.png", "curves_recall@1.svg", "gain_recall@1.png",
                                        "gain_recall@1.svg"}
    for p in images:
        if p.suffix == ".png":
            data = p.read_bytes()
            assert data[:8] == PNG_MAGIC and len(data) > 10_000
        else:
            root = ET.parse(p).getroot()
            assert root.tag.endswith("svg")


def test_golden_plotted_data(tmp_path: Path) -> None:
    """Two methods, two levels, two seeds at k=0 and one seed at k=2: the lines are exactly the seed means."""
    values = {("m1", 1, 0): 0.2, ("m1", 1, 1): 0.4, ("m1", 2, 0): 0.1, ("m1", 2, 1): 0.3,
              ("m2", 1, 0): 0.9, ("m2", 1, 1): 0.7, ("m2", 2, 0): 0.6, ("m2", 2, 1): 0.6}
    fams = {"m1": "dml", "m2": "adapted"}
    for (m, lv, s), v in values.items():
        write_cell(tmp_path, [make_row(dataset="g", method=m, family=fams[m], level=lv, k=0, seed=s,
                                       metric="recall@1", value=v)])
        if s == 0:
            write_cell(tmp_path, [make_row(dataset="g", method=m, family=fams[m], level=lv, k=2, seed=s,
                                           metric="recall@1", value=v + 0.05)])
    t = aggregate(read_store(tmp_path), "g", None)
    panels = {f"k = {k}": metric_series(t.stats, t.levels, k=k, metric="recall@1") for k in (0, 2)}
    fig = build_figure(panels, t.levels, ylabel="recall@1", title="golden")
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["k = 0", "k = 2"]
    lines0 = {ln.get_label(): ln for ln in _data_lines(axes[0])}
    assert set(lines0) == {"m1", "m2"}
    assert np.asarray(lines0["m1"].get_xdata()) == pytest.approx([FIDS[1], FIDS[2]])
    assert np.asarray(lines0["m1"].get_ydata()) == pytest.approx([0.3, 0.2])
    assert np.asarray(lines0["m2"].get_ydata()) == pytest.approx([0.8, 0.6])
    lines2 = {ln.get_label(): ln for ln in _data_lines(axes[1])}
    assert np.asarray(lines2["m2"].get_ydata()) == pytest.approx([0.95, 0.65])
    # two seeds at k = 0: a (wide) t(1) band per method; one seed at k = 2: no band, and the report says why
    assert len(axes[0].collections) == 2 and len(axes[1].collections) == 0
    lines = t.coverage.lines()
    assert any(line.startswith("k = 2: no value has an interval (1 seed") for line in lines)
    assert any(line.startswith("k = 0: some values rest on 2 seeds") for line in lines)
    # families by colour, methods by marker; the legend lists every method
    styles = method_styles(fams)
    assert lines0["m1"].get_color() == styles["m1"][0] != styles["m2"][0]
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["m2 (adapted)", "m1 (dml)"]
    # the top axis names the levels at their FIDs
    top = [c for c in axes[0].child_axes]
    assert [tl.get_text() for tl in top[0].get_xticklabels()] == ["L1", "L2"]


def test_bands_are_the_bootstrap_intervals(tmp_path: Path) -> None:
    """With per-episode values the band of each level is its bootstrap interval (from the leaderboard)."""
    rng = np.random.default_rng(0)
    for lv in (1, 2):
        for s in (0, 1, 2):
            write_unit_cell(tmp_path, method="m", level=lv, seed=s, k=5, values=list(rng.uniform(0.3, 0.7, 6)),
                            dataset="g")
    t = aggregate(read_store(tmp_path), "g", None)
    board = t.leaderboards[5].set_index("method")
    fig = build_figure({"k = 5": metric_series(t.stats, t.levels, k=5, metric="recall@1")}, t.levels,
                       ylabel="recall@1", title="bands")
    (band,) = fig.axes[0].collections
    verts = np.concatenate([p.vertices for p in band.get_paths()])
    assert verts[:, 1].max() == pytest.approx(max(board.loc["m", "L1_ci_high"], board.loc["m", "L2_ci_high"]))
    assert verts[:, 1].min() == pytest.approx(min(board.loc["m", "L1_ci_low"], board.loc["m", "L2_ci_low"]))
    assert board.loc["m", "L1_ci_low"] < board.loc["m", "L1"] < board.loc["m", "L1_ci_high"]


def test_gain_plot_data(tmp_path: Path) -> None:
    """The gain is adapted minus unadapted on the same episodes: +0.25 on every episode of both seeds -> 0.25 [0.25,
    0.25]."""
    for lv, seed in ((1, 0), (1, 1), (2, 0), (2, 1)):
        base = [0.4 + 0.1 * lv, 0.5 - 0.1 * seed, 0.3]
        write_unit_cell(tmp_path, method="m", level=lv, seed=seed, k=5, values=base, dataset="g")
        write_unit_cell(tmp_path, method="adapted_m", family="adapted", level=lv, seed=seed, k=5,
                        values=[v + 0.25 for v in base], dataset="g")
    t = aggregate(read_store(tmp_path), "g", None)
    assert t.gain["gain"].to_numpy(float) == pytest.approx([0.25, 0.25])
    assert t.gain["ci_low"].to_numpy(float) == pytest.approx([0.25, 0.25])
    assert t.gain["ci_high"].to_numpy(float) == pytest.approx([0.25, 0.25])
    assert list(t.gain["unadapted"]) == ["m", "m"]
    from oodml.report.curves import gain_series

    fig = build_figure({"k = 5": gain_series(t.gain, k=5)}, t.levels, ylabel="gain", title="g", unit_range=False,
                       zero_line=True)
    (line,) = _data_lines(fig.axes[0])
    assert np.asarray(line.get_ydata()) == pytest.approx([0.25, 0.25])


def test_same_store_gives_identical_files(tmp_path: Path) -> None:
    from tests.report.conftest import write_grid

    for name in ("a", "b"):
        write_grid(tmp_path / name, levels=(1, 2, 3), ks=(0, 2), seeds=(0, 1))
    pa = build_report(results=tmp_path / "a", metric=None)
    pb = build_report(results=tmp_path / "b", metric=None)
    assert [p.name for p in pa] == [p.name for p in pb]
    for x, y in zip(pa, pb):
        assert x.read_bytes() == y.read_bytes(), x.name


def test_empty_panels_still_draw() -> None:
    levels = pd.DataFrame({"level": [1], "fid": [1.0]})
    fig = build_figure({}, levels, ylabel="recall@1", title="empty")
    assert fig.axes[0].texts[0].get_text() == "no data"
