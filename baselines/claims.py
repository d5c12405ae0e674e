"""Check the papers' claims against a study's `all.csv` (the reporter's tidy table) and print Markdown tables.

Only reads `results/<study>/<dataset>/all.csv`; computes differences and rank correlations of stored numbers, no metric.

- `oodml` (Milbich et al. 2021): (1) zero-shot recall@1 falls as FID rises, for every method (Spearman rho of
  recall@1 vs level FID, and first vs last level); (2) few-shot adaptation helps more at larger shifts (gain of
  recall@1 at k shots over the same method's zero-shot recall@1, lowest vs highest level); (3) SEC and diversified
  mutual learning raise recall@1 (mean over levels, k = 0, add-on vs plain method).
- `scott` (Scott et al. 2018): the adapted embeddings reduce the error (1 - n-way accuracy) relative to the best of
  the four single families, by 34% on average in the paper.

Usage:
    python baselines/claims.py oodml results/oodml_cub200_subset/cub200/all.csv
    python baselines/claims.py scott results/scott2018_mnist/mnist/all.csv [more all.csv ...] [--plot claim4.png]
    python baselines/claims.py cost results/oodml_cub200_subset [more results folders ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import pandas as pd
from scipy.stats import spearmanr

FAMILIES = ("baseline", "weight_transfer", "histogram", "protonet")
HYBRIDS = ("adapted_histogram", "adapted_proto")
PLAIN = {"adapted_proto": "protonet", "adapted_hist": "histogram"}
ADDONS = (("margin", "margin+sec"), ("multisimilarity", "multisimilarity+sec"), ("margin", "margin+dmml"),
          ("margin", "margin+dmml[ensemble]"), ("multisimilarity", "multisimilarity+dmml"),
          ("multisimilarity", "multisimilarity+dmml[ensemble]"))


def load(path: str, metric: str) -> pd.DataFrame:
    """Rows of `path` with status ok for `metric`, averaged over seeds: (method, level, fid, k) -> value, n_seeds."""
    df = pd.read_csv(path)
    df = df[(df["status"] == "ok") & (df["metric"] == metric)]
    g = df.groupby(["method", "split_level", "k_shot"], as_index=False)
    return g.agg(split_fid=("split_fid", "first"), value=("value", "mean"), n_seeds=("seed", "nunique"))


def seed_means(path: str, metric: str) -> pd.Series:
    """Zero-shot `metric` per (method, seed), averaged over the levels."""
    df = pd.read_csv(path)
    df = df[(df["status"] == "ok") & (df["metric"] == metric) & (df["k_shot"] == 0)]
    return df.groupby(["method", "seed"])["value"].mean()


def _table(rows: list[list[object]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def oodml_claims(path: str) -> str:
    """Markdown tables for the three ooDML claims."""
    d = load(path, "recall@1")
    zs = d[d["k_shot"] == 0]
    lo, hi = int(d["split_level"].min()), int(d["split_level"].max())
    rows = []
    for m, g in zs.groupby("method"):
        g = g.sort_values("split_fid")
        rho = float(spearmanr(g["split_fid"], g["value"]).statistic) if len(g) > 2 else float("nan")
        first, last = float(g["value"].iloc[0]), float(g["value"].iloc[-1])
        rows.append([m, first, last, last - first, rho, "yes" if last < first and rho < 0 else "no"])
    out = [f"Claim 1: zero-shot recall@1 falls as FID rises (level {lo} -> {hi})\n",
           _table(rows, ["method", f"R@1 L{lo}", f"R@1 L{hi}", "change", "Spearman rho (R@1 vs FID)", "falls"])]
    rows = []
    for k in sorted(int(x) for x in d["k_shot"].unique() if x > 0):
        fk = d[d["k_shot"] == k].set_index(["method", "split_level"])["value"]
        f0 = zs.set_index(["method", "split_level"])["value"]
        gain = (fk - f0).dropna()
        for m in sorted({i[0] for i in gain.index}):
            if not (m.startswith("adapted_") or m in ("weight_transfer",)):
                continue
            gm = gain.loc[m]
            plain = PLAIN.get(m, m.removeprefix("adapted_"))
            same = (fk.loc[m] - fk.loc[plain]) if plain != m and plain in fk.index.get_level_values(0) else None
            if lo in gm.index and hi in gm.index:
                row: list[object] = [m, k, float(gm.loc[lo]), float(gm.loc[hi]),
                                     "yes" if gm.loc[hi] > gm.loc[lo] else "no"]
                if same is not None and lo in same.index and hi in same.index:
                    row += [plain, float(same.loc[lo]), float(same.loc[hi]),
                            "yes" if same.loc[hi] > same.loc[lo] else "no"]
                else:
                    row += ["-", "-", "-", "-"]
                rows.append(row)
    out += [f"\n\nClaim 2: few-shot gain is larger at level {hi} than at level {lo}. Gain A = R@1 at k shots minus "
            "the same method's zero-shot R@1 (the reporter's gain; the k-shot gallery is the queries only); gain B = "
            "R@1 of the adapted method minus its unadapted source model on the same k-shot queries\n",
            _table(rows, ["method", "k", f"gain A L{lo}", f"gain A L{hi}", f"A larger at L{hi}", "unadapted",
                          f"gain B L{lo}", f"gain B L{hi}", f"B larger at L{hi}"])]
    rows = []
    mean0 = zs.groupby("method")["value"].mean()
    per_seed = seed_means(path, "recall@1")
    for base, add in ADDONS:
        if base in mean0.index and add in mean0.index:
            diff = (per_seed.loc[add] - per_seed.loc[base]).dropna()
            rows.append([add, base, float(mean0[base]), float(mean0[add]), float(mean0[add] - mean0[base]),
                         f"{int((diff > 0).sum())}/{len(diff)}", "yes" if mean0[add] > mean0[base] else "no"])
    out += ["\n\nClaim 3: add-ons raise zero-shot recall@1 (mean over levels; seeds: in how many seeds the add-on's "
            "mean over levels is higher)\n",
            _table(rows, ["add-on", "plain", "R@1 plain", "R@1 add-on", "difference", "seeds", "raises"])]
    return "\n".join(out)


def scott_records(paths: Sequence[str], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Per (study, k): the best single family and the best hybrid, their errors and the relative error reduction."""
    out: list[dict[str, Any]] = []
    for path, label in zip(paths, labels):
        d = load(path, "accuracy")
        for k, g in d.groupby("k_shot"):
            acc = g.groupby("method")["value"].mean()
            singles = acc[[m for m in FAMILIES if m in acc.index]]
            hybrids = acc[[m for m in HYBRIDS if m in acc.index]]
            if singles.empty or hybrids.empty:
                continue
            e_s, e_h = 1 - float(singles.max()), 1 - float(hybrids.max())
            out.append({"study": label, "k": int(k), "single": str(singles.idxmax()), "e_single": e_s,
                        "hybrid": str(hybrids.idxmax()), "e_hybrid": e_h,
                        "reduction": (e_s - e_h) / e_s if e_s > 0 else float("nan")})
    return out


