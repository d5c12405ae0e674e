"""Grid planning, pure: a RunCfg plus its split file (and the features its rows resolve against) -> cells.

A cell is (dataset, backbone, features, regime, method + params, level, seed) and covers every requested number of
shots, so the source fit runs once per cell and all of its episodes reuse it. Nothing here reads or writes a file:
`oodml.runner.inputs` loads the split file and the features; bad input raises `OodmlError` (exit 2).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oodml.config import RunCfg, canonical_json
from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.ranges import format_int_list
from oodml.splits.levels import ImageIndex, LevelData, resolve_level
from oodml.splits.spec import Level, SplitSpec

#: RunCfg fields that change how a grid runs but never a number in it; left out of a cell's resolved config.
OPERATIONAL_FIELDS = ("executor", "address", "workers", "force", "results")


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method fitted once on one level and seed, evaluated for every number of support images
    per class in `shots` (0: zero-shot)."""

    dataset: str
    backbone: str
    feature_hash: str  # the features the split file was built on (the same features up to rounding may be used)
    regime: str
    method: str
    params_json: str
    level: int
    split_hash: str
    seed: int
    shots: tuple[int, ...]
    queries: int | None = None  # most queries per k-shot episode (RunCfg.queries); None: all
    #: what the source fit depends on besides data and seed (`oodml.methods.fit_identity`); "" = the method itself
    fit_json: str = ""
    #: the content hash of the features used when they are not the split file's own (`feature_hash`), e.g. the same
    #: images embedded on another kind of CPU; "" = the split file's features
    features_used: str = ""

    def _data_key(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "backbone": self.backbone, "feature_hash": self.feature_hash,
                "regime": self.regime, "level": self.level, "split_hash": self.split_hash, "seed": self.seed}

    def key(self) -> dict[str, Any]:
        """The identity of the cell (everything but `shots`): what its fit and its results depend on. `queries`
        and `features_used` enter only when set, so cells that score every query on the split file's own features
        keep the ids they had before these existed, and results on other features never share their identity."""
        return (self._data_key() | {"method": self.method, "method_params": self.params_json}
                | ({"queries": self.queries} if self.queries is not None else {}) | self._used())

    def _used(self) -> dict[str, Any]:
        return {"features_used": self.features_used} if self.features_used else {}

    def fit_key(self) -> dict[str, Any]:
        """What the cell's source fit depends on: the data, the seed and the method's fit identity; cells that
        differ only in adaptation settings, in `queries`, or as `adapted_X` and `X`, share it."""
        fit = self.fit_json or canonical_json({"method": self.method, "params": self.params_json})
        return self._data_key() | {"fit": fit} | self._used()

    def seed_key(self) -> dict[str, Any]:
        """What the cell's seeds derive from: its key without the method and its parameters, so that every method
        of one (level, seed) starts from the same seed, and `adapted_X`, `X` and `X+sec` fit from the same
        initialisation and batches (methods derive their own streams from their base name)."""
        return self._data_key()

    @property
    def cell_id(self) -> str:
        """Stable id: a readable prefix plus a hash of `key()`; names the cell file."""
        return self._id(self.key())

    @property
    def fit_id(self) -> str:
        """The fit-cache entry's name: a readable prefix (the method it fits as) plus a hash of `fit_key()`."""
        name = json.loads(self.fit_json)["method"] if self.fit_json else self.method
        return self._id(self.fit_key(), name)

    def _id(self, key: dict[str, Any], name: str | None = None) -> str:
        digest = hashlib.sha1(canonical_json(key).encode()).hexdigest()[:16]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in (name or self.method))
        return f"{safe}_L{self.level}_s{self.seed}_{digest}"

    @property
    def label(self) -> str:
        """Short human label for progress lines."""
        return f"{self.method} L{self.level} seed {self.seed}"


