"""How many episodes resolve a few-shot gain? (issue 17, item 7)

Reads results folders of one study run on split files that differ only in their episode count (`oodml make-splits
... --episodes N`, same seed: the first episodes of every file are the same), runs `oodml compare A B` on each, and
prints the 95% interval width of the paired difference A - B per k and level against N, with two fits:

- `c / sqrt(N)`: the width if all of it came from the episodes;
- `sqrt(a^2 + b^2 / N)`: a part that more episodes cannot shrink (`a`: the seeds' spread, 3 seeds here) plus an
  episode part; least squares on the squared widths.

From the second fit it reads off the N at which the interval half-width falls to a 2-point (0.02) gain, i.e. the
width to 0.04 (`inf`: the seed part alone is wider).

    PYTHONPATH=. .venv/bin/python benchmarks/episodes.py A B N=DIR [N=DIR ...] [--bootstrap 2000]
    PYTHONPATH=. .venv/bin/python benchmarks/episodes.py A B --nested DIR --sizes 10,25,50,100

The first form compares folders run on separate split files; the second takes the first N episodes of one folder
run with the largest N (the first N episodes of a split file with more episodes are the N-episode file's episodes;
only the adaptation seeds, which derive from the cell id, differ from a run on the N-episode file). The commands
that made the folders are in results/README.md, "Episodes: how many are enough".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from oodml.report import intervals as iv
from oodml.report.compare import compare_command
from oodml.report.leaderboard import ok_rows, seed_values
from oodml.report.stats import DEFAULT_BOOTSTRAP
from oodml.report.store import read_store

#: The gain to resolve: the interval's half-width must fall below it.
TARGET_GAIN = 0.02


def widths(a: str, b: str, folders: dict[int, Path], bootstrap: int,
           levels: tuple[int, ...] | None = None) -> pd.DataFrame:
    """`N, k_shot, level, diff, ci_low, ci_high, width` of A - B for every folder (one compare each)."""
    parts = []
    for n, folder in sorted(folders.items()):
        for c in compare_command(results=folder, a=a, b=b, bootstrap=bootstrap, levels=levels):
            t = c.table[c.table["k_shot"] > 0]
            parts.append(pd.DataFrame({"N": n, "k_shot": t["k_shot"], "level": t["level"], "diff": t["diff"],
                                       "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                                       "width": t["ci_high"] - t["ci_low"]}))
    return pd.concat(parts, ignore_index=True)


def nested_widths(a: str, b: str, folder: Path, sizes: list[int], bootstrap: int,
                  levels: tuple[int, ...] | None = None, metric: str = "recall@1") -> pd.DataFrame:
    """As `widths`, from the first N episodes (N in `sizes`) of every k-shot cell of one folder."""
    store = read_store(folder)
    ok = ok_rows(store.rows)
    ok = ok[ok["method"].isin([a, b])].astype({"method": str, "metric": str})
    seeds = seed_values(ok)
    fids = {int(lv): float(f) for lv, f in ok.groupby("split_level")["split_fid"].first().items()}
    units = store.units[store.units["method"].isin([a, b])]
    if levels is not None:
        units = units[units["split_level"].isin(levels)]
        seeds = seeds[seeds["split_level"].isin(levels)]
    parts = []
    for n in sizes:
        sub = units[units["episode"].notna() & (units["episode"].fillna(-1) < n)]
        have = sub.groupby(["method", "split_level", "k_shot", "seed"], observed=True)["episode"].nunique()
        if (have < n).any():
            raise SystemExit(f"{folder}: some cells have fewer than {n} episodes")
        for k in sorted(int(v) for v in sub["k_shot"].unique()):
            frame = iv.unit_frame(sub, seeds, k=k, metric=metric)
            d = iv.paired_differences(frame, {f"{a} - {b}": (a, b)}, fids, bootstrap)
            parts.append(pd.DataFrame({
                "N": n, "k_shot": k, "level": [str(int(v)) if pd.notna(v) else "all" for v in d["split_level"]],
                "diff": d["diff"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
                "width": d["ci_high"] - d["ci_low"]}))
    return pd.concat(parts, ignore_index=True)


def fit(n: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """(c of c/sqrt(N), a and b of sqrt(a^2 + b^2/N)): least squares, the second on w^2 = a^2 + b^2/N with
    a^2, b^2 >= 0 (scipy.optimize.nnls)."""
    from scipy.optimize import nnls

    c = float(np.sum(w / np.sqrt(n)) / np.sum(1.0 / n))  # argmin sum (w - c/sqrt(n))^2
    coef, _ = nnls(np.column_stack([np.ones_like(n), 1.0 / n]), w ** 2)
    return c, float(np.sqrt(coef[0])), float(np.sqrt(coef[1]))


def needed_episodes(a: float, b: float, width: float) -> float:
    """The N at which sqrt(a^2 + b^2/N) reaches `width` (inf when a >= width)."""
    return float(b ** 2 / (width ** 2 - a ** 2)) if width > a else float("inf")


def main() -> None:
    """Print the width table and the fits as Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("folders", nargs="*", help="N=DIR: the results folder run on the split file with N episodes")
    ap.add_argument("--nested", type=Path, default=None, help="one folder: take its first N episodes instead")
    ap.add_argument("--sizes", default="10,25,50,100", help="the N of --nested")
    ap.add_argument("--levels", default=None, help="only these levels, e.g. 1 or 1,8")
    ap.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP)
    args = ap.parse_args()
    levels = tuple(int(v) for v in args.levels.split(",")) if args.levels else None
    if args.nested is not None:
        ns = [int(v) for v in args.sizes.split(",")]
        table = nested_widths(args.a, args.b, args.nested, ns, args.bootstrap, levels)
    else:
        folders = {int(s.split("=", 1)[0]): Path(s.split("=", 1)[1]) for s in args.folders}
        table = widths(args.a, args.b, folders, args.bootstrap, levels)
        ns = sorted(folders)
    print(f"95% interval width of {args.a} - {args.b} (recall@1) against the episode count N\n")
    print("| k | level | " + " | ".join(f"N = {n}" for n in ns) + " | c (c/sqrt N) | a (floor) | b | N for 0.02 |")
    print("|---|---|" + "---|" * len(ns) + "---|---|---|---|")
    for (k, level), g in table.groupby(["k_shot", "level"], sort=False):
        g = g.set_index("N").reindex(ns)
        c, a, b = fit(np.asarray(ns, float), g["width"].to_numpy(float))
        need = needed_episodes(a, b, 2 * TARGET_GAIN)
        cells = [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] w {w:.3f}"
                 for d, lo, hi, w in zip(g["diff"], g["ci_low"], g["ci_high"], g["width"])]
        print(f"| {k} | {level} | " + " | ".join(cells) + f" | {c:.3f} | {a:.3f} | {b:.3f} | "
              + ("inf" if not np.isfinite(need) else f"{max(need, 1.0):.0f}") + " |")


if __name__ == "__main__":
    main()