def scott_claims(paths: Sequence[str], labels: Sequence[str]) -> str:
    """Markdown table: error of the best single family vs the best hybrid per (study, k), relative reduction."""
    recs = scott_records(paths, labels)
    rows = [[r["study"], r["k"], r["single"], r["e_single"], r["hybrid"], r["e_hybrid"],
             f"{100 * float(r['reduction']):.0f}%"] for r in recs]
    reds = [float(r["reduction"]) for r in recs]
    mean = sum(reds) / len(reds) if reds else float("nan")
    return (_table(rows, ["study", "k", "best single family", "its error", "best hybrid", "its error",
                          "error reduction"]) + f"\n\nMean error reduction over these settings: {100 * mean:.0f}% "
            "(paper: 34% on average)")


#: study-name suffix -> how the variant differs from the pixel-MLP study with fixed adaptation steps
VARIANTS = {"": "MLP on pixels, fixed adaptation steps", "_plateau": "MLP on pixels, Scott et al.'s stopping rule",
            "_conv4": "conv4 on the images, fixed adaptation steps"}


def scott_plot(paths: Sequence[str], labels: Sequence[str], out: str) -> str:
    """Dot plot of the error reduction per task setting, one colour per study variant, the paper's 34% as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = scott_records(paths, labels)
    def split(study: str) -> tuple[str, str]:
        for suffix in sorted(VARIANTS, key=len, reverse=True):
            if suffix and study.endswith(suffix):
                return study.removeprefix("scott2018_").removesuffix(suffix), suffix
        return study.removeprefix("scott2018_"), ""
    tasks = list(dict.fromkeys(split(str(r["study"]))[0] for r in recs))  # in the order given
    settings = sorted({(split(str(r["study"]))[0], int(str(r["k"]))) for r in recs},
                      key=lambda tk: (tasks.index(tk[0]), tk[1]))
    x = {s: i for i, s in enumerate(settings)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(settings) + 5), 4.6))
    variants = [v for v in VARIANTS if any(split(str(r["study"]))[1] == v for r in recs)]
    for j, v in enumerate(variants):
        pts = [(x[(split(str(r["study"]))[0], int(str(r["k"])))] + 0.18 * (j - (len(variants) - 1) / 2),
                100 * float(r["reduction"])) for r in recs if split(str(r["study"]))[1] == v]
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
    a = ap.parse_args(argv)
    if a.kind == "cost":
        print("\n".join(cost(r) for r in a.csv))
    elif a.kind == "oodml":
        print(oodml_claims(a.csv[0]))
    else:
        labels = [p.split("/")[-3] if p.count("/") >= 2 else p for p in a.csv]
        print(scott_claims(a.csv, labels))
        if a.plot:
            print(f"\nplot: {scott_plot(a.csv, labels, a.plot)}")


if __name__ == "__main__":
    main()
