"""Frozen, typed configuration: the only source of truth for a run (docs/architecture.md).

`RunCfg`'s fields state every study-config key once: its name (`method`, `k` and the field names), its type, how a
YAML or command-line value is read, and its default. `build_run_cfg` merges a YAML study config (`--config
FILE.yaml`) with command-line options (those given win), reads every value through its field (a wrong type is one
`OodmlError` naming the key), and validates the result once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodml.errors import OodmlError, check_bounded, check_name
from oodml.ranges import parse_int_list

REGIMES = ("head", "full")
#: where a backbone runs (`oodml.features.runtime.RUNTIMES`, not imported here: it pulls in torch)
RUNTIMES = ("auto", "onnx", "torch")
#: most grid cells a run starts unless `--max-cells` (YAML `max_cells`) allows more
MAX_CELLS = 10_000
#: largest study config file read (a study config is a few hundred bytes)
MAX_CONFIG_BYTES = 1 << 20
#: most values a study config may hold once its YAML aliases are expanded (the shipped ones hold under 100)
MAX_CONFIG_VALUES = 100_000
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _opt(default: Any = None, *, kind: str, key: str | None = None, hashed: bool = True,
         omit_at_default: bool = False, factory: Callable[[], Any] | None = None) -> Any:
    """A RunCfg field: `kind` names its reader in `_READERS`; `key` is its YAML key / CLI option when that differs
    from the field name; `hashed=False` keeps it out of `to_dict` (so out of `cfg_hash` and the result rows): such a
    field decides whether a run starts, never a number in it. `omit_at_default=True` (the metadata of
    `oodml.methods.params.LATER`, for a field added after studies were run): `to_dict` leaves it out while it has its
    default, so the configs, hashes and cell ids of those studies stay what they were."""
    meta = {"kind": kind, "key": key or None, "hashed": hashed, "omit_at_default": omit_at_default}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunCfg:
    """Everything `oodml run` needs. `shifts=None` means every level of the split file."""

    methods: tuple[str, ...] = _opt(kind="names", key="method", factory=tuple)
    dataset: str | None = _opt(kind="name")
    splits: str | None = _opt(kind="path")
    features: str | None = _opt(kind="path")
    shifts: tuple[int, ...] | None = _opt(kind="levels")
    ks: tuple[int, ...] = _opt((0, 2, 5, 10), kind="shots", key="k")
    seeds: tuple[int, ...] = _opt((0, 1, 2), kind="seeds")
    regime: str = _opt("head", kind="text")
    executor: str = _opt("local", kind="text")
    address: str | None = _opt(kind="text")
    workers: int | None = _opt(kind="count")
    results: str = _opt("results", kind="path")
    force: bool = _opt(False, kind="flag")
    device: str = _opt("auto", kind="text")
    method_params: Mapping[str, Any] = _opt(kind="params", factory=dict)
    plugins: tuple[str, ...] = _opt(kind="names", factory=tuple)
    data_root: str | None = _opt(kind="path")
    #: loader options of the dataset (e.g. omniglot rotations=true), for embedding it and for the `full` regime
    dataset_options: Mapping[str, Any] = _opt(kind="options", factory=dict)
    #: the backbone the `full` regime trains (default: the split file's); in `head` it must be the features' backbone
    backbone: str | None = _opt(kind="text")
    #: a grid of more cells is refused (`--seeds 0..100000000` would otherwise run for ever)
    max_cells: int = _opt(MAX_CELLS, kind="count", hashed=False)
    #: where the backbone runs when `run` computes the features (none cached under the split file's feature hash):
    #: `auto`, `onnx` or `torch`, as `embed --runtime`; the features file records the one used (`meta.runtime`) and
    #: the cells its hash, so it stays out of the cells' config
    runtime: str = _opt("auto", kind="text", hashed=False)
    #: a local weights file for the backbone when `run` computes the features (`--backbone-weights`, as `embed`'s);
    #: the features' hash, which the cells record, identifies the result, so it stays out of the cells' config
    backbone_weights: str | None = _opt(kind="path", hashed=False)
    #: most queries per k-shot episode: an episode with more is scored on a random draw of this many, the same for
    #: every method and seed (Scott et al. test each task on a random 10,000 images); None: all of them (docs/formats.md)
    queries: int | None = _opt(kind="count", omit_at_default=True)
    #: Ray resources per cell beyond the defaults (`oodml.runner.executors.cell_resources`), e.g. {"GPU": 0.5}
    ray_resources: Mapping[str, float] = _opt(kind="resources", hashed=False, factory=dict)

    def __post_init__(self) -> None:
        if not self.methods:
            raise OodmlError("no method given; pass --method NAME[,NAME...] (`oodml list methods` shows all)")
        if self.regime not in REGIMES:
            raise OodmlError(f"--regime {self.regime!r} is not one of {', '.join(REGIMES)}")
        if self.workers is not None and self.workers < 1:
            raise OodmlError(f"--workers must be >= 1, got {self.workers}")
        if self.max_cells < 1:
            raise OodmlError(f"--max-cells must be >= 1, got {self.max_cells}")
        if self.queries is not None and self.queries < 1:
            raise OodmlError(f"--queries must be >= 1 (or left out for every query), got {self.queries}")
        if self.backbone_weights and self.regime == "full":
            raise OodmlError("--backbone-weights is for the features of the head regime; the full regime trains the "
                             "backbone from its registered weights")
        if self.runtime not in RUNTIMES:
            raise OodmlError(f"--runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.shifts is not None and any(s < 1 for s in self.shifts):
            raise OodmlError("--shifts values are split levels, numbered from 1")
        if not _DEVICE.fullmatch(self.device):
            raise OodmlError(f"--device {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.address and self.executor == "local":
            raise OodmlError(f"--address {self.address} is for --executor ray; the local executor runs on this "
                             "machine only: drop --address or add --executor ray")
        if self.ray_resources and self.executor != "ray":
            raise OodmlError("--ray-resources is for --executor ray; drop it or add --executor ray")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field that can change a number (not `max_cells`)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("hashed", True)
             and not (f.metadata.get("omit_at_default") and getattr(self, f.name) == f.default)}
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
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:  # a tag (`!!python/...`) or broken YAML: never constructed, one line
        raise OodmlError(f"value {text[:40]!r} is not a plain value ({str(e).splitlines()[0]}); give a number, "
                         "true/false or a name") from None
    return text if isinstance(value, int) and ":" in text else value  # '2:30' is a schedule, not YAML 1.1 base 60


def config_keys() -> dict[str, dataclasses.Field[Any]]:
    """YAML key (= command-line option name with `_` for `-`) -> the RunCfg field it sets."""
    return {f.metadata.get("key") or f.name: f for f in dataclasses.fields(RunCfg)}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(key: str, want: str, value: Any) -> OodmlError:
    return OodmlError(f"config key {key!r} (--{key.replace('_', '-')}) must be {want}, got "
                      f"{type(value).__name__} {_show(value)}")


def _read_text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(key, "a non-empty string", value)
    return value


def _read_name(key: str, value: Any) -> str:
    return check_name(_read_text(key, value), f"config key {key!r}")


def _read_path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _bad(key, "a non-empty path", value)
    return value


def _read_names(key: str, value: Any) -> tuple[str, ...]:
    """Names from a YAML list or a comma-separated string (`a,b` or `[a, b]`)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, str) for v in items):
        raise _bad(key, "a name, a comma-separated string of names or a list of names", value)
    return tuple(n.strip() for n in ",".join(items).split(",") if n.strip())


