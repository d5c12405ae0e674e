"""Grid planning: validate a RunCfg against its split and features files, then expand it into cells.

A cell is (dataset, backbone, features, regime, method + params, level, seed) and covers every requested k, so the
source fit runs once per cell and all of its episodes reuse it. Everything here runs before any file is written:
bad input raises `OodmlError` (exit 2) and leaves the results folder untouched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oodml.config import RunCfg, canonical_json
from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.progress import log
from oodml.ranges import format_int_list
from oodml.splits.frechet import frechet_distance
from oodml.splits.spec import Level, SplitSpec

DEFAULT_DATASET = "cub200"
#: RunCfg fields that change how a grid runs but never a number in it; left out of a cell's resolved config.
OPERATIONAL_FIELDS = ("executor", "address", "workers", "force", "results")


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method fitted once on one level and seed, evaluated for every k in `ks`."""

    dataset: str
    backbone: str
    feature_hash: str  # the features the split file was built on (the same features up to rounding may be used)
    regime: str
    method: str
    params_json: str
    level: int
    split_hash: str
    seed: int
    ks: tuple[int, ...]

    def key(self) -> dict[str, Any]:
        """The identity of the cell (everything but `ks`): what its fit and its results depend on."""
        return {"dataset": self.dataset, "backbone": self.backbone, "feature_hash": self.feature_hash,
                "regime": self.regime, "method": self.method, "method_params": self.params_json,
                "level": self.level, "split_hash": self.split_hash, "seed": self.seed}

    def seed_key(self) -> dict[str, Any]:
        """What the cell's seeds derive from: its key without the method and its parameters, so that every method
        of one (level, seed) starts from the same seed, and `adapted_X`, `X` and `X+sec` fit from the same
        initialisation and batches (methods derive their own streams from their base name)."""
        return {k: v for k, v in self.key().items() if k not in ("method", "method_params")}

    @property
    def cell_id(self) -> str:
        """Stable id: a readable prefix plus a hash of `key()`; names the cell file and the fit-cache entry."""
        digest = hashlib.sha1(canonical_json(self.key()).encode()).hexdigest()[:16]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in self.method)
        return f"{safe}_L{self.level}_s{self.seed}_{digest}"

    @property
    def label(self) -> str:
        """Short human label for progress lines."""
        return f"{self.method} L{self.level} seed {self.seed}"


