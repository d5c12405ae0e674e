"""The results store: one JSON file per cell, `<results>/cells/<cell_id>.json`, written atomically (docs/formats.md).

The parent process is the only writer of its run. A file appears complete or not at all (temp file in the same
folder, fsync, rename), so killing a run at any moment loses at most the cells that were running. Several runs may
share one results folder: each write holds an `fcntl` lock on `<root>/cells/.lock` (released when its holder exits or
is killed), re-reads the stored file and merges it (`merge_cells`), so a run that finished k = 0 and another that
finished k = 2 of the same cell leave one file with both, and a later error never replaces finished values. Nothing
is written through a symbolic link inside the folder (`oodml.io.safe_path`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from oodml.config import canonical_json, cfg_hash
from oodml.errors import OodmlError
from oodml.eval.protocol import MetricRow
from oodml.io import atomic_write, disk_error, folder_lock, remove_stale_temps, safe_dir, safe_path
from oodml.progress import log
from oodml.runner.cell import CellResult
from oodml.runner.plan import Cell, Plan
from oodml.schema import (CLASS_UNIT_COLUMNS, EPISODE_UNIT_COLUMNS, ROW_COLUMNS, SCHEMA_VERSION, is_unit_table,
                          unit_entries, unit_table)

DONE_STATUSES = ("ok", "skipped")
#: distributions whose versions every cell records
LIBRARIES = ("torch", "numpy", "faiss-cpu", "pytorch-metric-learning", "timm", "scipy", "scikit-learn", "ray")


class CellStore:
    """The writer's side of the results store: cell files under `<root>/cells/`, the fit cache under `<root>/fits/`
    (`oodml.report.store` reads it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells_dir = safe_path(self.root, "cells")  # OodmlError when a link
        self.fits_dir = safe_path(self.root, "fits")
        for d in (self.cells_dir, self.fits_dir):
            if d.exists() and not d.is_dir():
                raise OodmlError(f"{str(d)!r} is a file, not a folder; move it away or choose another --results")

    def path(self, cell_id: str) -> Path:
        """The file of one cell."""
        return self.cells_dir / f"{cell_id}.json"

    def prepare(self) -> None:
        """Create the cells and fits folders (refusing links and files in their place) before any work."""
        safe_dir(self.root, "cells")
        safe_dir(self.root, "fits")

    def read(self, cell_id: str) -> dict[str, Any] | None:
        """A cell file's content, or None when absent or unreadable (an unreadable file is recomputed)."""
        p = self.path(cell_id)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def is_done(self, cell: Cell) -> bool:
        """True when the cell's file is a finished cell (`finished_cell`) that covers every k the cell asks for."""
        return set(cell.shots) <= set(self.stored_shots(cell))

    def stored_shots(self, cell: Cell) -> tuple[int, ...]:
        """The k values a finished file of this cell already holds (empty when none, or when the file is not a
        well-formed finished cell: it is then recomputed)."""
        data = self.read(cell.cell_id)
        if data is None or not finished_cell(data, cell.cell_id):
            return ()
        return tuple(int(k) for k in data["config"]["ks"])

    def write(self, payload: dict[str, Any]) -> Path:
        """Write one cell file atomically (temp file in the same folder, fsync, rename) under the folder's lock,
        merged with what another run stored for the cell meanwhile (`merge_cells`). A full disk is an OodmlError
        that says so (an error cell on a nearly full disk is taken for one: its error is most likely the disk)."""
        safe_dir(self.root, "cells")
        final = safe_path(self.cells_dir, f"{payload['cell_id']}.json")
        try:
            with folder_lock(self.cells_dir):
                merged = merge_cells(self.read(payload["cell_id"]), payload)
                if merged is None:  # an error would replace finished values: keep them, retry the rest later
                    return final
                text = dumps_cell(merged)
                if payload.get("status") == "error" and shutil.disk_usage(self.cells_dir).free < len(text) + LOW_DISK:
                    raise OodmlError(f"no space left on the device holding {str(self.root)!r} (cell "
                                     f"{payload['cell_id']} failed: {str(payload.get('error'))[:120]}); free some "
                                     "space and rerun (finished cells are kept)")
                with atomic_write(final) as f:
                    f.write(text)
        except OSError as e:
            raise disk_error(e, final) from None
        return final

    def remove_stale_temps(self) -> None:
        """Remove temp files that killed runs left in the cells and fits folders (one line when there were any)."""
        removed = remove_stale_temps(self.cells_dir) + remove_stale_temps(self.fits_dir)
        if removed:
            log(f"run: removed {len(removed)} temp file(s) left by an interrupted run under {self.root}")

    def cells(self) -> list[dict[str, Any]]:
        """Every readable cell file, sorted by cell id."""
        out = []
        for p in sorted(self.cells_dir.glob("*.json")):
            data = self.read(p.stem)
            if data is not None:
                out.append(data)
        return out


#: free bytes under which an error cell is taken for a full disk
LOW_DISK = 1 << 20


def merge_cells(stored: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any] | None:
    """What to write when `new` arrives for a cell whose file holds `stored` (another run's, or an older one).

    A finished `new` keeps every k of a finished `stored` it does not hold itself (rows, per-unit values, `ks`,
    and the config hash the union of k gives, as a run asked for that union writes); an error `new` over a finished
    `stored` returns None (keep the finished values; the next run recomputes what failed); otherwise `new`.
    """
    cell_id = str(new.get("cell_id"))
    if stored is None or not finished_cell(stored, cell_id):
        return new
    if not finished_cell(new, cell_id):
        return None if new.get("status") == "error" else new
    extra = sorted(set(stored["config"]["ks"]) - set(new["config"]["ks"]))
    if not extra:
        return new
    config = {**new["config"], "ks": sorted({*new["config"]["ks"], *extra})}
    config_hash = cfg_hash(config)
    config_json = canonical_json({**config, "libraries": new["provenance"]["libraries"]})
    rows = [*new["rows"], *(r for r in stored["rows"] if r.get("k_shot") in extra)]
    merged = {**new, "config": config, "config_hash": config_hash,
              "rows": [{**r, "config_hash": config_hash, "config_json": config_json} for r in rows]}
    for key in UNIT_KEYS:
        old = [e for e in _entries(stored.get(key)) if e.get("k") in extra]
        if old:
            cols = EPISODE_UNIT_COLUMNS if key == "episodes" else CLASS_UNIT_COLUMNS
            merged[key] = unit_table([*_entries(new.get(key)), *old], cols)
    return merged


def _entries(obj: Any) -> list[dict[str, Any]]:
    return unit_entries(obj) if obj is not None else []


def finished_cell(data: dict[str, Any], cell_id: str) -> bool:
    """True when `data` is a finished cell file of `cell_id` as the runner writes it: status ok/skipped, its id,
    a config listing its k, and rows with every schema column (anything else is recomputed, not skipped)."""
    config = data.get("config")
    rows = data.get("rows")
    if data.get("status") not in DONE_STATUSES or data.get("cell_id") != cell_id or not isinstance(config, dict):
        return False
    ks = config.get("ks")
    if not isinstance(ks, list) or not ks or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
        return False
    if not isinstance(rows, list) or not rows or not all(_unit_list(data.get(k)) for k in UNIT_KEYS):
        return False
    return all(isinstance(r, dict) and all(c in r for c in ROW_COLUMNS) and r.get("cell_id") == cell_id
               for r in rows)


#: The payload keys that hold per-unit tables (`oodml.schema.unit_table`).
UNIT_KEYS = ("episodes", "classes")


def _unit_list(obj: Any) -> bool:
    """True for an absent per-unit list, a table, or the older list of objects."""
    return obj is None or isinstance(obj, list) or is_unit_table(obj)


def dumps_cell(payload: dict[str, Any]) -> str:
    """A cell file's text: `json.dumps(payload, indent=1)`, except that a per-unit table keeps each row on one line
    (indented, a table would put every value on its own line and triple the file)."""
    members = []
    for key, value in payload.items():
        if key in UNIT_KEYS and isinstance(value, dict):
            rows = ",".join("\n  " + json.dumps(r, allow_nan=False, separators=(",", ":")) for r in value["rows"])
            end = "\n " if rows else ""
            text = f'{{"columns": {json.dumps(value["columns"])}, "rows": [{rows}{end}]}}'
        else:  # one more space of indent on every line of a nested value, as indent=1 gives
            text = json.dumps(value, indent=1, allow_nan=False).replace("\n", "\n ")
        members.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(members) + "\n}\n" if members else "{}\n"


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """oodml version, git sha of the source tree (when it is a git checkout) and library versions."""
    from oodml import __version__

    libs = {}
    for name in LIBRARIES:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"oodml_version": __version__, "git_sha": _git_sha(), "libraries": libs, "host": host()}


