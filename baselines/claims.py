"""Check the papers' claims against a study's `all.csv` (the reporter's tidy table) and print Markdown tables.

Only reads `results/<study>/<dataset>/all.csv`; computes differences of stored numbers, no metric. Every verdict
rests on a 95% hierarchical bootstrap interval (seeds, then episodes or test classes within them: the unit rows of
all.csv; without unit rows the seeds alone) of the relevant paired difference: "reproduces" when the interval
excludes 0 in the paper's direction, "contradicts" when it excludes 0 the other way, else "inconclusive". Each
verdict states its basis (seeds x units) and its interval.

- `oodml` (Milbich et al. 2021): (1) zero-shot recall@1 falls as FID rises, for every method (interval of the
  last-minus-first-level difference, and of Spearman's rho of recall@1 vs FID); (2) few-shot adaptation helps
  more at larger shifts (gain = adapted minus the same source model unadapted on the same k-shot queries; interval
  of the gain at the last level minus the gain at the first); (3) SEC and diversified mutual learning raise
  recall@1 (add-on minus plain method, mean over levels, k = 0).
- `scott` (Scott et al. 2018): the adapted embeddings reduce the error (1 - n-way accuracy) relative to the best of
  the four single families, by 34% on average in the paper (interval of the accuracy difference best hybrid minus
  best single family on the same episodes). In the `*_paper` split files each level is one replication (a fresh
  draw of source and target classes, as their code's `--replications`): the replications are pooled as the units
  of one level, so that the interval resamples them.

Usage:
    python baselines/claims.py oodml results/oodml_cub200_subset/cub200/all.csv
    python baselines/claims.py scott results/scott2018_mnist/mnist/all.csv [more all.csv ...] [--plot claim4.png]
        [--without-baseline]
    python baselines/claims.py cost results/oodml_cub200_subset [more results folders ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from oodml.report import intervals as iv, stats as st
from oodml.report.leaderboard import seed_values, unadapted_of

FAMILIES = ("baseline", "weight_transfer", "histogram", "protonet")
HYBRIDS = ("adapted_histogram", "adapted_proto")
ADDONS = (("margin", "margin+sec"), ("multisimilarity", "multisimilarity+sec"), ("margin", "margin+dmml"),
          ("margin", "margin+dmml[ensemble]"), ("multisimilarity", "multisimilarity+dmml"),
          ("multisimilarity", "multisimilarity+dmml[ensemble]"),
          # the DMML cohort's concatenation against the ensemble control's: mutual learning's own effect
          ("margin+ens[ensemble]", "margin+dmml[ensemble]"),
          ("multisimilarity+ens[ensemble]", "multisimilarity+dmml[ensemble]"))
#: the ensemble control (+ens: an independently trained cohort of the DMML cohort's size) against the plain method;
#: its model 1 is the plain method itself, so only the concatenation is compared. No paper claims it: its row says
#: only which way the interval lies.
CONTROLS = (("margin", "margin+ens[ensemble]"), ("multisimilarity", "multisimilarity+ens[ensemble]"))
BOOTSTRAP = st.DEFAULT_BOOTSTRAP


def read_all(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the aggregate rows with status ok, the unit rows) of an all.csv; no unit rows in an older all.csv."""
    df = pd.read_csv(path, low_memory=False)
    for col in ("episode", "class", "method_family", "n_queries"):
        if col not in df:
            df[col] = np.nan
    is_unit = df["episode"].notna() | df["class"].notna()
    return df[~is_unit & (df["status"] == "ok")].copy(), df[is_unit].copy()


def frame_of(tables: tuple[pd.DataFrame, pd.DataFrame], k: int, metric: str) -> pd.DataFrame:
    """`intervals.unit_frame` of one (k, metric) from `read_all`'s tables (pseudo-units where there are no unit
    rows); the tables are not modified, so that one read serves every k."""
    agg, units = tables
    agg = agg.assign(method_family=agg["method_family"].astype(object).fillna(""))
    return iv.unit_frame(units, seed_values(agg), k=k, metric=metric)


