"""The grid's inputs: the split file and the features it names, loaded and checked against each other.

This is the runner's only reading step before planning: `load_inputs(cfg)` reads the split file, loads (or computes
and caches) the features, and checks that they match; bad input raises `OodmlError` (exit 2), nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oodml.config import RunCfg
from oodml.errors import OodmlError, check_writable
from oodml.features.io import FeatureSet
from oodml.progress import log
from oodml.splits.frechet import frechet_distance
from oodml.splits.spec import Level, SplitSpec, check_level_fids

DEFAULT_DATASET = "cub200"
FEATURE_FID_TOLERANCE = 1e-4  # relative; recomputing the features on another kind of CPU moves level FIDs by ~1e-7


@dataclass(frozen=True)
class GridInputs:
    """A split file and the features its rows resolve against."""

    spec: SplitSpec
    splits_path: Path
    features: FeatureSet
    features_path: Path


def load_inputs(cfg: RunCfg, levels: Sequence[Level] | None = None) -> GridInputs:
    """Read the split file and its features and check them against each other (the `levels` to be run, default:
    the levels `cfg.shifts` selects); `check_full_regime` checks the images behind them."""
    from oodml.runner.plan import select_levels

    _, splits_path = splits_path_for(cfg)
    spec = SplitSpec.load(splits_path)
    if cfg.dataset and spec.dataset != cfg.dataset:
        raise OodmlError(f"split file {str(splits_path)!r} is for dataset {spec.dataset!r}, not --dataset "
                         f"{cfg.dataset!r}; pass the matching --splits")
    if cfg.dataset_options:  # checked here too: a run on features reads no image, and would ignore them silently
        from oodml.data import DATASETS
        from oodml.data.base import check_loader_options

        known = spec.dataset in DATASETS.names(include_aliases=True)
        check_loader_options(DATASETS.resolve(spec.dataset if known else "folder"), cfg.dataset_options)
    fs, features_path = _load_features(cfg, spec, splits_path)
    chosen = select_levels(spec, cfg.shifts) if levels is None else list(levels)
    if spec.feature_hash and spec.feature_hash != fs.hash:
        _check_equivalent_features(spec, fs, chosen, splits_path, features_path)
    elif spec.feature_hash:
        check_level_fids(chosen, fs, str(splits_path))
    check_coverage(fs, chosen, splits_path, features_path)
    return GridInputs(spec=spec, splits_path=splits_path, features=fs, features_path=features_path)


def splits_path_for(cfg: RunCfg) -> tuple[str, Path]:
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
        try:
            return FeatureSet.load(cached), Path(cached)
        except OodmlError as e:  # a damaged or planted cache entry must not fail every later run
            log(f"note: cached features {str(cached)!r} cannot be used ({e}); skipped, computing them again")
    from oodml.features.backbones import DEFAULT_BACKBONE, canonical_backbone

    backbone = spec.backbone or DEFAULT_BACKBONE
    try:
        canonical_backbone(backbone)
    except OodmlError:
        raise OodmlError(f"split file {str(splits_path)!r} was built on features {spec.feature_hash[:12]}... of "
                         f"backbone {backbone!r}, which are not in the feature cache and which oodml cannot compute "
                         f"({backbone!r} is not a registered backbone); the file was written by {spec.source!r}: "
                         "rebuild the features with it, or pass --features") from None
    from oodml.data.files import cache_dir

    check_writable(cache_dir(), "the oodml cache ($OODML_CACHE), where the features will be computed,")
    fs = load_or_compute_features(spec.dataset, backbone, cfg.data_root, options=cfg.dataset_options,
                                  runtime=cfg.runtime, weights=cfg.backbone_weights)
    path = find_cached_features(fs.hash)
    if path is None:
        raise OodmlError(f"features for split file {str(splits_path)!r} could not be cached; "
                         f"run `oodml embed {spec.dataset} --out F.npz` and pass --features F.npz")
    return fs, Path(path)


def check_coverage(fs: FeatureSet, levels: Sequence[Level], splits_path: Path, features_path: Path) -> None:
    """Every image id the chosen levels' episodes and validation images name must be an image of its class in the
    features (renamed or foreign image ids are an error that says how many are missing, not a run on other
    images)."""
    from oodml.splits.levels import ImageIndex

    index = ImageIndex(fs)
    wanted = {(c, str(i)) for lv in levels for eps in lv.episodes.values() for ep in eps for c, ids in ep.items()
              for i in ids} | {(c, str(i)) for lv in levels for c, ids in lv.val_images.items() for i in ids}
    missing = []
    for c, i in sorted(wanted):
        try:
            index.row(i, c, "")
        except OodmlError:
            missing.append((c, i))
    if missing:
        c, i = missing[0]
        raise OodmlError(f"features file {str(features_path)!r} lacks {len(missing):,} of the {len(wanted):,} image "
                         f"ids that split file {str(splits_path)!r} uses at the chosen levels (e.g. {i!r} of class "
                         f"{c!r}): they are other images; pass the features the split file was built on, or rebuild "
                         "the splits on these (`oodml make-splits --features ...`)")


def _check_equivalent_features(spec: SplitSpec, fs: FeatureSet, levels: Sequence[Level], splits_path: Path,
                               features_path: Path) -> None:
    """Features other than those the split file was built on: go on only when they are the same features up to
    rounding, i.e. they hold every class of the levels and give the levels' recorded FIDs to FEATURE_FID_TOLERANCE.

    That is the case when the same images are embedded by the same backbone on another kind of CPU (its convolution
    kernels round differently: the features differ by ~1e-7 relative, and with them the content hash). Anything
    else (another backbone, other images, a stale split file) is an error.
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
    _check_against_own(spec, fs, mismatch, fix)
    where = "another kind of CPU or another runtime (ONNX Runtime / torch)"
    log(f"note: {mismatch}; the same images and backbone computed on {where}, most likely: the level "
        f"FIDs agree to {worst:.1e} (relative), so the run goes on, but its numbers match results made on the split "
        "file's own features only to about that precision, not bit for bit: its cells carry these features' hash in "
        "their ids and are stored beside, never in place of, cells on the split file's own features")