def _read_count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, "an integer", value)
    return value


def _read_flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, "true or false", value)
    return value


def _int_list_text(key: str, value: Any) -> str:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in items):
        raise _bad(key, "an integer list such as 3, 1,3,5, 1..8 or [1, 2]", value)
    return ",".join(str(v) for v in items)


def _int_reader(minimum: int, allow_all: bool = False) -> Callable[[str, Any, int], tuple[int, ...] | None]:
    def read(key: str, value: Any, limit: int) -> tuple[int, ...] | None:
        return parse_int_list(_int_list_text(key, value), f"--{key}", minimum=minimum, allow_all=allow_all,
                              limit=limit, limit_hint="--max-cells")

    return read


def _read_mapping(key: str, value: Any, option: str, example: str) -> dict[str, Any]:
    """NAME -> value from a YAML mapping, or from `NAME=VALUE` items (a list, or one string)."""
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise _bad(key, "a mapping of names to values", value)
        return dict(value)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise _bad(key, f"a mapping of names to values or a list of NAME=VALUE ({example})", value)
    return parse_param_overrides(list(items), option, example)


def _param_map(value: Any, key: str = "method_params") -> dict[str, Any]:
    """Method hyperparameters from a YAML mapping or `--method-param NAME=VALUE` items ({} for none); a
    non-finite number (`inf`, `.nan`) is refused here, before a cell could compute with it."""
    if value is None:
        return {}
    out = _read_mapping(key, value, "--method-param", "margin=0.2 or triplet.margin=0.2")
    for name, v in out.items():
        if any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, (list, tuple)) else [v])):
            raise OodmlError(f"{key}: {name} = {v!r} is not a finite number; hyperparameters must be finite")
    return out