def load(path: str, metric: str) -> pd.DataFrame:
    """Rows of `path` with status ok for `metric`, averaged over seeds: (method, level, fid, k) -> value, n_seeds."""
    df, _ = read_all(path)
    df = df[df["metric"] == metric]
    g = df.groupby(["method", "split_level", "k_shot"], as_index=False)
    return g.agg(split_fid=("split_fid", "first"), value=("value", "mean"), n_seeds=("seed", "nunique"))


def basis(frame: pd.DataFrame) -> str:
    """`3 seeds x 10 episodes` (median units per seed and level), or `3 seeds (no unit values)`."""
    if frame.empty:
        return "no data"
    n_seeds = int(frame["seed"].nunique())
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    if frame["pseudo"].all():
        return f"{seeds} (no unit values)"
    per = frame.groupby(["method", "split_level", "seed"])["unit"].nunique().median()
    kind = iv.unit_kind(frame["unit"])
    kind = kind.removesuffix("es" if kind == "classes" else "s") if int(per) == 1 else kind
    return f"{seeds} x {int(per)} {kind}"


def resolvable(frame: pd.DataFrame) -> bool:
    """False when an interval would be degenerate: no unit values and fewer than 2 seeds to resample."""
    return not frame.empty and (not bool(frame["pseudo"].all()) or frame["seed"].nunique() >= 2)


