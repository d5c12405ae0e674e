"""`oodml compare A B`: the paired difference A - B per level and over levels, with its seed-level 95% t interval,
the paired t test over seeds, Holm's adjustment over the levels, and one verdict line (docs/results.md).

Pairing is by construction: the methods of one level share the split file's test classes and episodes, so the
difference is taken on the same (seed, episode) or (seed, class) units. Cells that are not paired that way (another
split file, other seeds, other episodes or classes) are an input error that names the difference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from oodml.errors import OodmlError, check_name, suggest
from oodml.io import atomic_write, safe_dir, safe_path
from oodml.report import document as doc, intervals as iv, stats as st
from oodml.report.leaderboard import DEFAULT_METRIC_ORDER, ok_rows, seed_values
from oodml.report.stats import DEFAULT_BOOTSTRAP
from oodml.report.series import check_series_name, relabel
from oodml.report.store import Store, read_store

#: Columns of `compare_<A>_vs_<B>_<metric>_k<K>.csv`.
COMPARE_COLUMNS = ("dataset", "metric", "k_shot", "level", "fid", "method_a", "method_b", "n_seeds", "n_units",
                   "mean_a", "mean_b", "diff", "se", "ci_low", "ci_high", "p", "p_holm", "p_flip", "note")


@dataclass(frozen=True)
class Comparison:
    """One dataset's comparison at one k: its table, its verdict line and the file it was written to."""

    dataset: str
    table: pd.DataFrame
    path: Path
    verdict: str


def compare_command(*, results: Path, a: str, b: str, ks: tuple[int, ...] | None = None, metric: str | None = None,
                    levels: tuple[int, ...] | None = None, bootstrap: int = DEFAULT_BOOTSTRAP) -> list[Comparison]:
    """Compare two methods of a results folder and write `<results>/<dataset>/compare_<A>_vs_<B>_<metric>_k<K>.csv`
    per k.

    Args:
        results: the folder `oodml run --results` wrote.
        a: the first method (the difference is a - b).
        b: the second method.
        ks: shot counts to compare (None: every k both methods have).
        metric: the metric (None: recall@1 where both have it, else accuracy).
        levels: split levels to compare (None: every level either method has; all must be paired).
        bootstrap: Monte Carlo sign patterns of the permutation test beyond 20 seeds (fewer: exact).

    Returns:
        One comparison per dataset that holds both methods and per k.

    Raises:
        OodmlError: unknown method or metric, a k or level one method lacks, or unpaired cells.
    """
    store, ok = read_pair(results, a, b)
    datasets = [d for d in store.datasets if {a, b} <= {str(m) for m in ok[ok["dataset"] == d]["method"].unique()}]
    if not datasets:
        raise OodmlError(f"{a!r} and {b!r} ran on no common dataset in {str(results)!r}; compare methods of one study")
    out = []
    for dataset in datasets:
        table = _compare_dataset(store, dataset, a, b, ks, metric, levels, bootstrap)
        for k, part in table.groupby("k_shot", sort=True):
            part = part.reset_index(drop=True)
            name = f"compare_{_safe(a)}_vs_{_safe(b)}_{_safe(str(part['metric'].iloc[0]))}_k{int(k)}.csv"
            path = safe_path(safe_dir(results, check_name(dataset, "dataset")), name)
            with atomic_write(path) as f:  # never through a link (oodml.io)
                part.to_csv(f, index=False, lineterminator="\n")
            out.append(Comparison(dataset, part, path, verdict_line(part)))
    return out


def read_pair(results: Path, a: str, b: str) -> tuple[Store, pd.DataFrame]:
    """(the store with one series per configuration, its ok rows), after checking that both series ran there.

    Raises:
        OodmlError: a name is ambiguous (several configurations) or has no ok rows.
    """
    store = relabel(read_store(Path(results)))
    ok = ok_rows(store.rows)
    have = {str(m) for m in ok["method"].unique()}
    for name in (a, b):
        check_series_name(name, have, str(results))
        if name not in have:
            raise OodmlError(f"method {name!r} has no ok rows in {str(results)!r}{suggest(name, have)}; methods "
                             f"there: {', '.join(sorted(have))}")
    return store, ok


def _safe(name: str) -> str:
    return re.sub(r"[^\w.+=@\[\]-]", "_", name)


