"""A result's identity is its configuration: cells that ran one method with different settings are different series.

Every table of the report, `compare` and `plan` averages over seeds and levels *within* a series, never across two.
A series is a method name with one resolved configuration: its hyperparameters (`method_params`), its backbone and
its features. Where a method name ran with one configuration in a results folder, its series keeps the plain name
(`margin`); where it ran with several, each is labelled by the settings in which they differ, e.g.
`supcon[temperature=0.05]` and `supcon[temperature=0.1]` (`backbone=...` and `features=<hash>` when those differ).
A method's embedding variant (`margin+dmml[ensemble]`) keeps its bracket, and the settings follow inside it
(`margin+dmml[ensemble,lr=0.01]`), so that `adapted_X[...]` still finds its unadapted `X[...]`.

A dataset's split levels must come from one split file: a level whose rows name two `split_hash`es means two split
files' results in one folder, which no table may average; `check_one_split` refuses it with one line.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pandas as pd

from oodml.errors import OodmlError
from oodml.report.store import Store

#: Row columns that, with `method_params`, make a series' configuration.
IDENTITY_COLUMNS = ("backbone", "feature_hash")


def _params(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        out = json.loads(text)
    except ValueError:
        return {"method_params": text}
    return out if isinstance(out, dict) else {"method_params": text}


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def series_labels(rows: pd.DataFrame, cells: pd.DataFrame) -> dict[str, str]:
    """cell_id -> series label for every cell whose method ran with more than one configuration (cells of a method
    with one configuration keep its name and are left out of the mapping). `cells` names each cell's method spec;
    `rows` its configuration."""
    if rows.empty:
        return {}
    spec = cells.drop_duplicates("cell_id").set_index(cells["cell_id"].astype(str).drop_duplicates())["method"]
    first = rows.drop_duplicates("cell_id")
    table = pd.DataFrame({"cell_id": first["cell_id"].astype(str).to_numpy(),
                          "dataset": first["dataset"].astype(str).to_numpy(),
                          "params": first["method_params"].to_numpy(),
                          **{c: first[c].astype(str).to_numpy() for c in IDENTITY_COLUMNS}})
    mapped = table["cell_id"].map(spec.astype(str))
    table["spec"] = mapped.where(mapped.notna(), pd.Series(first["method"].astype(str).to_numpy(), index=table.index))
    out: dict[str, str] = {}
    for (_, method), g in table.groupby(["dataset", "spec"], sort=False):
        configs = {r.cell_id: {**_params(r.params), **{f"_{c}": getattr(r, c) for c in IDENTITY_COLUMNS}}
                   for r in g.itertuples(index=False)}
        if len({json.dumps(c, sort_keys=True, default=str) for c in configs.values()}) <= 1:
            continue
        keys = sorted({k for c in configs.values() for k in c})
        differing = [k for k in keys if len({_show(c.get(k)) for c in configs.values()}) > 1]
        for cid, c in configs.items():
            shown = []
            for k in differing:
                name = {"_backbone": "backbone", "_feature_hash": "features"}.get(k, k)
                value = _show(c.get(k, "default"))
                shown.append(f"{name}={value[:12] if k == '_feature_hash' else value}")
            out[cid] = f"{method}[{','.join(shown)}]"
    return out


#: The frozen-features baseline's name, and what its rows are called when the backbone had random weights.
FROZEN, FROZEN_RANDOM = "pretrained", "random_features"


def random_weight_cells(rows: pd.DataFrame) -> set[str]:
    """cell_ids whose features came from a backbone with random weights (their config records
    `backbone_weights: random`)."""
    if rows.empty or "config_json" not in rows:
        return set()
    first = rows.drop_duplicates("cell_id")
    hit = first["config_json"].astype(str).str.contains('"backbone_weights":"random"', regex=False)
    return set(first.loc[hit, "cell_id"].astype(str))


def relabel(store: Store) -> Store:
    """The store with `method` replaced by its series label in rows, cells and units (cells of methods with one
    configuration unchanged); an embedding variant joins the settings (`m[ens]` -> `m[ens,lr=0.1]`). The frozen
    features of a backbone with random weights are `random_features`, never `pretrained`."""
    labels = series_labels(store.rows, store.cells)
    spec = dict(zip(store.cells["cell_id"].astype(str), store.cells["method"].astype(str)))
    for cid in random_weight_cells(store.rows):
        label = labels.get(cid) or spec.get(cid, "")
        if label.split("[")[0] == FROZEN:
            labels[cid] = FROZEN_RANDOM + label[len(FROZEN):]
    if not labels:
        return store

    def _apply(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty or "cell_id" not in frame:
            return frame
        ids = frame["cell_id"].astype(str)
        if not ids.isin(labels.keys()).any():
            return frame
        merged = []
        for cid, m in zip(ids, frame["method"].astype(str)):
            label, base = labels.get(cid), spec.get(cid, m)
            merged.append(m if label is None else _join(label, m[len(base):] if m.startswith(base) else ""))
        out = frame.copy()
        out["method"] = pd.Categorical(merged) if isinstance(frame["method"].dtype, pd.CategoricalDtype) else merged
        return out

    return replace(store, rows=_apply(store.rows), cells=_apply(store.cells), units=_apply(store.units))


def _join(label: str, variant_suffix: str) -> str:
    """`m[a=1]` + `[ens]` -> `m[ens,a=1]`; no variant: the label."""
    if not variant_suffix.startswith("[") or not variant_suffix.endswith("]"):
        return label + variant_suffix
    base, _, inner = label.partition("[")
    return f"{base}[{variant_suffix[1:-1]},{inner}"


def check_one_split(rows: pd.DataFrame, dataset: str) -> None:
    """Refuse a dataset whose level holds rows of two split files (two `split_hash`es at one level)."""
    known = rows.dropna(subset=["split_hash"])
    multi = known.groupby("split_level")["split_hash"].unique()
    multi = multi[multi.map(len) > 1]
    if len(multi):
        lv = int(multi.index[0])
        hashes = sorted(str(h) for h in multi.iloc[0])
        raise OodmlError(f"{dataset}: level {lv} holds results of {len(hashes)} split files (split_hash "
                         f"{', '.join(hashes)}); a report never averages two split files: keep one results folder "
                         "per split file (oodml run --results DIR)")


def check_series_name(name: str, have: set[str], results: str) -> None:
    """Refuse a method name that is ambiguous in a results folder: it ran with several configurations, which are
    series of their own; the error lists them."""
    if name in have:
        return
    candidates = sorted(m for m in have if m.startswith(name + "[") and "=" in m)
    if candidates:
        raise OodmlError(f"{name!r} is ambiguous in {results!r}: it ran with {len(candidates)} configurations, each "
                         f"its own series: {', '.join(candidates)}; name one of them (quote the brackets)")
