"""Check the papers' claims against a study's `all.csv` (the reporter's tidy table) and print Markdown tables.

Only reads `results/<study>/<dataset>/all.csv`; computes differences of stored numbers, no metric. Every verdict
rests on a 95% seed-level t interval of the relevant paired difference (`oodml.report.stats.contrast`: the training
run, a seed, is the replication unit; each seed's value averages its episodes or test classes): "reproduces" when the
interval excludes 0 in the paper's direction, "contradicts" when it excludes 0 the other way, else "inconclusive";
one seed gives no interval ("1 seed: training variance not estimated"). Each verdict states its basis (seeds x units)
and its interval.

- `oodml` (Milbich et al. 2021): (1) zero-shot recall@1 falls as FID rises, for every method (interval of the
  last-minus-first-level difference; Spearman's rho of recall@1 vs FID as a point estimate); (2) few-shot adaptation
  helps more at larger shifts (gain = adapted minus the same source model unadapted on the same k-shot queries;
  interval of the gain at the last level minus the gain at the first); (3) SEC and diversified mutual learning raise
  recall@1 (add-on minus plain method, mean over levels, k = 0).
- `scott` (Scott et al. 2018): the adapted embeddings reduce the error (1 - n-way accuracy) relative to the best of
  the four single families, by 34% on average in the paper (interval of the accuracy difference best hybrid minus
  best single family over the training runs). In the `*_paper` split files each level is one replication (a fresh
  draw of source and target classes, refitted, as their code's `--replications`): each is one training run.

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
LOSSES = ("margin", "multisimilarity", "triplet")
ADDONS = tuple(pair for m in LOSSES for pair in (
    (m, f"{m}+sec"), (m, f"{m}+dmml"), (m, f"{m}+dmml[ensemble]"),
    # the DMML cohort against the same cohort with the mutual term off (+dmmlctl: same views, noise, dropout and
    # update schedule): the mutual term's own effect, for model 1 and for the cohort's concatenation
    (f"{m}+dmmlctl", f"{m}+dmml"), (f"{m}+dmmlctl[ensemble]", f"{m}+dmml[ensemble]"),
    # the DMML cohort's concatenation against the independent ensemble's
    (f"{m}+ens[ensemble]", f"{m}+dmml[ensemble]")))
#: the ensemble control (+ens: an independently trained cohort of the DMML cohort's size) against the plain method
#: (its model 1 is the plain method itself, so only the concatenation is compared), and +dmmlctl's cohort against
#: +ens (what the views, noise, dropout and schedule do without the mutual term). No paper claims them: their rows
#: say only which way the interval lies.
CONTROLS = tuple(pair for m in LOSSES for pair in (
    (m, f"{m}+ens[ensemble]"), (f"{m}+ens[ensemble]", f"{m}+dmmlctl[ensemble]")))
#: The papers' own figures beside an add-on row (add-on, plain) -> text; recall@1 on CUB-200-2011 with their networks
#: (ResNet/BN-Inception trained end to end), so only the sign and rough size compare with a head on frozen features.
PAPER = {("multisimilarity+sec", "multisimilarity"): "+0.0265 (Zhang et al. 2020)",
         ("triplet+sec", "triplet"): "+0.075 (53.3 -> 60.8, Zhang et al. 2020)",
         **{(f"{m}+dmml", m): "R@1 69.9 with DMML (Park et al. 2020; absolute)" for m in LOSSES}}
#: ooDML's headline few-shot figure (Milbich et al. 2021, CUB, hardest level): (method, k) -> text
PAPER_GAIN = {("adapted_multisimilarity", 5): "+0.089 at the hardest level (0.609 vs 0.520 zero-shot, ooDML)"}
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


def _ci(e: st.Estimate | tuple[float, float]) -> str:
    lo, hi = (e.low, e.high) if isinstance(e, st.Estimate) else e
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "—"
    return f"[{float(lo):+.3f}, {float(hi):+.3f}]"


def _table(rows: list[list[object]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _spearman(fids: np.ndarray, values: np.ndarray) -> float:
    """Spearman's rho of level values against the FIDs (a point estimate: the verdict rests on the change)."""
    rx, ry = rankdata(fids), rankdata(values)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((rx @ rx) * (ry @ ry)))
    return float(rx @ ry) / den if den > 0 else float("nan")