def _compare_dataset(store: Store, dataset: str, a: str, b: str, ks: tuple[int, ...] | None, metric: str | None,
                     levels: tuple[int, ...] | None, bootstrap: int) -> pd.DataFrame:
    rows = ok_rows(store.rows[store.rows["dataset"] == dataset])
    rows = rows[rows["method"].isin([a, b])].astype({"method": str, "metric": str})
    units = store.units[(store.units["dataset"] == dataset) & store.units["method"].isin([a, b])]
    seeds = seed_values(rows)
    fids = {int(lv): float(f) for lv, f in rows.groupby("split_level")["split_fid"].first().items()}
    k_a = set(rows[rows["method"] == a]["k_shot"].astype(int))
    k_b = set(rows[rows["method"] == b]["k_shot"].astype(int))
    if ks is None:
        ks = tuple(sorted(k_a & k_b))
        if not ks:
            raise OodmlError(f"{dataset}: {a!r} ran at k={_ints(k_a)}, {b!r} at k={_ints(k_b)}: no common k")
    for k in ks:
        for name, have in ((a, k_a), (b, k_b)):
            if k not in have:
                raise OodmlError(f"{dataset}: {name!r} has no ok rows at k={k} (it ran at k={_ints(have)}); "
                                 "pass --k with a shared value")
    parts = []
    for k in ks:
        m = pair_metric(rows, k, metric, a, b, dataset)
        frame = iv.unit_frame(units, seeds, k=k, metric=m)
        frame = frame[frame["method"].isin([a, b])]
        frame = paired_levels(frame, rows[(rows["k_shot"] == k) & (rows["metric"] == m)], a, b, k, levels, dataset,
                               iv.unit_labels(units, k=k, metric=m))
        d = iv.paired_differences(frame, {f"{a} - {b}": (a, b)}, fids, bootstrap)
        parts.append(pd.DataFrame({
            "dataset": dataset, "metric": m, "k_shot": k,
            "level": [str(int(v)) if pd.notna(v) else "all" for v in d["split_level"]], "fid": d["fid"],
            "method_a": a, "method_b": b, "n_seeds": d["n_seeds"], "n_units": d["n_units"], "mean_a": d["mean_a"],
            "mean_b": d["mean_b"], "diff": d["diff"], "se": d["se"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
            "p": d["p"], "p_holm": d["p_holm"], "p_flip": d["p_flip"], "note": d["note"]}))
    return pd.concat(parts, ignore_index=True)[list(COMPARE_COLUMNS)]


def _ints(values: set[int]) -> str:
    return ",".join(map(str, sorted(values))) or "none"


def pair_metric(rows: pd.DataFrame, k: int, metric: str | None, a: str, b: str, dataset: str) -> str:
    """The metric to compare a and b on at k: `metric` when both store it (else OodmlError with the shared ones),
    otherwise the first of the default order that both store."""
    at_k = rows[rows["k_shot"] == k]
    both = set(at_k[at_k["method"] == a]["metric"]) & set(at_k[at_k["method"] == b]["metric"])
    if metric is not None:
        if metric not in both:
            raise OodmlError(f"{dataset}: metric {metric!r} is not stored for both methods at k={k}"
                             f"{suggest(metric, both)}; shared metrics: {', '.join(sorted(both)) or 'none'}")
        return metric
    for m in DEFAULT_METRIC_ORDER:
        if m in both:
            return m
    if not both:
        raise OodmlError(f"{dataset}: {a!r} and {b!r} share no metric at k={k}")
    return sorted(both)[0]


def paired_levels(frame: pd.DataFrame, rows: pd.DataFrame, a: str, b: str, k: int, levels: tuple[int, ...] | None,
                  dataset: str, labels: dict[int, str]) -> pd.DataFrame:
    """The frame restricted to `levels`, after checking that a and b are paired there; OodmlError naming the first
    difference otherwise (`labels`: unit code -> label, for the message)."""

    def _units(codes: object) -> str:
        return _describe([labels.get(int(c), str(c)) for c in codes])  # type: ignore[attr-defined]

    where = f"{dataset} k={k}"
    lv_a = set(rows[rows["method"] == a]["split_level"].astype(int))
    lv_b = set(rows[rows["method"] == b]["split_level"].astype(int))
    chosen = sorted(lv_a | lv_b) if levels is None else sorted(levels)
    for lv in chosen:
        for name, have in ((a, lv_a), (b, lv_b)):
            if lv not in have:
                hint = "pass --levels with the shared levels" if levels is None else "choose other --levels"
                raise OodmlError(f"unpaired cells at {where}: {name!r} has no ok rows at level {lv} (it has levels "
                                 f"{_ints(have)}); {hint}")
        at = rows[rows["split_level"] == lv]
        h_a = sorted(set(at[at["method"] == a]["split_hash"].astype(str)))
        h_b = sorted(set(at[at["method"] == b]["split_hash"].astype(str)))
        if h_a != h_b:
            raise OodmlError(f"unpaired cells at {where} level {lv}: {a!r} ran on split {','.join(h_a)}, {b!r} on "
                             f"{','.join(h_b)} (another split file); run both on one split file")
        s_a = set(at[at["method"] == a]["seed"].astype(int))
        s_b = set(at[at["method"] == b]["seed"].astype(int))
        if s_a != s_b:
            raise OodmlError(f"unpaired cells at {where} level {lv}: {a!r} has seeds {_ints(s_a)}, {b!r} has seeds "
                             f"{_ints(s_b)}; run both with the same --seeds")
        f = frame[frame["split_level"] == lv]
        for seed in sorted(s_a):
            fs = f[f["seed"] == seed]
            u_a = fs[fs["method"] == a].set_index("unit")["weight"]
            u_b = fs[fs["method"] == b].set_index("unit")["weight"]
            if set(u_a.index) != set(u_b.index):
                only = sorted(set(u_a.index) ^ set(u_b.index))
                raise OodmlError(f"unpaired cells at {where} level {lv} seed {seed}: {a!r} has {_units(u_a.index)}, "
                                 f"{b!r} has {_units(u_b.index)} (differing: {_units(only)}); other episodes or test "
                                 "classes: rerun both on one split file (or rerun old cells without per-unit values "
                                 "with --force)")
            diff_w = u_a.index[~np.isclose(u_a.to_numpy(float), u_b.reindex(u_a.index).to_numpy(float))]
            if len(diff_w):
                raise OodmlError(f"unpaired cells at {where} level {lv} seed {seed}: the query counts of "
                                 f"{_units(diff_w)} differ between {a!r} and {b!r} (other test images)")
    return frame[frame["split_level"].isin(chosen)]


def _describe(labels: list[str]) -> str:
    names = [u.split(":", 1)[-1] for u in labels]
    kinds = {u.split(":", 1)[0] for u in labels}
    what = "episodes" if kinds == {"e"} else "classes" if kinds == {"c"} else "units"
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
    return f"{what} {shown}" if names else "no per-unit values"


def render(comparison: Comparison) -> str:
    """The comparison as a plain-text table (one line per k and level, the row over levels last per k)."""
    t = comparison.table
    shown = pd.DataFrame({
        "k": t["k_shot"].astype(str), "level": t["level"], "fid": t["fid"].map(lambda v: doc.fmt_number(v, 1)),
        "seeds x units": [f"{s} x {u / max(s, 1):g}" if lv != "all" else f"{s} seeds, {u} units"
                          for s, u, lv in zip(t["n_seeds"], t["n_units"], t["level"])],
        t["method_a"].iloc[0]: t["mean_a"].map(doc.fmt_number), t["method_b"].iloc[0]: t["mean_b"].map(doc.fmt_number),
        "diff [95% CI]": [doc.fmt_interval(v, lo, hi, 4) for v, lo, hi in zip(t["diff"], t["ci_low"], t["ci_high"])],
        "p": t["p"].map(doc.fmt_p), "p (Holm)": t["p_holm"].map(doc.fmt_p),
    })
    if len(set(shown.columns)) < len(shown.columns):  # A vs A: one mean column
        shown = shown.loc[:, ~shown.columns.duplicated()]
    widths = [max(len(str(c)), *(len(str(v)) for v in shown[c])) for c in shown.columns]
    lines = [f"{comparison.dataset}: {t['metric'].iloc[0]}, {t['method_a'].iloc[0]} minus {t['method_b'].iloc[0]}"]
    lines.append("  ".join(str(c).rjust(w) for c, w in zip(shown.columns, widths)))
    lines += ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in shown.astype(str).to_numpy()]
    return "\n".join(lines)