def dataset_options(value: Any, key: str = "dataset_options") -> dict[str, Any]:
    """Dataset loader options from a YAML mapping or `--dataset-option NAME=VALUE` items ({} for none)."""
    if value is None:
        return {}
    return _read_mapping(key, value, "--dataset-option", "rotations=true")


def _read_resources(key: str, value: Any) -> dict[str, float]:
    """Ray resources per cell from `NAME=AMOUNT,...` (one string or a list) or a YAML mapping: amounts >= 0."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    out = _read_mapping(key, value, "--ray-resources", "GPU=0.5,CPU=2 or a custom resource: fast_disk=1")
    for name, amount in out.items():
        if not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
            raise _bad(key, "NAME=AMOUNT items with a resource name (letters, digits, _ . -)", name)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < float("inf"):
            raise _bad(key, f"a finite amount >= 0 for {name!r}", amount)
    return {name: float(amount) for name, amount in out.items()}


#: how each field kind reads a YAML / command-line value (int lists also take the cap on their length)
_READERS: dict[str, Callable[..., Any]] = {
    "text": _read_text, "name": _read_name, "path": _read_path, "names": _read_names, "count": _read_count,
    "flag": _read_flag, "params": lambda key, v: _param_map(v, key), "options": lambda key, v: dataset_options(v, key),
    "resources": _read_resources, "levels": _int_reader(1, allow_all=True), "shots": _int_reader(0),
    "seeds": _int_reader(0),
}
_INT_LISTS = ("levels", "shots", "seeds")


class _DuplicateKey(Exception):
    """A mapping in a study config repeats a key: args (key, line)."""


def _unique_keys_loader(yaml: Any) -> Any:
    """`yaml.SafeLoader` (no tags that build objects) that raises `_DuplicateKey` for a key given twice in one
    mapping, which PyYAML would otherwise resolve silently to the last value."""

    class UniqueKeys(yaml.SafeLoader):  # type: ignore[misc,name-defined]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    if key_node.value in seen:
                        raise _DuplicateKey(key_node.value, key_node.start_mark.line + 1)
                    seen.add(key_node.value)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeys


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a study config; returns raw option values keyed like the CLI options. Unknown keys are an error, and so
    is a file over MAX_CONFIG_BYTES or one whose aliases expand beyond a study config's size."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise OodmlError(f"config file {str(p)!r} does not exist")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise OodmlError(f"config file {str(p)!r} is {p.stat().st_size:,} bytes; a study config is at most "
                         f"{MAX_CONFIG_BYTES:,}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_unique_keys_loader(yaml)) or {}
    except _DuplicateKey as e:
        raise OodmlError(f"config file {str(p)!r} gives key {e.args[0]!r} twice (line {e.args[1]}); keep one "
                         "(YAML would silently use the last)") from None
    except yaml.YAMLError as e:
        raise OodmlError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    except (RecursionError, UnicodeDecodeError) as e:
        raise OodmlError(f"config file {str(p)!r} cannot be read as YAML ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise OodmlError(f"config file {str(p)!r} must be a mapping of option names to values")
    if "plugin" in data:  # the flag's own name (--plugin) is accepted as well as `plugins:`
        if "plugins" in data:
            raise OodmlError(f"config file {str(p)!r} has both `plugin:` and `plugins:`; keep one (they are the same)")
        data["plugins"] = data.pop("plugin")
    keys = config_keys()
    unknown = sorted(str(k) for k in set(data) - set(keys))
    if unknown:
        raise OodmlError(f"config file {str(p)!r} has unknown keys {unknown}; valid keys: {sorted(keys)}")
    check_bounded(data, f"config file {str(p)!r}", max_nodes=MAX_CONFIG_VALUES)
    return data


def merge_options(options: Mapping[str, Any], config_file: str | Path | None = None) -> dict[str, Any]:
    """A YAML study config overlaid with command-line options (those not None win; `method_params` and
    `dataset_options` merge name by name)."""
    merged: dict[str, Any] = load_yaml_config(config_file) if config_file else {}
    _confirm_plugins(merged.get("plugins"), options.get("plugins"), config_file)
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
    return merged


def _confirm_plugins(from_config: Any, from_cli: Any, config_file: str | Path | None) -> None:
    """A config's `plugins:` are imported only when the command line names the same modules with `--plugin`: a
    config is untrusted input (docs/threat-model.md) and never runs code by itself."""
    if not from_config:
        return
    unconfirmed = [m for m in _read_names("plugins", from_config) if m not in set(from_cli or ())]
    if unconfirmed:
        flags = " ".join(f"--plugin {m}" for m in unconfirmed)
        raise OodmlError(f"config file {str(config_file)!r} lists plugin module(s) {unconfirmed}; a config runs no "
                         f"code by itself: if you trust that code, confirm with {flags} on the command line")


def build_run_cfg(options: Mapping[str, Any], config_file: str | Path | None = None) -> RunCfg:
    """Merge a YAML study config with command-line options (those not None win) and read every value through its
    RunCfg field into a validated RunCfg; a wrong type or a grid over `max_cells` is an OodmlError naming the key."""
    merged = merge_options(options, config_file)
    keys = config_keys()
    unknown = sorted(set(merged) - set(keys))
    if unknown:
        raise OodmlError(f"unknown option(s) {unknown}; valid: {sorted(keys)}")
    if merged.get("method") is None:
        raise OodmlError("no method given; pass --method NAME[,NAME...] (`oodml list methods` shows all)")
    limit = _read_count("max_cells", merged.get("max_cells", MAX_CELLS))
    kw: dict[str, Any] = {}
    for key, f in keys.items():
        if key not in merged:
            continue
        value, kind = merged[key], f.metadata["kind"]
        if value is None:
            if f.default is not None:  # a required value left empty (`results: ~`); optional ones stay None
                raise _bad(key, "given (or the key left out for its default)", value)
            continue
        kw[f.name] = _READERS[kind](key, value, limit) if kind in _INT_LISTS else _READERS[kind](key, value)
    cfg = RunCfg(**kw)
    _check_dataset(cfg)
    _check_grid_bound(cfg)
    _check_cli_method_params(cfg, _param_map(options.get("method_params")))
    if cfg.executor != "ray":  # Ray cells run where Ray puts them (docs/cluster.md): the driver may have no GPU
        require_device(cfg.device)
    return cfg


def grid_size_error(n_cells: int, how: str, max_cells: int) -> OodmlError:
    """The refusal of a grid over `max_cells` (a lower bound `how` is worded by the caller)."""
    return OodmlError(f"the grid has {how}{n_cells:,} cells, more than --max-cells {max_cells:,}; narrow --method, "
                      f"--shifts or --seeds, or confirm with --max-cells {n_cells}")


def check_grid_size(n_cells: int, cfg: RunCfg) -> None:
    """Refuse a planned grid of more than `cfg.max_cells` cells."""
    if n_cells > cfg.max_cells:
        raise grid_size_error(n_cells, "", cfg.max_cells)


def _check_dataset(cfg: RunCfg) -> None:
    """`--dataset` without `--splits` names the split file `splits/<dataset>.json`: when there is none, an
    unregistered name is most likely a typo, reported with the closest registered names."""
    if cfg.dataset and not cfg.splits and not (Path("splits") / f"{cfg.dataset}.json").is_file():
        from oodml.data import DATASETS

        DATASETS.resolve(cfg.dataset)


def _check_grid_bound(cfg: RunCfg) -> None:
    """Refuse early (before the split file is read) when the method x level x seed lists alone exceed the cap."""
    bound = len(cfg.methods) * (len(cfg.shifts) if cfg.shifts else 1) * len(cfg.seeds)
    if bound > cfg.max_cells:
        raise grid_size_error(bound, "at least ", cfg.max_cells)


def _check_cli_method_params(cfg: RunCfg, cli_params: Mapping[str, Any]) -> None:
    """`--method-param m.name=v` must name a method of this run (a config's values for other methods are dropped
    on purpose: the command line chose a subset)."""
    dotted = {k: v for k, v in cli_params.items() if "." in k}
    if not dotted:
        return
    from oodml import methods as methods_api

    methods_api.load_plugins(cfg.plugins)
    specs = methods_api.resolve_methods(list(cfg.methods))
    kept = methods_api.applicable_params(specs, dotted)
    for key in dotted:
        if key not in kept:
            raise OodmlError(f"--method-param {key}=... names method {key.rsplit('.', 1)[0]!r}, which this run does "
                             f"not run (methods: {', '.join(specs)}); drop it or add that method to --method")


def require_device(device: str) -> None:
    """`cuda` / `cuda:N` must be a visible GPU; raises OodmlError before any work otherwise."""
    if not device.startswith("cuda"):
        return
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= n:
        seen = f"{n} CUDA device(s) visible" if n else "no CUDA device is visible (or torch is a CPU build)"
        raise OodmlError(f"--device {device}: {seen}; use --device cpu or auto")


def _for_methods(params: dict[str, Any], methods: Any, plugins: Any) -> dict[str, Any]:
    """A config's method_params restricted to those that apply to the command line's `--method` list."""
    from oodml import methods as methods_api

    methods_api.load_plugins(_read_names("plugins", plugins) if plugins else ())
    return methods_api.applicable_params(methods_api.resolve_methods(_read_names("method", methods)), params)