def _level_contrast(y: np.ndarray, first: int, last: int) -> st.Estimate:
    """Seed-level estimate of y[last] - y[first] (y: level x seed)."""
    c = np.zeros(y.shape[0])
    c[first] -= 1.0
    c[last] += 1.0
    return st.contrast(y, c)


def addon_verdict(addon: str, plain: str, low: float, high: float) -> str:
    """`verdict` of an add-on row; a `CONTROLS` row tests no paper's claim, so it says only which way the interval
    lies (`control: higher`, `control: lower`, `control: inconclusive`)."""
    v = verdict(low, high, +1)
    if (plain, addon) in CONTROLS:
        return "control: " + {"reproduces": "higher", "contradicts": "lower"}.get(v, v)
    return v


def oodml_claims(path: str, n_boot: int = BOOTSTRAP) -> str:
    """Markdown tables for the three ooDML claims, each row with its seed-level interval and verdict."""
    tables = read_all(path)
    agg = tables[0][tables[0]["metric"] == "recall@1"]
    fids = agg.groupby("split_level")["split_fid"].first()
    out = []
    zero = frame_of(tables, 0, "recall@1")
    rows: list[list[object]] = []
    if not zero.empty:
        names, levels, _, y = iv.seed_table(zero)
        x = fids.reindex(levels).to_numpy(float)
        lo, hi = levels[0], levels[-1]
        for i, m in enumerate(names):
            point = np.nanmean(y[i], axis=-1)
            change = _level_contrast(y[i], 0, len(levels) - 1)
            rows.append([m, float(point[0]), float(point[-1]), float(change.estimate), _ci(change),
                         _spearman(x, point), basis(zero[zero["method"] == m]),
                         verdict(float(change.low), float(change.high), -1)])
        out += [f"Claim 1: zero-shot recall@1 falls as FID rises (level {lo} -> {hi}); verdict from the 95% seed-level "
                f"t interval of the change L{hi} - L{lo}\n",
                _table(rows, ["method", f"R@1 L{lo}", f"R@1 L{hi}", "change", "95% CI", "Spearman rho (R@1 vs FID)",
                              "basis", "verdict"])]
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
        names, levels, _, y = iv.seed_table(diffs, series="pair")
        for i, m in enumerate(names):
            first, last = st.contrast(y[i][:1], np.ones(1)), st.contrast(y[i][-1:], np.ones(1))
            trend = _level_contrast(y[i], 0, len(levels) - 1)
            rows.append([m, k, pairs[m][1], float(first.estimate), _ci(first), float(last.estimate), _ci(last),
                         PAPER_GAIN.get((m, k), "—"),
                         float(trend.estimate), _ci(trend), basis(diffs[diffs["pair"] == m].assign(method=m)),
                         verdict(float(trend.low), float(trend.high), +1)])
    if rows:
        out += [f"\n\nClaim 2: few-shot gain is larger at the last level than at the first. Gain = R@1 of the adapted "
                "method minus its unadapted source model on the same k-shot queries (same seeds and episodes); "
                "verdict from the 95% seed-level t interval of gain(last) - gain(first)\n",
                _table(rows, ["method", "k", "unadapted", "gain first", "95% CI", "gain last", "95% CI",
                              "paper (gain last)", "last - first", "95% CI", "basis", "verdict"])]
    rows = []
    if not zero.empty:
        present = set(zero["method"].unique())
        pairs = {f"{add} - {base}": (add, base) for base, add in ADDONS + CONTROLS
                 if base in present and add in present}
        d = iv.paired_differences(zero, pairs, fids.to_dict(), n_boot)
        for r in d[d["split_level"].isna()].itertuples():
            rows.append([r.method_a, r.method_b, float(r.mean_b), float(r.mean_a), float(r.diff),
                         _ci((r.ci_low, r.ci_high)), f"{r.p:.2g}" if np.isfinite(r.p) else "—",
                         PAPER.get((r.method_a, r.method_b), "—"),
                         basis(zero[zero["method"] == r.method_a]), addon_verdict(r.method_a, r.method_b,
                                                                                  float(r.ci_low), float(r.ci_high))])
    if rows:
        out += ["\n\nClaim 3: add-ons raise zero-shot recall@1 (mean over levels; paired on the same seeds and test "
                "classes; 95% seed-level t interval; p: paired t test over seeds)\n",
                _table(rows, ["add-on", "plain", "R@1 plain", "R@1 add-on", "difference", "95% CI", "p",
                              "paper (their network)", "basis", "verdict"])]
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