@dataclass
class LevelData:
    """A split level resolved against the features file: row indices instead of class names and image ids."""

    level: int
    fid: float
    split_hash: str
    train_rows: np.ndarray
    test_rows: np.ndarray
    n_train_classes: int
    n_test_classes: int
    #: k -> one array of support rows per episode; an episode's queries are its classes' other test rows.
    supports: dict[int, list[np.ndarray]] = field(default_factory=dict)


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
            methods=[cell.method], shifts=[cell.level], seeds=[cell.seed], ks=list(cell.ks),
            dataset=self.dataset, backbone=self.backbone, splits=str(self.splits_path),
            features=str(self.features_path), feature_hash=self.feature_hash, split_hash=cell.split_hash,
            device=self.device, method_params=dict(self.params[cell.method]),
            method_overrides=dict(self.cfg.method_params),
        )
        return d


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; anything else is returned as given."""
    if device != "auto":
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise OodmlError(f"--device {device!r} is not auto, cpu, cuda or cuda:N")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def plan_grid(cfg: RunCfg) -> Plan:
    """Validate `cfg` and expand it into cells; raises OodmlError (exit 2) on bad input, writes nothing."""
    from oodml import methods as methods_api

    methods_api.load_plugins(cfg.plugins)
    names = methods_api.resolve_methods(list(cfg.methods))
    methods_api.validate_overrides(names, dict(cfg.method_params))
    params = {m: methods_api.method_params(m, dict(cfg.method_params)) for m in names}
    families = {m: methods_api.method_family(m) for m in names}
    if cfg.executor == "ray":
        from oodml.runner.executors import import_ray

        import_ray()

    dataset, splits_path = _splits_path(cfg)
    spec = SplitSpec.load(splits_path)
    if cfg.dataset and spec.dataset != cfg.dataset:
        raise OodmlError(f"split file {str(splits_path)!r} is for dataset {spec.dataset!r}, not --dataset "
                         f"{cfg.dataset!r}; pass the matching --splits")
    fs, features_path = _load_features(cfg, spec, splits_path)
    fhash = fs.hash
    levels = _select_levels(spec, cfg.shifts)
    if spec.feature_hash and spec.feature_hash != fhash:
        _check_equivalent_features(spec, fs, levels, splits_path, features_path)
    _check_ks(spec, levels, cfg.ks, splits_path)
    backbone = _backbone(cfg, spec.backbone or fs.backbone)
    if cfg.regime == "full":
        _check_full_regime(cfg, spec, fs)
    index = ImageIndex(fs)
    # every k of the file, not just the requested ones: a resumed cell may extend a stored cell's k
    resolved = {lv.level: resolve_level(fs, index, lv, sorted(int(k) for k in lv.episodes)) for lv in levels}
    # the cells' identity (ids, seeds) names the split file's features, so that the same features recomputed on
    # another kind of CPU (see _check_equivalent_features) give the same cells, fitted from the same seeds
    identity = spec.feature_hash or fhash
    cells = [
        Cell(dataset=spec.dataset, backbone=backbone, feature_hash=identity, regime=cfg.regime, method=m,
             params_json=canonical_json(params[m]), level=lv, split_hash=resolved[lv].split_hash, seed=s,
             ks=tuple(cfg.ks))
        for m in names for lv in resolved for s in cfg.seeds
    ]
    return Plan(cfg=cfg, dataset=spec.dataset, backbone=backbone, spec=spec, splits_path=splits_path, features=fs,
                features_path=features_path, feature_hash=fhash, device=resolve_device(cfg.device), methods=names,
                params=params, families=families, levels=resolved, cells=cells)


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


def _splits_path(cfg: RunCfg) -> tuple[str, Path]:
    """(dataset name, split file): --splits, else splits/<dataset>.json with the dataset from --dataset,
    the --features file's meta, or the default."""
    dataset = cfg.dataset
    if dataset is None and cfg.features:
        dataset = FeatureSet.load(cfg.features).dataset or None
    dataset = dataset or DEFAULT_DATASET
    if cfg.splits:
        return dataset, Path(cfg.splits)
    path = Path("splits") / f"{dataset}.json"
    if not path.is_file():
        raise OodmlError(f"no --splits given and {str(path)!r} does not exist; create it with "
                         f"`oodml make-splits {dataset}` or pass --splits FILE.json")
    return dataset, path


def _load_features(cfg: RunCfg, spec: SplitSpec, splits_path: Path) -> tuple[FeatureSet, Path]:
    """--features, else the cached features named by the split file's feature_hash, else computed on demand."""
    if cfg.features:
        return FeatureSet.load(cfg.features), Path(cfg.features)
    from oodml.features.extract import find_cached_features, load_or_compute_features

    cached = find_cached_features(spec.feature_hash) if spec.feature_hash else None
    if cached is not None:
        return FeatureSet.load(cached), Path(cached)
    from oodml.features.backbones import DEFAULT_BACKBONE, canonical_backbone

    backbone = spec.backbone or DEFAULT_BACKBONE
    try:
        canonical_backbone(backbone)
    except OodmlError:
        raise OodmlError(f"split file {str(splits_path)!r} was built on features {spec.feature_hash[:12]}... of "
                         f"backbone {backbone!r}, which are not in the feature cache and which oodml cannot compute "
                         f"({backbone!r} is not a registered backbone); the file was written by {spec.source!r}: "
                         "rebuild the features with it, or pass --features") from None
    fs = load_or_compute_features(spec.dataset, backbone, cfg.data_root, options=cfg.dataset_options)
    path = find_cached_features(fs.hash)
    if path is None:
        raise OodmlError(f"features for split file {str(splits_path)!r} could not be cached; "
                         f"run `oodml embed {spec.dataset} --out F.npz` and pass --features F.npz")
    return fs, Path(path)