def verdict_line(table: pd.DataFrame) -> str:
    """What the intervals of one comparison (one k) support, in one line that agrees with its p-values: the row over
    levels decides (its 95% t interval excludes 0 exactly when its t test has p < 0.05), and the levels resolved after
    Holm's adjustment are named."""
    a, b = str(table["method_a"].iloc[0]), str(table["method_b"].iloc[0])
    k = int(table["k_shot"].iloc[0])
    over = table[table["level"] == "all"].iloc[0]
    per = table[table["level"] != "all"]
    n = int(over["n_seeds"])
    where = f"k={k}, {over['metric']}, {len(per)} level{'s' if len(per) != 1 else ''}, {n} seed{'s' if n != 1 else ''}"
    if n < 2 or not np.isfinite(over["ci_low"]):
        return (f"verdict ({where}): no interval, {st.seed_note(n) or 'no seed-level spread'}; the difference "
                f"{over['diff']:+.4f} is not a finding")
    p = doc.fmt_p(over["p"])
    interval = f"{over['diff']:+.4f} [{over['ci_low']:+.4f}, {over['ci_high']:+.4f}], p{'' if p[0] == '<' else '='}{p}"
    up = per[(per["p_holm"] < st.ALPHA) & (per["diff"] > 0)]["level"].tolist()
    down = per[(per["p_holm"] < st.ALPHA) & (per["diff"] < 0)]["level"].tolist()
    if over["ci_low"] > 0 or over["ci_high"] < 0:
        hi, lo = (a, b) if over["ci_low"] > 0 else (b, a)
        head = f"{hi} > {lo} over levels ({interval})"
        same = up if hi == a else down
        if len(per) > 1:
            head += ("; at every level (Holm)" if len(same) == len(per) else
                     f"; resolved at level(s) {', '.join(same)} of {len(per)} (Holm)" if same else
                     "; at no single level after Holm's adjustment")
    else:
        head = f"no resolved difference over levels ({interval}: the interval includes 0)"
        if up or down:
            head += "; yet resolved at " + "; ".join(
                f"level(s) {', '.join(lv)}: {x} > {y}" for lv, x, y in ((up, a, b), (down, b, a)) if lv) + " (Holm)"
    note = f"; {st.seed_note(n)}" if n == 2 else ""
    return f"verdict ({where}): {head}{note}"