#: relative distance between an image's feature row and the split file's own row above which they are other images
ROW_TOLERANCE = 1e-3


def _check_against_own(spec: SplitSpec, fs: FeatureSet, mismatch: str, fix: str) -> None:
    """When the split file's own features are in the feature cache, every image both files hold must have the same
    row up to rounding (`ROW_TOLERANCE`): image ids renamed or shuffled within their classes keep every class mean
    (and so every FID), and only a row-by-row comparison tells them apart."""
    from oodml.features.extract import find_cached_features

    cached = find_cached_features(spec.feature_hash)
    if cached is None:
        return
    try:
        own = FeatureSet.load(cached)
    except OodmlError:
        return
    rows = {str(p): i for i, p in enumerate(own.paths)}
    pairs = [(i, rows[str(p)]) for i, p in enumerate(fs.paths) if str(p) in rows]
    if not pairs:
        return
    mine, theirs = (np.asarray(x, dtype=np.int64) for x in zip(*pairs))
    a, b = fs.features[mine].astype(np.float64), own.features[theirs].astype(np.float64)
    far = np.linalg.norm(a - b, axis=1) > ROW_TOLERANCE * np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    if far.any():
        raise OodmlError(f"{mismatch}: the features of {int(far.sum()):,} of {len(pairs):,} images differ from the "
                         f"split file's own (cached in {str(cached)!r}) by more than rounding, e.g. "
                         f"{str(fs.paths[mine[far][0]])!r} (image ids renamed or shuffled?); {fix}")


def check_full_regime(cfg: RunCfg, spec: SplitSpec, fs: FeatureSet) -> None:
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