def replication_estimate(frame: pd.DataFrame, a: str, b: str) -> tuple[st.Estimate, str]:
    """The accuracy difference a - b with the training run as the replication unit: each (level, seed) is one
    source fit (in the `*_paper` split files each level is a replication, a fresh draw of source and target classes
    refitted, as their code's `--replications`), so the interval is a t interval over those fits. With a single fit
    there is no interval on training variance: the second value then holds an episodes-only interval, labelled so.

    Returns:
        (estimate over the fits, the episodes-only interval text for a single fit, else "").
    """
    diffs = iv.paired_frame(frame, {"d": (a, b)})
    if diffs.empty:
        return st.contrast(np.full((1, 1), np.nan), np.ones(1)), ""
    _, _, _, y = iv.seed_table(diffs, series="pair")
    fits = y[0].reshape(1, -1)  # every (level, seed) is a fit
    fits = fits[:, np.isfinite(fits[0])]
    e = st.contrast(fits, np.ones(1))
    if int(e.n_seeds) >= 2:
        return e, ""
    real = diffs[~diffs["pseudo"].astype(bool)]
    if len(real) < 2:
        return e, ""
    units = st.contrast(real["value"].to_numpy(float)[None, :], np.ones(1))  # the units as if they were fits
    return e, f"episodes only {_ci(units)}"


def scott_claims(paths: Sequence[str], labels: Sequence[str], n_boot: int = BOOTSTRAP,
                 families: Sequence[str] = FAMILIES) -> str:
    """Markdown table: error of the best single family (among `families`; without `baseline` the reference is the
    transfer, metric-learning and few-shot families the paper compares against) vs the best hybrid per (study, k),
    relative reduction, and the 95% t interval of the accuracy difference hybrid minus single over the training runs
    (seeds, or the replications of a `*_paper` study) with its verdict; a single run gets no verdict, and its
    episodes-only interval is labelled as such."""
    recs = scott_records(paths, labels, families)
    tables = {label: read_all(path) for path, label in zip(paths, labels)}
    rows = []
    for r in recs:
        frame = frame_of(tables[str(r["study"])], int(r["k"]), "accuracy")
        e, units = replication_estimate(frame, str(r["hybrid"]), str(r["single"]))
        n = int(e.n_seeds)
        shown = _ci(e) if n >= 2 else f"— ({st.ONE_SEED}{'; ' + units if units else ''})"
        rows.append([r["study"], r["k"], r["single"], r["e_single"], r["hybrid"], r["e_hybrid"],
                     f"{100 * float(r['reduction']):.0f}%", shown, f"{n} run{'s' if n != 1 else ''}",
                     verdict(float(e.low), float(e.high), +1) if n >= 2 else "inconclusive (1 run)"])
    reds = [float(r["reduction"]) for r in recs]
    mean = sum(reds) / len(reds) if reds else float("nan")
    return (_table(rows, ["study", "k", "best single family", "its error", "best hybrid", "its error",
                          "error reduction", "accuracy difference 95% CI", "basis", "verdict"])
            + f"\n\nMean error reduction over these settings: {100 * mean:.0f}% (paper: 34% on average); a verdict "
            "is \"reproduces\" when the hybrid's accuracy is higher than the single family's with the 95% t interval "
            "over the training runs above 0")


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
