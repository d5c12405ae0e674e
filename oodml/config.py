"""Frozen, typed configuration: the only source of truth for a run (GUIDE §4).

YAML (`--config FILE.yaml`) uses the same keys as the command-line options (`method`, `shifts`, `k`, `seeds`, ...);
command-line options override it; the merged result is validated once, here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodml.errors import OodmlError
from oodml.ranges import parse_int_list

REGIMES = ("head", "full")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RunCfg:
    """Everything `oodml run` needs. `shifts=None` means every level of the split file."""

    methods: tuple[str, ...]
    dataset: str | None = None
    splits: str | None = None
    features: str | None = None
    shifts: tuple[int, ...] | None = None
    ks: tuple[int, ...] = (0, 2, 5, 10)
    seeds: tuple[int, ...] = (0, 1, 2)
    regime: str = "head"
    executor: str = "local"
    address: str | None = None
    workers: int | None = None
    results: str = "results"
    force: bool = False
    device: str = "auto"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    data_root: str | None = None
    #: loader options of the dataset (e.g. omniglot rotations=true), for embedding it and for the `full` regime
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    #: the backbone the `full` regime trains (default: the split file's); in `head` it must be the features' backbone
    backbone: str | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise OodmlError("no method given; pass --method NAME[,NAME...] (`oodml list methods` shows all)")
        if self.regime not in REGIMES:
            raise OodmlError(f"--regime {self.regime!r} is not one of {', '.join(REGIMES)}")
        if self.executor not in EXECUTORS:
            raise OodmlError(f"--executor {self.executor!r} is not one of {', '.join(EXECUTORS)}")
        if self.workers is not None and self.workers < 1:
            raise OodmlError(f"--workers must be >= 1, got {self.workers}")
        if self.shifts is not None and any(s < 1 for s in self.shifts):
            raise OodmlError("--shifts values are split levels, numbered from 1")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        d["method_params"] = dict(self.method_params)
        d["dataset_options"] = dict(self.dataset_options)
        return d

    def to_row(self) -> dict[str, Any]:
        """Flatten to `dotted.key -> scalar` (lists become comma-joined strings)."""
        return flatten(self.to_dict())


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys; sequences become comma-joined strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(str(x) for x in v)
        else:
            out[key] = v
    return out


def canonical_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no whitespace) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cfg_hash(obj: Any) -> str:
    """sha1 of the canonical JSON of a config dict or dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    return hashlib.sha1(canonical_json(obj).encode()).hexdigest()


def parse_param_overrides(items: list[str] | tuple[str, ...], option: str = "--method-param",
                          example: str = "margin=0.2 or triplet.margin=0.2") -> dict[str, Any]:
    """`['margin=0.2', 'triplet.lr=1e-4']` -> {'margin': 0.2, 'triplet.lr': 0.0001}; values parsed as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise OodmlError(f"{option} {item!r} is not NAME=VALUE (e.g. {example})")
        key, value = item.split("=", 1)
        out[key.strip()] = _scalar(value.strip(), yaml)
    return out


def _scalar(text: str, yaml: Any) -> Any:
    """Parse a CLI value: int, then float (YAML 1.1 reads '1e-4' as a string), then any YAML scalar."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    value = yaml.safe_load(text)
    return text if isinstance(value, int) and ":" in text else value  # '2:30' is a schedule, not YAML 1.1 base 60


_YAML_KEYS = {
    "dataset", "splits", "features", "method", "shifts", "k", "seeds", "regime", "executor", "address", "workers",
    "results", "force", "device", "method_params", "plugins", "data_root", "dataset_options", "backbone",
}


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a study config; returns raw option values keyed like the CLI options. Unknown keys are an error."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise OodmlError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise OodmlError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise OodmlError(f"config file {str(p)!r} must be a mapping of option names to values")
    unknown = sorted(set(data) - _YAML_KEYS)
    if unknown:
        raise OodmlError(f"config file {str(p)!r} has unknown keys {unknown}; valid keys: {sorted(_YAML_KEYS)}")
    return data


def _as_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def _names(v: Any) -> tuple[str, ...]:
    """Names from a YAML list or a comma-separated string (`a,b` or `[a, b]`); () for None."""
    return tuple(n.strip() for n in _as_text(v).split(",") if n.strip()) if v else ()


def build_run_cfg(options: Mapping[str, Any], config_file: str | Path | None = None) -> RunCfg:
    """Merge a YAML study config with command-line options (those not None win) and validate into a RunCfg."""
    merged: dict[str, Any] = load_yaml_config(config_file) if config_file else {}
    if options.get("method") is not None and merged.get("method_params"):
        merged["method_params"] = _for_methods(_param_map(merged["method_params"]), options["method"],
                                               options.get("plugins") or merged.get("plugins"))
    for k, v in options.items():
        if v is None or (k in ("method_params", "plugins", "dataset_options") and not v):
            continue
        if k == "method_params":  # per name: `--method-param lr=...` on top of a config keeps its other values
            merged[k] = {**_param_map(merged.get(k)), **_param_map(v)}
        elif k == "dataset_options":
            merged[k] = {**dataset_options(merged.get(k)), **dataset_options(v)}
        else:
            merged[k] = v
    methods = merged.get("method")
    if methods is None:
        raise OodmlError("no method given; pass --method NAME[,NAME...] (`oodml list methods` shows all)")
    method_list = _names(methods)
    params = _param_map(merged.get("method_params"))
    ds_opts = dataset_options(merged.get("dataset_options"))
    plugins = _names(merged.get("plugins"))
    kw: dict[str, Any] = dict(
        methods=method_list,
        dataset=merged.get("dataset"),
        splits=merged.get("splits"),
        features=merged.get("features"),
        shifts=parse_int_list(_as_text(merged.get("shifts", "all")), "--shifts", minimum=1, allow_all=True),
        ks=parse_int_list(_as_text(merged.get("k", "0,2,5,10")), "--k", minimum=0),
        seeds=parse_int_list(_as_text(merged.get("seeds", "0..2")), "--seeds", minimum=0),
        regime=str(merged.get("regime", "head")),
        executor=str(merged.get("executor", "local")),
        address=merged.get("address"),
        workers=merged.get("workers"),
        results=str(merged.get("results", "results")),
        force=bool(merged.get("force", False)),
        device=str(merged.get("device", "auto")),
        method_params=dict(params),
        plugins=tuple(plugins),
        data_root=merged.get("data_root"),
        dataset_options=ds_opts,
        backbone=merged.get("backbone"),
    )
    return RunCfg(**kw)


def _for_methods(params: dict[str, Any], methods: Any, plugins: Any) -> dict[str, Any]:
    """A config's method_params restricted to those that apply to the command line's `--method` list."""
    from oodml import methods as methods_api

    methods_api.load_plugins(_names(plugins))
    return methods_api.applicable_params(methods_api.resolve_methods(_names(methods)), params)


def _param_map(value: Any) -> dict[str, Any]:
    """Method hyperparameters from a YAML mapping or `--method-param NAME=VALUE` items ({} for none)."""
    if not value:
        return {}
    if isinstance(value, (list, tuple)):
        return parse_param_overrides(list(value))
    return dict(value)


def dataset_options(value: Any) -> dict[str, Any]:
    """Dataset loader options from a YAML mapping or `--dataset-option NAME=VALUE` items ({} for none)."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        value = [value]
    return parse_param_overrides(list(value), "--dataset-option", "rotations=true")