def host() -> dict[str, Any]:
    """The CPU a cell ran on. CPU numbers are bit-identical for the same seed on the same kind of CPU; the math
    libraries (MKL, oneDNN) pick kernels by instruction set, so another kind of CPU may differ in the last bits."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": cpu, "machine": platform.machine()}
    try:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 -- provenance is best effort
        pass
    return out


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def cell_payload(plan: Plan, cell: Cell, result: CellResult) -> dict[str, Any]:
    """The cell file: id, status, error, resolved config, provenance, tidy rows, and the per-unit tables
    (`oodml.schema.unit_table`): per-episode values (k > 0, `EPISODE_UNIT_COLUMNS`) and per-class values (k = 0,
    `CLASS_UNIT_COLUMNS`)."""
    prov = provenance()
    config = plan.config_for(cell)
    config_hash = cfg_hash(config)
    config_json = canonical_json({**config, "libraries": prov["libraries"]})
    lv = plan.levels[cell.level]
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    base = {
        "schema_version": SCHEMA_VERSION, "oodml_version": prov["oodml_version"], "git_sha": prov["git_sha"],
        "created_at": now, "cell_id": cell.cell_id, "dataset": cell.dataset, "backbone": cell.backbone,
        "feature_hash": plan.feature_hash, "method_family": plan.families[cell.method],
        "method_params": cell.params_json, "split_level": cell.level, "split_fid": lv.fid,
        "n_train_classes": lv.n_train_classes, "n_test_classes": lv.n_test_classes, "split_hash": cell.split_hash,
        "seed": cell.seed, "wall_time_s": result.wall_time_s, "peak_mem_mb": result.peak_mem_mb,
        "device": result.device or plan.device, "config_hash": config_hash, "config_json": config_json,
    }
    # an error cell: one row per shots value, without a metric
    metrics = ([MetricRow("", k, None, None, status="error") for k in cell.shots] if result.status == "error"
               else result.metrics)
    rows = []
    for m in metrics:
        row = {**base, "method": method_label(cell.method, m.variant), "k_shot": m.k, "n_episodes": m.n_episodes,
               "metric": m.metric, "value": m.value, "episode_std": m.episode_std, "n_queries": m.n_queries,
               "knn_k": m.knn_k, "knn_backend": m.knn_backend, "status": m.status,
               "error": result.error if m.status == "error" else None}
        rows.append({c: row[c] for c in ROW_COLUMNS})
    episodes = [{"variant": e.variant, "k": e.k, "episode": e.episode, "metric": e.metric, "value": e.value}
                for e in result.episodes]
    payload: dict[str, Any] = {
        "cell_id": cell.cell_id, "status": result.status, "error": result.error, "config": config,
        "config_hash": config_hash, "provenance": prov, "wall_time_s": result.wall_time_s,
        "cpu_time_s": result.cpu_time_s, "peak_mem_mb": result.peak_mem_mb, "fit_cached": result.fit_cached,
        "node": {"hostname": result.hostname, "ray_node_id": result.node_id, "retries": result.retries},
        "rows": rows, "episodes": unit_table(episodes, EPISODE_UNIT_COLUMNS),
        "classes": unit_table([c.to_dict() for c in result.classes], CLASS_UNIT_COLUMNS),
    }
    if result.training:
        payload["training"] = result.training
    if result.traceback:
        payload["traceback"] = result.traceback
    return payload


def method_label(spec: str, variant: str) -> str:
    """Row `method`: the spec, with `[variant]` appended for a non-empty embedding variant."""
    return f"{spec}[{variant}]" if variant else spec