def verdict(low: float, high: float, direction: int) -> str:
    """`reproduces` when [low, high] excludes 0 on the paper's side (`direction` +1: above, -1: below),
    `contradicts` when it excludes 0 on the other side, `inconclusive` otherwise (or without an interval)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive (no interval)"
    if (direction > 0 and low > 0) or (direction < 0 and high < 0):
        return "reproduces"
    if (direction > 0 and high < 0) or (direction < 0 and low > 0):
        return "contradicts"
    return "inconclusive"


def _ci(reps: np.ndarray) -> str:
    lo, hi = st.percentile_interval(np.asarray(reps, float))
    return f"[{float(lo):+.3f}, {float(hi):+.3f}]"


def _table(rows: list[list[object]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _spearman(fids: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """Spearman's rho of each replicate's level values (rows of `reps`: levels x replicates) against the FIDs."""
    rx = rankdata(fids)
    ry = rankdata(reps, axis=0)
    rx, ry = rx - rx.mean(), ry - ry.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx @ ry) / np.sqrt((rx @ rx) * (ry * ry).sum(axis=0))


def replicates(frame: pd.DataFrame, n_boot: int, series: str = "method") -> tuple[st.UnitGrid, np.ndarray, np.ndarray]:
    """(grid, level values, bootstrap replicates) of each series of a unit frame; NaN replicates for a series
    without anything to resample (`resolvable`)."""
    grid = st.unit_grid(frame, series=series)
    point, reps = st.level_means(grid), st.bootstrap_levels(grid, n_boot)
    for i, name in enumerate(grid.series):
        if not resolvable(frame[frame[series] == name]):
            reps[i] = np.nan
    return grid, point, reps


def addon_verdict(addon: str, plain: str, low: float, high: float) -> str:
    """`verdict` of an add-on row; a `CONTROLS` row tests no paper's claim, so it says only which way the interval
    lies (`control: higher`, `control: lower`, `control: inconclusive`)."""
    v = verdict(low, high, +1)
    if (plain, addon) in CONTROLS:
        return "control: " + {"reproduces": "higher", "contradicts": "lower"}.get(v, v)
    return v


def oodml_claims(path: str, n_boot: int = BOOTSTRAP) -> str:
    """Markdown tables for the three ooDML claims, each row with its interval and verdict."""
    tables = read_all(path)
    agg = tables[0][tables[0]["metric"] == "recall@1"]
    fids = agg.groupby("split_level")["split_fid"].first()
    out = []
    zero = frame_of(tables, 0, "recall@1")
    rows: list[list[object]] = []
    if not zero.empty:
        grid, point, reps = replicates(zero, n_boot)
        x = fids.reindex(grid.levels).to_numpy(float)
        lo, hi = grid.levels[0], grid.levels[-1]
        for i, m in enumerate(grid.series):
            change = reps[i, -1] - reps[i, 0]
            c_lo, c_hi = st.percentile_interval(change)
            rho = _spearman(x, reps[i])
            rho_point = float(_spearman(x, point[i][:, None])[0])
            rows.append([m, float(point[i, 0]), float(point[i, -1]), float(point[i, -1] - point[i, 0]), _ci(change),
                         rho_point, _ci(rho), basis(zero[zero["method"] == m]), verdict(float(c_lo), float(c_hi), -1)])
        out += [f"Claim 1: zero-shot recall@1 falls as FID rises (level {lo} -> {hi}); verdict from the 95% interval "
                f"of the change L{hi} - L{lo}\n",
                _table(rows, ["method", f"R@1 L{lo}", f"R@1 L{hi}", "change", "95% CI", "Spearman rho (R@1 vs FID)",
                              "rho 95% CI", "basis", "verdict"])]
    rows = []
    ks = sorted(int(k) for k in agg["k_shot"].unique() if k > 0)
    families = agg.groupby("method")["method_family"].first().to_dict()
    for k in ks:
        frame = frame_of(tables, k, "recall@1")
        present = set(frame["method"].unique())
        pairs = {m: (m, u) for m in sorted(present)
                 if (families.get(m) == "adapted" or m.startswith("adapted_"))
                 and (u := unadapted_of(m, present)) is not None}
        if not pairs:
            continue
        diffs = iv.paired_frame(frame, pairs)
        grid, point, reps = replicates(diffs, n_boot, series="pair")
        lo, hi = grid.levels[0], grid.levels[-1]
        for i, m in enumerate(grid.series):
            trend = reps[i, -1] - reps[i, 0]
            t_lo, t_hi = st.percentile_interval(trend)
            rows.append([m, k, pairs[m][1], float(point[i, 0]), _ci(reps[i, 0]), float(point[i, -1]),
                         _ci(reps[i, -1]), float(point[i, -1] - point[i, 0]), _ci(trend),
                         basis(diffs[diffs["pair"] == m].assign(method=m)), verdict(float(t_lo), float(t_hi), +1)])
    if rows:
        out += [f"\n\nClaim 2: few-shot gain is larger at the last level than at the first. Gain = R@1 of the adapted "
                "method minus its unadapted source model on the same k-shot queries (same seeds and episodes); "
                "verdict from the 95% interval of gain(last) - gain(first)\n",
                _table(rows, ["method", "k", "unadapted", "gain first", "95% CI", "gain last", "95% CI",
                              "last - first", "95% CI", "basis", "verdict"])]
    rows = []
    if not zero.empty:
        present = set(zero["method"].unique())
        pairs = {f"{add} - {base}": (add, base) for base, add in ADDONS + CONTROLS
                 if base in present and add in present}
        d = iv.paired_differences(zero, pairs, fids.to_dict(), n_boot, seeds_only=True)
        for r in d[d["split_level"].isna()].itertuples():
            if not resolvable(zero[zero["method"].isin([r.method_a, r.method_b])]):
                r = r._replace(ci_low=np.nan, ci_high=np.nan, p=np.nan)
            rows.append([r.method_a, r.method_b, float(r.mean_b), float(r.mean_a), float(r.diff),
                         f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]", f"{r.p:.2g}",
                         basis(zero[zero["method"] == r.method_a]), addon_verdict(r.method_a, r.method_b,
                                                                                  float(r.ci_low), float(r.ci_high))])
    if rows:
        out += ["\n\nClaim 3: add-ons raise zero-shot recall@1 (mean over levels; paired on the same seeds and test "
                "classes; p: sign-flip permutation test)\n",
                _table(rows, ["add-on", "plain", "R@1 plain", "R@1 add-on", "difference", "95% CI", "p", "basis",
                              "verdict"])]
    return "\n".join(out)


def scott_records(paths: Sequence[str], labels: Sequence[str],
                  families: Sequence[str] = FAMILIES) -> list[dict[str, Any]]:
    """Per (study, k): the best single family (among `families`) and the best hybrid, their errors and the relative
    error reduction."""
    out: list[dict[str, Any]] = []
    for path, label in zip(paths, labels):
        d = load(path, "accuracy")
        for k, g in d.groupby("k_shot"):
            acc = g.groupby("method")["value"].mean()
            singles = acc[[m for m in families if m in acc.index]]
            hybrids = acc[[m for m in HYBRIDS if m in acc.index]]
            if singles.empty or hybrids.empty:
                continue
            e_s, e_h = 1 - float(singles.max()), 1 - float(hybrids.max())
            out.append({"study": label, "k": int(k), "single": str(singles.idxmax()), "e_single": e_s,
                        "hybrid": str(hybrids.idxmax()), "e_hybrid": e_h,
                        "reduction": (e_s - e_h) / e_s if e_s > 0 else float("nan")})
    return out


def pool_replications(frame: pd.DataFrame) -> pd.DataFrame:
    """A unit frame whose levels are replications (Scott et al.'s task draws) as one level whose units are the
    (replication, unit) pairs, so that the bootstrap resamples replications; a frame of one level is returned as is.
    Pseudo-units (a seed's aggregate) stay pseudo, one per replication."""
    if frame.empty or frame["split_level"].nunique() <= 1:
        return frame
    out = frame.copy()
    codes, _ = pd.factorize(pd.MultiIndex.from_arrays([out["split_level"], out["unit"]]), sort=True)
    real = ~out["pseudo"].to_numpy(bool)
    episodes = bool(real.any()) and bool((out["unit"].to_numpy()[real] >= iv.EPISODE_CODES).all())
    out["unit"] = codes.astype(np.int64) + (iv.EPISODE_CODES if episodes else 0)
    out["split_level"] = int(out["split_level"].min())
    return out


def scott_claims(paths: Sequence[str], labels: Sequence[str], n_boot: int = BOOTSTRAP,
                 families: Sequence[str] = FAMILIES) -> str:
    """Markdown table: error of the best single family (among `families`; without `baseline` the reference is the
    transfer, metric-learning and few-shot families the paper compares against) vs the best hybrid per (study, k),
    relative reduction, and the 95% interval of the accuracy difference hybrid minus single on the same episodes
    with its verdict."""
    recs = scott_records(paths, labels, families)
    tables = {label: read_all(path) for path, label in zip(paths, labels)}
    rows = []
    for r in recs:
        frame = pool_replications(frame_of(tables[str(r["study"])], int(r["k"]), "accuracy"))
        d = iv.paired_differences(frame, {"d": (str(r["hybrid"]), str(r["single"]))}, {}, n_boot, seeds_only=True)
        over = d[d["split_level"].isna()]
        lo, hi = (float(over["ci_low"].iloc[0]), float(over["ci_high"].iloc[0])) if len(over) else (np.nan, np.nan)
        if not resolvable(frame[frame["method"].isin([r["hybrid"], r["single"]])]):
            lo, hi = np.nan, np.nan
        rows.append([r["study"], r["k"], r["single"], r["e_single"], r["hybrid"], r["e_hybrid"],
                     f"{100 * float(r['reduction']):.0f}%", f"[{lo:+.3f}, {hi:+.3f}]",
                     basis(frame[frame["method"] == r["hybrid"]]), verdict(lo, hi, +1)])
    reds = [float(r["reduction"]) for r in recs]
    mean = sum(reds) / len(reds) if reds else float("nan")
    return (_table(rows, ["study", "k", "best single family", "its error", "best hybrid", "its error",
                          "error reduction", "accuracy difference 95% CI", "basis", "verdict"])
            + f"\n\nMean error reduction over these settings: {100 * mean:.0f}% (paper: 34% on average); a verdict "
            "is \"reproduces\" when the hybrid's accuracy is higher than the single family's with the interval above 0")


#: study-name suffix -> how the variant differs from the pixel-MLP study with fixed adaptation steps
VARIANTS = {"": "MLP on pixels, fixed adaptation steps", "_plateau": "MLP on pixels, Scott et al.'s stopping rule",
            "_conv4": "conv4 on the images, fixed adaptation steps",
            "_paper": "Scott et al.'s protocol (their nets, sampling, stopping)"}


def study_variant(study: str) -> tuple[str, str]:
    """`scott2018_omniglot_paper_5way` -> (`omniglot_5way`, `_paper`); `scott2018_mnist_conv4` -> (`mnist`,
    `_conv4`): the task setting and the `VARIANTS` key of a Scott study's name."""
    name = study.removeprefix("scott2018_")
    if "_paper" in name:
        return name.replace("_paper", ""), "_paper"
    for suffix in sorted(VARIANTS, key=len, reverse=True):
        if suffix and name.endswith(suffix):
            return name.removesuffix(suffix), suffix
    return name, ""


def scott_plot(paths: Sequence[str], labels: Sequence[str], out: str) -> str:
    """Dot plot of the error reduction per task setting, one colour per study variant, the paper's 34% as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = scott_records(paths, labels)
    tasks = list(dict.fromkeys(study_variant(str(r["study"]))[0] for r in recs))  # in the order given
    settings = sorted({(study_variant(str(r["study"]))[0], int(str(r["k"]))) for r in recs},
                      key=lambda tk: (tasks.index(tk[0]), tk[1]))
    x = {s: i for i, s in enumerate(settings)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(settings) + 5), 4.6))
    variants = [v for v in VARIANTS if any(study_variant(str(r["study"]))[1] == v for r in recs)]
    for j, v in enumerate(variants):
        pts = [(x[(study_variant(str(r["study"]))[0], int(str(r["k"])))] + 0.18 * (j - (len(variants) - 1) / 2),
                100 * float(r["reduction"])) for r in recs if study_variant(str(r["study"]))[1] == v]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=VARIANTS[v], s=36, zorder=3)
    ax.axhline(34, color="black", ls="--", lw=1, label="paper: +34% on average")
    ax.axhline(0, color="grey", lw=0.8)
    def pretty(task: str) -> str:
        name, _, ways = task.partition("_")
        return f"{name.capitalize() if name != 'mnist' else 'MNIST'}\n{ways.replace('way', '-way') or '5-way'}"
    ax.set_xticks(range(len(settings)), [f"{pretty(t)}\nk = {k}" for t, k in settings], fontsize=8)
    ax.set_ylabel("error reduction of the best hybrid\nvs the best single family (%)")
    ax.set_title("Scott et al. (2018), Claim 4: adapted embeddings vs the best single family")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return out


def cost(results: str) -> str:
    """Cells, their summed wall and CPU time and the slowest cell, from `<results>/cells/*.json`."""
    import json
    from pathlib import Path

    cells = [json.loads(p.read_text()) for p in sorted(Path(results, "cells").glob("*.json"))]
    wall = sum(float(c.get("wall_time_s") or 0) for c in cells)
    cpu = sum(float(c.get("cpu_time_s") or 0) for c in cells)
    slow = max(cells, key=lambda c: float(c.get("cpu_time_s") or 0))
    statuses = sorted({str(c["status"]) for c in cells})
    return (f"{results}: {len(cells)} cells ({', '.join(statuses)}), summed cell wall time {wall / 60:.1f} min, "
            f"summed cell CPU time {cpu / 60:.1f} min, slowest cell {slow['cell_id']} "
            f"({float(slow.get('cpu_time_s') or 0):.0f} s CPU)")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("oodml", "scott", "cost"))
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--plot", help="scott: also write a dot plot of the error reductions to this PNG")
    ap.add_argument("--without-baseline", action="store_true",
                    help="scott: best single family among weight_transfer, histogram, protonet only (no target-only "
                         "baseline)")
    a = ap.parse_args(argv)
    if a.kind == "cost":
        print("\n".join(cost(r) for r in a.csv))
    elif a.kind == "oodml":
        print(oodml_claims(a.csv[0]))
    else:
        labels = [p.split("/")[-3] if p.count("/") >= 2 else p for p in a.csv]
        fams = tuple(f for f in FAMILIES if f != "baseline") if a.without_baseline else FAMILIES
        print(scott_claims(a.csv, labels, families=fams))
        if a.plot:
            print(f"\nplot: {scott_plot(a.csv, labels, a.plot)}")


if __name__ == "__main__":
    main()