FEATURE_FID_TOLERANCE = 1e-4  # relative; recomputing the features on another kind of CPU moves level FIDs by ~1e-7


def _check_equivalent_features(spec: SplitSpec, fs: FeatureSet, levels: Sequence[Level], splits_path: Path,
                               features_path: Path) -> None:
    """Features other than those the split file was built on: go on only when they are the same features up to
    rounding, i.e. they hold every class of the levels and give the levels' recorded FIDs to FEATURE_FID_TOLERANCE.

    That is the case when the same images are embedded by the same backbone on another kind of CPU (its convolution
    kernels round differently: the features differ by ~1e-7 relative, and with them the content hash). Anything
    else (another backbone, other images, a stale split file) is an error, as a hash mismatch always was.
    """
    mismatch = (f"split file {str(splits_path)!r} was built on features {spec.feature_hash[:12]}..., but "
                f"{str(features_path)!r} holds {fs.hash[:12]}...")
    fix = f"pass the matching --features or rebuild the splits with `oodml make-splits --features {features_path}`"
    index = fs.class_index()
    means = fs.class_means()
    worst = 0.0
    for lv in levels:
        absent = [c for c in (*lv.train_classes, *lv.test_classes) if c not in index]
        if absent:
            raise OodmlError(f"{mismatch}, which lack {len(absent)} class(es) of level {lv.level} "
                             f"(e.g. {absent[0]!r}); {fix}")
        if len(lv.train_classes) < 2 or len(lv.test_classes) < 2:
            continue
        fid = frechet_distance(means[[index[c] for c in lv.train_classes]],
                               means[[index[c] for c in lv.test_classes]])
        worst = max(worst, abs(fid - lv.fid) / max(abs(lv.fid), 1e-12))
        if worst > FEATURE_FID_TOLERANCE:
            raise OodmlError(f"{mismatch}, on which level {lv.level} has FID {fid:.6g}, not the file's "
                             f"{lv.fid:.6g}; {fix}")
    where = "another kind of CPU or another runtime (ONNX Runtime / torch)"
    log(f"note: {mismatch}; the same images and backbone computed on {where}, most likely: the level "
        f"FIDs agree to {worst:.1e} (relative), so the run goes on, but its numbers match results made on the split "
        "file's own features only to about that precision, not bit for bit")


def _select_levels(spec: SplitSpec, shifts: Sequence[int] | None) -> list[Level]:
    n = len(spec.levels)
    if shifts is None:
        return list(spec.levels)
    beyond = [s for s in shifts if s > n]
    if beyond:
        raise OodmlError(f"--shifts {format_int_list(tuple(shifts))} asks for level(s) "
                         f"{format_int_list(tuple(beyond))}, but the split file has levels 1..{n}; use e.g. "
                         f"--shifts 1..{n} or all")
    return [spec.levels[s - 1] for s in shifts]


def _check_ks(spec: SplitSpec, levels: Sequence[Level], ks: Sequence[int], splits_path: Path) -> None:
    for k in ks:
        if k == 0:
            continue
        lacking = [lv.level for lv in levels if not lv.episodes.get(str(k))]
        if lacking:
            have = sorted({int(x) for lv in levels for x in lv.episodes})
            raise OodmlError(f"--k {k}: split file {str(splits_path)!r} has no {k}-shot episodes at level(s) "
                             f"{format_int_list(tuple(lacking))}; available k: "
                             f"{', '.join(['0', *map(str, have)])} (rebuild with `oodml make-splits --k ...`)")


