"""Compare a rerun's cells with a committed study's `all.csv`, value by value.

Reads the rerun folder through the report's reader (`oodml.report.store.read_store`: its ok rows and per-unit
values) and the committed `all.csv` (the reporter's tidy table: aggregate rows, then unit rows with `episode` or
`class` set). Every rerun value is looked up in the committed table by its key: method (with its variant, e.g.
`margin+dmml[ensemble]`), split level, seed, k, metric, and the unit columns `episode` / `class` where the committed
table has them (without them, only aggregate rows are compared). Values must be identical (floats compared exactly,
pandas reads the CSV back with round-trip precision).

Prints `N of M identical`, the largest absolute difference, how many rerun values the committed table lacks, how many
of the rerun's cell ids (which hash the resolved configuration) the committed table has, and the first mismatches.
Exit status: 0 all identical, 1 any mismatch, missing value or cell id, 2 bad input (one `error:` line).

Usage:
    python baselines/verify_rerun.py /tmp/rerun results/oodml_cub200_subset/cub200/all.csv [--show 10]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from oodml.errors import OodmlError
from oodml.report.store import Store, read_store

KEY: tuple[str, ...] = ("method", "split_level", "seed", "k_shot", "metric")
UNIT_COLUMNS: tuple[str, ...] = ("episode", "class")


@dataclass(frozen=True)
class Comparison:
    """The outcome: every rerun value joined with its committed counterpart (NaN where the committed lacks it)."""

    table: pd.DataFrame  # KEY (+ unit columns), rerun, committed, diff
    key: tuple[str, ...]
    cells: tuple[int, int] = (0, 0)  # (rerun cell ids found in the committed table, rerun cell ids)

    @property
    def total(self) -> int:
        """M: rerun values compared."""
        return len(self.table)

    @property
    def identical(self) -> int:
        """N: values equal to the committed ones."""
        return int((self.table["rerun"] == self.table["committed"]).sum())

    @property
    def missing(self) -> int:
        """Rerun values without a committed counterpart."""
        return int(self.table["committed"].isna().sum())

    @property
    def max_abs_diff(self) -> float:
        """The largest |rerun - committed| over the values both have (0 when none)."""
        d = self.table["diff"].dropna()
        return float(d.abs().max()) if len(d) else 0.0

    def mismatches(self) -> pd.DataFrame:
        """The rows that differ or are missing, in key order."""
        return self.table[self.table["rerun"] != self.table["committed"]]


def _normalise(frame: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    out = frame[list(key)].copy()
    for col in ("split_level", "seed", "k_shot", "episode"):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    for col in ("method", "metric", "class"):
        if col in out:
            out[col] = out[col].astype(object).where(out[col].notna(), None).map(
                lambda v: None if v is None else str(v))
    return out


def rerun_values(store: Store, units: bool) -> pd.DataFrame:
    """The rerun's ok values (aggregate rows, and per-unit values when `units`) with KEY and unit columns."""
    rows = store.rows[store.rows["status"] == "ok"]
    agg = rows[list(KEY)].astype(object).assign(episode=pd.NA, **{"class": None},
                                                value=rows["value"].to_numpy(dtype=float))
    if not units or not len(store.units):
        return agg
    u = store.units[[*KEY, *UNIT_COLUMNS, "value"]].astype(object)
    return pd.concat([agg, u], ignore_index=True)


def committed_values(csv: Path) -> tuple[pd.DataFrame, bool]:
    """The committed ok values (with `cell_id`) and whether the table has unit rows (`episode` / `class`)."""
    if not csv.is_file():
        raise OodmlError(f"no committed table at {csv}; pass a study's <results>/<dataset>/all.csv")
    table = pd.read_csv(csv, dtype={"class": str}, low_memory=False)
    missing = [c for c in (*KEY, "value", "status", "cell_id") if c not in table]
    if missing:
        raise OodmlError(f"{csv} lacks the column(s) {', '.join(missing)}; is it an oodml all.csv?")
    units = all(c in table for c in UNIT_COLUMNS)
    table = table[table["status"] == "ok"]
    if not units:
        table = table.assign(episode=pd.NA, **{"class": None})
    return table[[*KEY, *UNIT_COLUMNS, "value", "cell_id"]], units


def compare(rerun: Path, committed_csv: Path) -> Comparison:
    """Join every rerun value with the committed value of the same key (see the module docstring)."""
    committed, units = committed_values(committed_csv)
    store = read_store(rerun)
    mine = rerun_values(store, units)
    ids = set(store.rows.loc[store.rows["status"] == "ok", "cell_id"].astype(str))
    found = len(ids & set(committed["cell_id"].dropna().astype(str)))
    key = (*KEY, *UNIT_COLUMNS)
    left = _normalise(mine, key).assign(rerun=pd.to_numeric(mine["value"]).to_numpy(dtype=float))
    right = _normalise(committed, key).assign(committed=pd.to_numeric(committed["value"]).to_numpy(dtype=float))
    dup = right.duplicated(list(key), keep=False)
    if dup.any():
        first = right[dup].iloc[0].to_dict()
        raise OodmlError(f"{committed_csv} holds {int(dup.sum())} rows with a repeated key, e.g. {first}; "
                         "compare one study's table at a time")
    joined = left.merge(right, on=list(key), how="left", sort=False)
    joined["diff"] = joined["rerun"] - joined["committed"]
    joined = joined.sort_values(list(KEY), kind="stable", ignore_index=True)
    return Comparison(joined, key, (found, len(ids)))


def summary(c: Comparison, show: int = 10) -> str:
    """The printed report: `N of M identical`, max |difference|, missing count and the first mismatches."""
    lines = [f"{c.identical} of {c.total} identical", f"max abs difference: {c.max_abs_diff:.3g}",
             f"missing from the committed table: {c.missing}",
             f"cell ids (same config hash) found in the committed table: {c.cells[0]} of {c.cells[1]}"]
    bad = c.mismatches()
    if len(bad) and show > 0:
        lines.append(f"first {min(show, len(bad))} of {len(bad)} mismatches:")
        cols = [k for k in c.key if bad[k].notna().any()] + ["rerun", "committed", "diff"]
        lines.append(bad[cols].head(show).to_string(index=False))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rerun", type=Path, help="results folder of the rerun (its cells/*.json)")
    ap.add_argument("committed", type=Path, help="the committed <results>/<dataset>/all.csv")
    ap.add_argument("--show", type=int, default=10, help="mismatches to print (default 10)")
    a = ap.parse_args(argv)
    try:
        c = compare(a.rerun, a.committed)
    except OodmlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if c.total == 0:
        print(f"error: the rerun at {a.rerun} has no ok values to compare", file=sys.stderr)
        return 2
    print(summary(c, a.show))
    return 0 if c.identical == c.total and c.cells[0] == c.cells[1] else 1


if __name__ == "__main__":
    np.seterr(invalid="ignore")
    sys.exit(main())
