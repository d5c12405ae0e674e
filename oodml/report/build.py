"""`oodml report`: turn a results folder into per-dataset tables, plots and a report (docs/formats.md).

Per dataset, under `<results>/<dataset>/`: `all.csv`, `levels.csv`, `leaderboard_k<k>.csv`, `curves_<metric>.png/.svg`,
`gain_<metric>.png/.svg` and `.csv` (few-shot gain), `error_reduction.csv`, `report.md`, `report.html`.
Intervals and p-values are seed-level t intervals and t tests (no random resampling below 21 seeds), so the same
store gives byte-identical files.
Every column is documented in docs/results.md.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from oodml import __version__
from oodml.errors import check_name, check_writable
from oodml.io import atomic_write, safe_dir, safe_name, safe_path, write_text_atomic
from oodml.progress import log
from oodml.report import curves, document as doc, intervals as iv
from oodml.report.leaderboard import (ADAPTED_FAMILIES, choose_metrics, error_counts, error_reduction,
                                      few_shot_gain, leaderboard, level_stats, levels_table, ok_rows, seed_values,
                                      unadapted_of)
from oodml.report.stats import DEFAULT_BOOTSTRAP
from oodml.report.series import random_weight_cells, relabel
from oodml.report.store import Store, grid_entries, read_store
from oodml.schema import ROW_COLUMNS, STATUSES

#: Columns of `all.csv`: the result-row columns (docs/formats.md), then the unit columns (empty on the aggregate rows).
ALL_COLUMNS: tuple[str, ...] = (*ROW_COLUMNS, "episode", "class")
#: Columns a unit row of `all.csv` fills (the rest stay empty: join on `cell_id` for them).
UNIT_ROW_COLUMNS: tuple[str, ...] = ("cell_id", "dataset", "method", "method_family", "split_level", "split_fid",
                                     "split_hash", "k_shot", "seed", "metric", "value", "n_queries", "status",
                                     "episode", "class")
#: Unit rows of `all.csv` written per block (bounds the memory of a 100,000-cell store's millions of unit rows).
_CSV_BLOCK = 250_000


@dataclass(frozen=True)
class DatasetTables:
    """Everything aggregated for one dataset (the inputs of its files)."""

    dataset: str
    rows: pd.DataFrame
    cells: pd.DataFrame
    grid: pd.DataFrame
    errors: pd.DataFrame
    levels: pd.DataFrame
    stats: pd.DataFrame
    metric_by_k: dict[int, str]
    leaderboards: dict[int, pd.DataFrame]
    gain: pd.DataFrame
    gain_metric: str | None
    error_reduction: pd.DataFrame
    units: pd.DataFrame
    coverage: iv.Coverage
    n_boot: int
    same_at_zero: dict[str, str] = field(default_factory=dict)


def build_report(*, results: Path, metric: str | None = None, bootstrap: int = DEFAULT_BOOTSTRAP) -> list[Path]:
    """Aggregate `<results>/cells/*.json` and write the files docs/formats.md lists for every dataset in it.

    Args:
        results: the folder `oodml run --results` wrote.
        metric: the leaderboard metric for every k; None: recall@1, or accuracy at a k without recall.
        bootstrap: Monte Carlo sign patterns of the seed-level permutation test beyond 20 seeds (fewer seeds are
            enumerated exactly; the intervals are analytic).

    Returns:
        Every written path (the report.md and report.html of each dataset last); their folders are also logged.

    Raises:
        OodmlError: missing/empty results folder (run `oodml run` first), a corrupt cell file, an unknown metric.
    """
    t0 = time.perf_counter()
    store = relabel(read_store(Path(results)))  # one series per configuration (oodml.report.series)
    for dataset in store.datasets:  # a name from the cell files becomes a folder: safe, and writable, before output
        check_writable(safe_path(results, check_name(dataset, f"cell files in {str(results)!r} name a dataset")),
                       "report folder")
    tables = [aggregate(store, dataset, metric, bootstrap) for dataset in store.datasets]  # checks before output
    log(f"report: {len(store.cells)} cell files, {len(store.rows)} rows, {len(tables)} dataset(s) read and "
        f"aggregated in {time.perf_counter() - t0:.1f}s")
    written: list[Path] = []
    for t in tables:
        written += write_dataset(t, safe_dir(results, t.dataset))
    reports = [p for p in written if p.name == "report.html"]
    for p in reports:
        log(f"report: leaderboards and plots in {p.parent}/ ; open {p}")
    return written


def aggregate(store: Store, dataset: str, metric: str | None, bootstrap: int = DEFAULT_BOOTSTRAP) -> DatasetTables:
    """All tables of one dataset (no files written); `bootstrap`: Monte Carlo sign patterns beyond 20 seeds."""
    rows = store.rows[store.rows["dataset"] == dataset].reset_index(drop=True)
    cells = store.cells[store.cells["dataset"] == dataset].reset_index(drop=True)
    units = store.units[store.units["dataset"] == dataset].reset_index(drop=True)
    levels = levels_table(rows, dataset)
    seeds = seed_values(ok_rows(rows))
    stats = level_stats(seeds)
    grid = grid_entries(store, dataset)
    errors = error_counts(grid)
    ran = grid[grid["status"].isin(("ok", "error")) & (grid["k_shot"] >= 0)]
    ks = sorted({int(k) for k in ran["k_shot"]})
    metric_by_k = choose_metrics(ok_rows(rows), ks, metric)
    coverage = iv.Coverage()
    boards: dict[int, pd.DataFrame] = {}
    frames = {k: iv.unit_frame(units, seeds, k=k, metric=m) for k, m in metric_by_k.items()}
    same_at_zero: dict[str, str] = {}
    for k, m in metric_by_k.items():
        fams = {str(a): str(b) for a, b in ran[ran["k_shot"] == k].groupby("method")["method_family"].first().items()}
        if k == 0:  # nothing is adapted at k = 0: adapted_X is X there, not a method of its own
            same_at_zero = {a: u for a, f in fams.items()
                            if f in ADAPTED_FAMILIES and (u := unadapted_of(a, set(fams))) is not None}
            fams = {a: f for a, f in fams.items() if a not in same_at_zero}
        iv.coverage_notes(frames[k][~frames[k]["method"].isin(list(same_at_zero) if k == 0 else [])], k, coverage)
        boards[k] = leaderboard(stats, seeds, levels, errors, k=k, metric=m, methods=fams, frame=frames[k])
    stats = level_stats(seeds, _level_ci(boards, metric_by_k))
    gain_metric = metric if metric is not None else metric_by_k.get(0, "recall@1")
    families = {str(a): str(b) for a, b in ran.groupby("method")["method_family"].first().items()}
    gain_frames = {k: frames[k] if metric_by_k.get(k) == gain_metric else
                   iv.unit_frame(units, seeds, k=k, metric=gain_metric) for k in ks if k > 0}
    gain = few_shot_gain({k: f for k, f in gain_frames.items() if len(f)}, families, levels, gain_metric)
    return DatasetTables(dataset, rows, cells, grid, errors, levels, stats, metric_by_k, boards, gain,
                         gain_metric if len(gain) else None, error_reduction(stats, levels, metric_by_k), units,
                         coverage, bootstrap, same_at_zero)


def _level_ci(boards: dict[int, pd.DataFrame], metric_by_k: dict[int, str]) -> pd.DataFrame:
    """The leaderboards' per-level intervals as (metric, k_shot, method, split_level, ci_low, ci_high)."""
    parts = []
    for k, board in boards.items():
        for col in board.columns:
            if col.startswith("L") and col.endswith("_ci_low"):
                lv = int(col[1:-len("_ci_low")])
                parts.append(pd.DataFrame({"metric": metric_by_k[k], "k_shot": k, "method": board["method"],
                                           "split_level": lv, "ci_low": board[col],
                                           "ci_high": board[f"L{lv}_ci_high"]}))
    cols = ["metric", "k_shot", "method", "split_level", "ci_low", "ci_high"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def write_all_csv(t: DatasetTables, path: Path) -> Path:
    """`all.csv`: every stored row (`ALL_COLUMNS`, `episode` and `class` empty), then one row per unit value
    (`UNIT_ROW_COLUMNS` filled, the other columns empty)."""
    rows = t.rows[list(ROW_COLUMNS)].assign(episode=pd.NA, **{"class": None})
    with atomic_write(path) as f:  # never through a link (oodml.io)
        rows.to_csv(f, index=False, lineterminator="\n")
        fids = dict(zip(t.levels["level"], t.levels["fid"]))
        for start in range(0, len(t.units), _CSV_BLOCK):  # in blocks: the empty columns of every unit row are wide
            u = t.units.iloc[start:start + _CSV_BLOCK]
            u = u.assign(split_fid=u["split_level"].map(fids), status="ok")
            u["n_queries"] = u["n_queries"].astype("Int64")
            u["split_level"] = u["split_level"].astype(np.int64)
            u["seed"] = u["seed"].astype(np.int64)
            u = u.reindex(columns=list(ALL_COLUMNS))
            u.to_csv(f, index=False, header=False, lineterminator="\n")
    return path


def write_dataset(t: DatasetTables, out: Path) -> list[Path]:
    """Write one dataset's CSVs, plots, report.md and report.html into `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [write_all_csv(t, out / "all.csv"), _csv(t.levels, out / "levels.csv")]
    written += [_csv(board, out / f"leaderboard_k{k}.csv") for k, board in t.leaderboards.items()]
    written.append(_csv(t.error_reduction, out / "error_reduction.csv"))
    figures: list[tuple[Path, str]] = []
    for m in sorted(set(t.metric_by_k.values())):
        panels = {_panel_title(k): curves.metric_series(t.stats, t.levels, k=k, metric=m)
                  for k in sorted(t.metric_by_k) if ((t.stats["k_shot"] == k) & (t.stats["metric"] == m)).any()}
        band = _band_note(panels, "95% seed-level t band")
        fig = curves.build_figure(panels, t.levels, ylabel=m, title=f"{t.dataset}: {m} vs. shift ({band})")
        paths = curves.save_figure(fig, out / f"curves_{safe_name(m)}")
        written += paths
        figures.append((paths[1], f"{m} vs. FID of the split level, one panel per k, "
                                  + _band_note(panels, "95% seed-level t band (the seeds are the replication unit)")))
    if t.gain_metric:
        panels = {_panel_title(int(k)): curves.gain_series(t.gain, k=int(k)) for k in sorted(t.gain["k_shot"].unique())}
        fig = curves.build_figure(panels, t.levels, ylabel=f"{t.gain_metric}: adapted minus unadapted",
                                  title=f"{t.dataset}: few-shot gain vs. shift ({_band_note(panels, '95% seed-level t band')})",
                                  unit_range=False, zero_line=True)
        paths = curves.save_figure(fig, out / f"gain_{safe_name(t.gain_metric)}")
        written += [*paths, _csv(t.gain, out / f"gain_{safe_name(t.gain_metric)}.csv")]
        figures.append((paths[1], f"few-shot gain: {t.gain_metric} of each adapted method minus its unadapted "
                                  "source model on the same k-shot queries, vs. FID, "
                                  + _band_note(panels, "95% seed-level t band")))
    blocks = report_blocks(t, figures)
    title = f"oodml report: {t.dataset}"
    for name, render in (("report.md", doc.render_markdown), ("report.html", doc.render_html)):
        write_text_atomic(out / name, render(title, blocks))
        written.append(out / name)
    return written


def _band_note(panels: dict[str, list[curves.Series]], band: str) -> str:
    """`band` when every line has its interval band; otherwise says where there is none and why."""
    have = [bool(np.isfinite(s.lo).any()) for lines in panels.values() for s in lines]
    if all(have):
        return band
    why = "one seed: training variance not estimated"
    return f"no band: {why}" if not any(have) else f"{band}; none on the lines without intervals: {why}"


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path) as f:
        frame.to_csv(f, index=False, lineterminator="\n")
    return path


def _panel_title(k: int) -> str:
    return "k = 0 (zero-shot)" if k == 0 else f"k = {k}"


def provenance(t: DatasetTables) -> list[str]:
    """Bulleted facts about where the numbers come from."""
    def _values(col: str) -> str:
        vals = sorted({str(v) for v in t.rows[col].dropna().unique() if str(v)})
        return ", ".join(f"`{v}`" for v in vals) if vals else "—"

    counts = t.cells["status"].value_counts()
    ladder = "\n".join(f"{int(r.level)}:{r.split_hash}" for r in t.levels.itertuples())
    created = t.rows["created_at"].dropna().astype(str)
    random = random_weight_cells(t.rows)
    weights = (" (random weights: no ImageNet training; its frozen-features rows are `random_features`)"
               if random and len(random) == t.rows["cell_id"].nunique() else
               f" ({len(random)} cell(s) on random weights)" if random else "")
    return [
        f"dataset: `{t.dataset}`; backbone: {_values('backbone')}{weights}; features: {_values('feature_hash')}",
        f"split ladder hash: `{hashlib.sha1(ladder.encode()).hexdigest()[:16]}` over {len(t.levels)} level(s) "
        "(per-level `split_hash` in levels.csv)",
        f"results written by oodml {_values('oodml_version')} (git {_values('git_sha')}), "
        f"from {created.min() if len(created) else '—'} to {created.max() if len(created) else '—'}; "
        f"report by oodml `{__version__}`",
        "cells: " + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUSES) + f"; {len(t.rows)} rows",
        f"methods: {t.rows['method'].nunique()}; k: {', '.join(map(str, sorted(t.metric_by_k)))}; "
        f"seeds: {', '.join(map(str, sorted(t.rows['seed'].unique())))}",
    ]


def board_display(board: pd.DataFrame, errors: pd.DataFrame) -> pd.DataFrame:
    """A leaderboard with formatted cells, e.g. `0.512 (n=2; 1 error)` at a level with fewer seeds or failures."""
    levels = [c for c in board.columns if c.startswith("L") and c[1:].isdigit()]
    tied = board["tied_with_best"].fillna(False).astype(bool) & (board["rank"].fillna(0) != 1)
    shown = pd.DataFrame({
        "rank": board["rank"].astype(object).where(board["rank"].notna(), "—").astype(str),
        "method": [m + (" ≈" if t else "") for m, t in zip(board["method"], tied)],
        "family": board["family"],
        "mean [95% CI]": [doc.fmt_interval(v, lo, hi) + (f" ({n}/{len(levels)} levels)" if 0 < n < len(levels) else "")
                          for v, lo, hi, n in zip(board["mean"], board["ci_low"], board["ci_high"], board["n_levels"])],
        "auc [95% CI]": [doc.fmt_interval(v, lo, hi)
                         for v, lo, hi in zip(board["auc"], board["auc_ci_low"], board["auc_ci_high"])],
        "p vs best (Holm)": board["vs_best_p_holm"].map(doc.fmt_p),
        "n_seeds": board["n_seeds"].astype(str), "errors": board["n_errors"].astype(str),
    })
    for c in levels:
        n_err = board["method"].map(errors[errors["split_level"] == int(c[1:])].set_index("method")["n_errors"])
        notes = [", ".join(([f"n={n}"] if n < full and np.isfinite(v) else [])
                           + ([f"{e} error" + ("s" if e > 1 else "")] if e else []))
                 for n, full, v, e in zip(board[f"n_{c}"], board["n_seeds"], board[c], n_err.fillna(0).astype(int))]
        shown[c] = [doc.fmt_interval(v, lo, hi) + (f" ({note})" if note else "")
                    for v, lo, hi, note in zip(board[c], board[f"{c}_ci_low"], board[f"{c}_ci_high"], notes)]
    return shown


def reduction_display(red: pd.DataFrame) -> pd.DataFrame:
    """Error reduction as `k, method, L1..` with cells like `+12.3% (vs proto)`."""
    if red.empty:
        return pd.DataFrame()
    cell = red["error_reduction"].map(doc.fmt_percent) + " (vs " + red["reference_method"].astype(str) + ")"
    wide = red.assign(cell=cell).pivot(index=["k_shot", "method"], columns="split_level", values="cell")
    shown = pd.DataFrame({"k": [k for k, _ in wide.index], "method": [m for _, m in wide.index]})
    for lv in wide.columns:
        shown[f"L{int(lv)}"] = wide[lv].fillna("—").to_numpy()
    return shown


def report_blocks(t: DatasetTables, figures: list[tuple[Path, str]]) -> list[doc.Block]:
    """The report's content, shared by report.md and report.html."""
    blocks = [doc.heading("Provenance"), doc.bullet_list(provenance(t)), doc.heading("Split levels")]
    levels = t.levels.assign(fid=t.levels["fid"].map(lambda v: doc.fmt_number(v, 2)))
    blocks.append(doc.table(levels.astype(object).where(levels.notna(), "—")))
    blocks.append(doc.heading("Leaderboards"))
    blocks.append(doc.text("Rows sorted by `mean` (over levels of the mean over seeds); equal means share a rank; "
                           "`auc` is the area under the metric-vs-FID curve divided by the FID range. Each value is "
                           "printed as `mean [low, high]`, its 95% seed-level t interval: the seed (one source fit "
                           "per level) is the replication unit, each seed's value already averages its episodes "
                           "(k > 0) or test classes (k = 0), and the interval has seeds - 1 degrees of freedom "
                           "(`n_seeds` says how many; 1 seed: no interval, training variance not estimated). "
                           "`p vs best (Holm)`: paired t test over seeds of the mean over levels against the rank-1 "
                           "method, Holm-adjusted over the methods; `≈` marks a method not distinguishable from "
                           "rank 1 at 0.05. Error cells are counted in `errors`, never averaged; `(n=..)` marks a "
                           "level with fewer seeds; `(i/n levels)` marks a mean (and auc) over only the levels that "
                           "have values."))
    if t.coverage.lines():
        blocks.append(doc.text("Values on few seeds (the mean is still exact):"))
        blocks.append(doc.bullet_list(t.coverage.lines()))
    if not t.leaderboards:
        blocks.append(doc.text("Nothing to rank: no cell of this dataset finished with `ok` or `error`."))
    for k, board in t.leaderboards.items():
        blocks.append(doc.heading(f"{_panel_title(k)}: {t.metric_by_k[k]}", level=3))
        if k == 0 and t.same_at_zero:
            blocks.append(doc.text("Left out at k = 0, where nothing is adapted (each equals its source model): "
                                   + ", ".join(f"`{a}` = `{u}`" for a, u in sorted(t.same_at_zero.items())) + "."))
        errors = t.errors[t.errors["k_shot"] == k]
        blocks.append(doc.table(board_display(board, errors), f"`leaderboard_k{k}.csv`, metric `{t.metric_by_k[k]}`"))
    blocks.append(doc.heading("Degradation curves"))
    blocks += [doc.figure(svg, caption) for svg, caption in figures]
    if not t.gain_metric:
        blocks.append(doc.text("No few-shot gain plot: the metric is not stored both at k = 0 and at some k > 0."))
    blocks.append(doc.heading("Error reduction of adapted methods (Scott et al. 2018)"))
    shown = reduction_display(t.error_reduction)
    if shown.empty:
        blocks.append(doc.text(f"No adapted methods (families {', '.join(ADAPTED_FAMILIES)}) or no non-adapted "
                               "method to compare with in these results."))
    else:
        blocks.append(doc.table(shown, "Relative reduction of error (1 − metric) versus the best non-adapted method "
                                       "at the same level and k (positive: the adapted method is better); "
                                       "`error_reduction.csv`."))
    failed = t.grid[t.grid["status"] == "error"].drop_duplicates(["cell_id", "k_shot"])
    if len(failed):
        blocks.append(doc.heading("Failed cells"))
        lines = [f"`{r.method}` level {r.split_level} k {r.k_shot} seed {r.seed}: "
                 f"{(str(r.error or '').splitlines() or [''])[0][:200]} (`{r.cell_id}`)"
                 for r in failed.head(50).itertuples()]
        more = [f"... and {len(failed) - 50} more (see all.csv)"] if len(failed) > 50 else []
        blocks.append(doc.bullet_list(lines + more))
    return blocks