@dataclass
class Plan:
    """A validated grid: resolved inputs, resolved method parameters and the cells to run."""

    cfg: RunCfg
    dataset: str
    backbone: str
    spec: SplitSpec
    splits_path: Path
    features: FeatureSet
    features_path: Path
    feature_hash: str
    device: str
    methods: list[str]
    params: dict[str, dict[str, Any]]
    families: dict[str, str]
    levels: dict[int, LevelData]
    cells: list[Cell]

    def config_for(self, cell: Cell) -> dict[str, Any]:
        """The full resolved configuration of one cell (the RunCfg narrowed to the cell, paths and hashes filled)."""
        d = self.cfg.to_dict()
        for name in OPERATIONAL_FIELDS:
            d.pop(name, None)
        d.update(
            methods=[cell.method], shifts=[cell.level], seeds=[cell.seed], ks=list(cell.shots),
            dataset=self.dataset, backbone=self.backbone, splits=str(self.splits_path),
            features=str(self.features_path), feature_hash=self.feature_hash, split_hash=cell.split_hash,
            device=self.device, method_params=dict(self.params[cell.method]),
            method_overrides=dict(self.cfg.method_params),
        )
        if self.features.meta.get("pretrained") is False:
            # recorded only for random weights, so that every trained backbone's config (and hash) is unchanged;
            # the report names such a frozen-features row `random_features`, never `pretrained`
            d["backbone_weights"] = "random"
        return d


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; anything else is returned as given."""
    if device != "auto":
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise OodmlError(f"--device {device!r} is not auto, cpu, cuda or cuda:N")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class MethodPlan:
    """The methods of a grid, resolved: names in order, each one's full parameters and family."""

    names: list[str]
    params: dict[str, dict[str, Any]]
    families: dict[str, str]
    fits: dict[str, dict[str, Any]]  # name -> `fit_identity`


def resolve_methods(cfg: RunCfg) -> MethodPlan:
    """Resolve `cfg`'s method names/patterns and parameter overrides (plugins loaded first); OodmlError on a bad
    name or override."""
    from oodml import methods as methods_api

    methods_api.load_plugins(cfg.plugins)
    names = methods_api.resolve_methods(list(cfg.methods))
    methods_api.validate_overrides(names, dict(cfg.method_params))
    params = {m: methods_api.method_params(m, dict(cfg.method_params)) for m in names}
    families = {m: methods_api.method_family(m) for m in names}
    fits = {m: methods_api.fit_identity(m, params[m]) for m in names}
    return MethodPlan(names=names, params=params, families=families, fits=fits)


def build_plan(cfg: RunCfg, methods: MethodPlan, spec: SplitSpec, splits_path: Path, fs: FeatureSet,
               features_path: Path, device: str) -> Plan:
    """Expand a validated grid into cells: `spec` and `fs` are the loaded split file and its features."""
    levels = select_levels(spec, cfg.shifts)
    check_shots(levels, cfg.ks, splits_path)
    check_train_sides(levels, methods.names, splits_path)
    backbone = _backbone(cfg, spec.backbone or fs.backbone)
    index = ImageIndex(fs)
    # every k of the file, not just the requested ones: a resumed cell may extend a stored cell's k
    resolved = {lv.level: resolve_level(fs, index, lv, sorted(int(k) for k in lv.episodes)) for lv in levels}
    # the cells' identity (ids, seeds) names the split file's features, so that the same features recomputed on
    # another kind of CPU (see runner.inputs) give the same cells, fitted from the same seeds
    identity = spec.feature_hash or fs.hash
    used = fs.hash if fs.hash != identity else ""  # ...but the cells' ids and fits tell the two apart
    cells = [
        Cell(dataset=spec.dataset, backbone=backbone, feature_hash=identity, regime=cfg.regime, method=m,
             params_json=canonical_json(methods.params[m]), level=lv, split_hash=resolved[lv].split_hash, seed=s,
             shots=tuple(cfg.ks), queries=cfg.queries,
             fit_json=canonical_json(methods.fits[m]), features_used=used)
        for m in methods.names for lv in resolved for s in cfg.seeds
    ]
    return Plan(cfg=cfg, dataset=spec.dataset, backbone=backbone, spec=spec, splits_path=splits_path, features=fs,
                features_path=features_path, feature_hash=fs.hash, device=device, methods=methods.names,
                params=methods.params, families=methods.families, levels=resolved, cells=cells)