def _check_full_regime(cfg: RunCfg, spec: SplitSpec, fs: FeatureSet) -> None:
    """The full regime trains on the images behind the features file's rows: each row's image id must be an image of
    the same class in the dataset under the data root. A features file of part of the images (`embed --classes`, a
    Scott et al. split that keeps some of MNIST's images) is fine."""
    from oodml.data import load_dataset

    ds = load_dataset(spec.dataset, cfg.data_root, **dict(cfg.dataset_options))
    where = {str(p): i for i, p in enumerate(ds.paths)}
    for path, label in zip(fs.paths, fs.labels):
        i = where.get(str(path))
        if i is None:
            raise OodmlError(f"--regime full: image {str(path)!r} of the features file is not among the "
                             f"{spec.dataset} images under {ds.root}; pass --data-root with the dataset the features "
                             "were computed on")
        if ds.class_names[int(ds.labels[i])] != str(fs.class_names[label]):
            raise OodmlError(f"--regime full: image {str(path)!r} is of class {str(fs.class_names[label])!r} in the "
                             f"features file but {ds.class_names[int(ds.labels[i])]!r} under {ds.root}; pass "
                             "--data-root with the dataset the features were computed on")


class ImageIndex:
    """Maps the split file's image ids to feature rows: exact path, else the basename within the id's class."""

    def __init__(self, fs: FeatureSet) -> None:
        self.fs = fs
        self.by_path = {str(p): i for i, p in enumerate(fs.paths)}
        self.class_index = fs.class_index()
        self._by_base: dict[int, dict[str, list[int]]] = {}

    def row(self, image_id: str, cls: str, where: str) -> int:
        """Row of `image_id`, which must be an image of class `cls`; OodmlError naming `where` otherwise."""
        label = self.class_index.get(cls)
        if label is None:
            raise OodmlError(f"split file {where}: class {cls!r} is not in the features file; "
                             f"the split file was built for other features")
        row = self.by_path.get(image_id)
        if row is not None and int(self.fs.labels[row]) == label:
            return row
        if label not in self._by_base:
            table: dict[str, list[int]] = {}
            for r in np.flatnonzero(self.fs.labels == label):
                table.setdefault(os.path.basename(str(self.fs.paths[r])), []).append(int(r))
            self._by_base[label] = table
        found = self._by_base[label].get(os.path.basename(image_id), [])
        if len(found) != 1:
            why = "matches no image" if not found else f"matches {len(found)} images by basename"
            raise OodmlError(f"split file {where}: image id {image_id!r} of class {cls!r} {why} of that class in "
                             f"the features file; rebuild the splits on these features (`oodml make-splits`)")
        return found[0]


def resolve_level(fs: FeatureSet, index: ImageIndex, lv: Level, ks: Sequence[int]) -> LevelData:
    """Resolve one level's classes and the support sets of its k-shot episodes into feature rows."""
    supports: dict[int, list[np.ndarray]] = {}
    for k in ks:
        if k == 0:
            continue
        eps: list[np.ndarray] = []
        for e, episode in enumerate(lv.episodes[str(k)]):
            where = f"level {lv.level}, k={k}, episode {e}"
            rows = [index.row(str(i), c, where) for c in sorted(episode) for i in episode[c]]
            if len(set(rows)) != len(rows):
                raise OodmlError(f"split file {where}: a support image is listed twice; rebuild the splits")
            eps.append(np.asarray(rows, dtype=np.int64))
        supports[k] = eps
    return LevelData(level=lv.level, fid=lv.fid, split_hash=lv.split_hash(),
                     train_rows=fs.select_classes(lv.train_classes), test_rows=fs.select_classes(lv.test_classes),
                     n_train_classes=len(lv.train_classes), n_test_classes=len(lv.test_classes), supports=supports)


def describe(plan: Plan, todo: int, skipped: int) -> str:
    """One line summarising the grid for the log."""
    c = plan.cfg
    return (f"run: {len(plan.cells)} cells = {len(plan.methods)} method(s) x {len(plan.levels)} level(s) x "
            f"{len(c.seeds)} seed(s), k={format_int_list(tuple(sorted(c.ks)))}, {plan.dataset}/{plan.backbone}, "
            f"regime {c.regime}, device {plan.device}; skipped {skipped} finished, {todo} remaining")