def _backbone(cfg: RunCfg, features_backbone: str) -> str:
    """The cells' backbone: `--backbone` (full regime: the net to train, e.g. conv4 from scratch on the images of a
    pixel-features split), else the split file's."""
    if not cfg.backbone or cfg.backbone == features_backbone:
        return features_backbone
    if cfg.regime != "full":
        raise OodmlError(f"--backbone {cfg.backbone} differs from the features' backbone {features_backbone!r}: the "
                         f"head regime trains on those features; use --regime full to train {cfg.backbone} on the "
                         "images, or make splits from its features")
    from oodml.features.backbones import canonical_backbone

    return canonical_backbone(cfg.backbone)  # an unknown name: OodmlError listing the registered ones


def select_levels(spec: SplitSpec, shifts: Sequence[int] | None) -> list[Level]:
    """The levels `shifts` names (all when None); OodmlError for a level the file lacks."""
    n = len(spec.levels)
    if shifts is None:
        return list(spec.levels)
    beyond = [s for s in shifts if s > n]
    if beyond:
        raise OodmlError(f"--shifts {format_int_list(tuple(shifts))} asks for level(s) "
                         f"{format_int_list(tuple(beyond))}, but the split file has levels 1..{n}; use e.g. "
                         f"--shifts 1..{n} or all")
    return [spec.levels[s - 1] for s in shifts]


def check_shots(levels: Sequence[Level], shots: Sequence[int], splits_path: Path) -> None:
    """Every requested shots value > 0 must have episodes at every chosen level."""
    for k in shots:
        if k == 0:
            continue
        lacking = [lv.level for lv in levels if not lv.episodes.get(str(k))]
        if lacking:
            have = sorted({int(x) for lv in levels for x in lv.episodes})
            raise OodmlError(f"--k {k}: split file {str(splits_path)!r} has no {k}-shot episodes at level(s) "
                             f"{format_int_list(tuple(lacking))}; available k: "
                             f"{', '.join(['0', *map(str, have)])} (rebuild with `oodml make-splits --k ...`)")
        narrow = [(lv.level, e) for lv in levels for e, ep in enumerate(lv.episodes[str(k)]) if len(ep) < 2]
        if narrow:  # a 1-way episode scores 1.0 whatever the embedding, and would enter the mean
            raise OodmlError(f"--k {k}: split file {str(splits_path)!r} level {narrow[0][0]}, episode {narrow[0][1]} "
                             "has fewer than 2 classes; an episode needs at least 2 (rebuild with `oodml make-splits`)")


def check_train_sides(levels: Sequence[Level], methods: Sequence[str], splits_path: Path) -> None:
    """A method that trains needs at least 2 train classes at every chosen level (an empty source side would fit
    on nothing, or crash deep inside a loss)."""
    from oodml.methods import METHODS, parse_spec

    training = [m for m in methods if METHODS.info(parse_spec(m)[0]).trains]
    thin = [lv for lv in levels if len(lv.train_classes) < 2]
    if training and thin:
        lv = thin[0]
        raise OodmlError(f"split file {str(splits_path)!r}: level {lv.level} has {len(lv.train_classes)} train "
                         f"class(es), and {training[0]} trains on them (it needs at least 2); use a method that "
                         "does not train, or other levels (--shifts)")


def describe(plan: Plan, todo: int, skipped: int) -> str:
    """One line summarising the grid for the log."""
    c = plan.cfg
    return (f"run: {len(plan.cells)} cells = {len(plan.methods)} method(s) x {len(plan.levels)} level(s) x "
            f"{len(c.seeds)} seed(s), k={format_int_list(tuple(sorted(c.ks)))}, {plan.dataset}/{plan.backbone}, "
            f"regime {c.regime}, device {plan.device}; skipped {skipped} finished, {todo} remaining")

