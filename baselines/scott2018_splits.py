"""Build the inputs of the Scott et al. (2018, "Adapted Deep Embeddings") studies: a pixel features file and a
one-level split file per target-task shape.

The features file holds the raw 28 x 28 pixels (784-d, scaled to [-1, 1]). The `head`-regime configs
(`baselines/scott2018_{mnist,omniglot_5way,omniglot_20way}.yaml`) train an MLP head (784 -> 512 -> 128) from scratch
on them; the `_conv4` configs train Scott et al.'s kind of net, a conv net from scratch on the images themselves
(`--regime full --backbone conv4`), on the same split files (same classes, tasks and support images).

- `mnist`: source = digits 0-4 (the 60,000-image `train` part), target = digits 5-9 (200 random `t10k` images per
  digit, `--target-per-class`); one level, 5-way episodes with k support images per digit, the other target images
  are the queries.
- `omniglot`: 28 x 28 Omniglot with 90/180/270 degree rotations as extra classes; source = the background
  alphabets (964 x 4 classes), target = the evaluation alphabets (659 x 4); one split file per n (n-way episodes of
  k support images per class, the class's other images are the queries); the level's test classes are the classes
  of the sampled tasks, the other evaluation classes are listed as removed.

The features file goes into the oodml feature cache (found by its hash from the split file), so
`oodml run --config baselines/scott2018_<study>.yaml` needs no `--features`. Same inputs -> byte-identical files.

To rerun the committed studies on a fresh machine, only the features are needed (`--features-only`): the split files
in `splits/` are the reference. They were written before the FID became thread-count independent and free of
rounding-level eigenvalues, so a rebuild gives the same classes, tasks and support images but FIDs that differ in the
9th digit, hence other level hashes, cell ids and seeds.

Paper protocol (`mnist-paper`, `omniglot-paper`; `oodml.splits.scott`, the configs `baselines/scott2018_*_paper.yaml`):
- `mnist-paper`: source = 8,000 training + 3,000 validation images (the level's `val_images`) drawn from digits 0-4 of
  `train` and `t10k` pooled; target = every image of digits 5-9 (both parts); k support images per digit for k in 1,
  5, 10, 50, 100, 500, 1000, `--episodes` draws per k; one level (one source draw). Writes
  `splits/scott2018_mnist_paper.json`.
- `omniglot-paper`: one split file per n in 5, 10, 100, 1000 (`splits/scott2018_omniglot_paper_<n>way.json`), each
  with `--replications` levels: n target classes drawn over all 6,492 rotated classes, n source classes over the
  rest, 15 training + 5 validation images per source class; k in 1, 5, 10, `--episodes` support draws per k.

Usage:
    python baselines/scott2018_splits.py mnist-paper --data-root ../shared/data/mnist --episodes 10
    python baselines/scott2018_splits.py omniglot-paper --data-root ../shared/data/omniglot --replications 10
    python baselines/scott2018_splits.py mnist --data-root ../shared/data/mnist --features-only
    python baselines/scott2018_splits.py omniglot --data-root ../shared/data/omniglot --features-only
    python baselines/scott2018_splits.py mnist --data-root ../shared/data/mnist --episodes 3   # new split files
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from oodml import __version__, seeding
from oodml.data import load_dataset
from oodml.features.cache import feature_cache_dir
from oodml.features.io import FeatureSet
from oodml.progress import log, track
from oodml.splits.episodes import sample_episodes
from oodml.splits.frechet import frechet_distance
from oodml.splits.scott import mnist_source_images, omniglot_replications
from oodml.splits.spec import Level, SplitSpec

SIZE = 28
BACKBONE = "pixels28"
TRANSFORM = "grayscale, bilinear resize to 28x28, x/127.5 - 1, flattened (784-d)"
ROT_K = {"": 0, "90": 1, "180": 2, "270": 3}  # counter-clockwise quarter turns, as oodml's RotatedSource


def _pixels(img: Image.Image) -> np.ndarray:
    """(28, 28) float32 in [-1, 1] of a PIL image."""
    img = img.convert("L")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def pixel_features(dataset: str, data_root: str | Path | None, *, rotations: bool = False,
                   keep: Sequence[str] | None = None) -> FeatureSet:
    """Raw 28 x 28 pixels of a dataset as a FeatureSet (rows sorted by image id).

    Args:
        dataset: registered dataset name (`mnist`, `omniglot`).
        data_root: dataset folder.
        rotations: Omniglot only: add the 90/180/270-degree classes (rotated in numpy from the decoded base image).
        keep: image-id prefixes to keep (e.g. MNIST `train/` or `t10k/`), None for all.
    """
    ds = load_dataset(dataset, data_root, **({"rotations": True} if rotations else {}))
    rows = [i for i, p in enumerate(ds.paths) if keep is None or any(p.startswith(k) for k in keep)]
    base: dict[str, np.ndarray] = {}
    where = {p: i for i, p in enumerate(ds.paths)}
    for i in track(rows, f"{dataset}: decode base images", total=len(rows), unit="img"):
        b, _, _ = ds.paths[i].partition("@rot")
        if b not in base:
            base[b] = _pixels(ds.open(where[b]))
    feats = np.empty((len(rows), SIZE * SIZE), dtype=np.float32)
    for n, i in enumerate(rows):
        b, _, deg = ds.paths[i].partition("@rot")
        feats[n] = np.rot90(base[b], ROT_K[deg]).reshape(-1)
    labels_all = np.asarray(ds.labels[rows], dtype=np.int64)
    used = np.unique(labels_all)
    names = np.array([ds.class_names[c] for c in used])
    labels = np.searchsorted(used, labels_all).astype(np.int64)
    split = None if ds.class_split is None else np.array([ds.class_split[c] for c in used])
    meta = {"dataset": dataset, "backbone": BACKBONE, "transform": TRANSFORM, "dataset_hash": ds.content_hash(),
            "rotations": rotations, "keep": list(keep or [])}
    return FeatureSet(feats, labels, names, np.array([ds.paths[i] for i in rows]), meta, split).sorted()


def cache_features(fs: FeatureSet) -> Path:
    """Save `fs` into the oodml feature cache (where `oodml run` finds it by hash); returns the path."""
    path = feature_cache_dir() / fs.dataset / f"{BACKBONE}-{fs.hash[:20]}.npz"
    if not path.is_file():
        fs.save(path)
    return path


def scott_split(fs: FeatureSet, *, source: Sequence[str], target: Sequence[str], ks: Sequence[int],
                ways: int | None, episodes: int, seed: int, study: str) -> SplitSpec:
    """One level: train on `source`, n-way k-shot episodes over `target` (FID of the two class-mean sets)."""
    target_set = set(target)
    ids: dict[str, list[str]] = {c: [] for c in target}
    for p, lab in zip(fs.paths, fs.labels):
        c = str(fs.class_names[lab])
        if c in target_set:
            ids[c].append(str(p))
    sampled: dict[str, tuple[list[dict[str, list[str]]], list[str]]] = {
        str(k): sample_episodes(ids, k, episodes, key=(study, 1, seed), ways=ways) for k in ks}
    # n-way tasks: the test classes are the classes of the sampled tasks (the other target classes are removed), so
    # that the level's test set, and any search over it, is the size of the tasks and not of the whole target pool
    used = sorted({c for eps, _ in sampled.values() for ep in eps for c in ep}) if ways is not None else sorted(target)
    means = fs.class_means()
    index = fs.class_index()
    fid = frechet_distance(means[[index[c] for c in source]], means[[index[c] for c in used]])
    level = Level(level=1, fid=float(fid), train_classes=sorted(source), test_classes=used,
                  removed_classes=sorted(target_set - set(used)))
    for k, (eps, excluded) in sampled.items():
        level.episodes[k] = eps
        if excluded:
            level.episode_excluded[k] = sorted(set(excluded) & set(used))
    extra = {"protocol": "Scott et al. 2018 (adapted deep embeddings): source classes for training, n-way k-shot "
                         "target tasks on disjoint classes", "study": study, "ways": ways,
             "classes_from": {"features": BACKBONE, "transform": TRANSFORM, "n_classes": len(fs.class_names),
                              "n_images": int(len(fs.labels)), "rotations": bool(fs.meta.get("rotations")),
                              "keep": fs.meta.get("keep", [])}}
    return SplitSpec(dataset=fs.dataset, backbone=BACKBONE, feature_hash=fs.hash, seed=seed,
                     source=f"oodml {__version__} baselines/scott2018_splits.py", levels=[level], extra=extra)


def _ids_by_class(fs: FeatureSet) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {str(c): [] for c in fs.class_names}
    for p, lab in zip(fs.paths, fs.labels):
        ids[str(fs.class_names[lab])].append(str(p))
    return ids


def _fid_fn(fs: FeatureSet) -> Callable[[Sequence[str], Sequence[str]], float]:
    means, index = fs.class_means(), fs.class_index()
    return lambda a, b: float(frechet_distance(means[[index[c] for c in a]], means[[index[c] for c in b]]))


def _extra(fs: FeatureSet, study: str, ways: int | None, **more: object) -> dict[str, object]:
    return {"protocol": "Scott et al. 2018, their task sampling (oodml.splits.scott): one level per replication; "
                        "levels are ordered by FID only because SPEC 3 requires it", "study": study, "ways": ways,
            "classes_from": {"features": BACKBONE, "transform": TRANSFORM, "n_classes": len(fs.class_names),
                             "n_images": int(len(fs.labels)), "rotations": bool(fs.meta.get("rotations")),
                             "keep": fs.meta.get("keep", [])}, **more}


def mnist_paper(data_root: str, *, episodes: int, seed: int, out: Path) -> Path:
    """The MNIST split of Scott et al.'s protocol (see the module docstring); returns the split file's path."""
    study = "scott2018_mnist_paper"
    fs = pixel_features("mnist", data_root, keep=("train/", "t10k/"))
    digit = {str(c): int(c) for c in fs.class_names}
    ids = _ids_by_class(fs)
    train, val = mnist_source_images([i for c in digit if digit[c] < 5 for i in ids[c]], key=(study, seed))
    keep_ids = set(train) | set(val) | {i for c in digit if digit[c] >= 5 for i in ids[c]}
    rows = np.array([i for i, p in enumerate(fs.paths) if str(p) in keep_ids], dtype=np.int64)
    keep = [f"digits 0-4 of train/ and t10k/: 8,000 training + 3,000 validation images (seed {seed})",
            "digits 5-9: every image of train/ and t10k/"]
    fs = FeatureSet(fs.features[rows], fs.labels[rows], fs.class_names, fs.paths[rows], dict(fs.meta, keep=keep),
                    fs.class_split)
    log(f"scott2018: mnist features in {cache_features(fs)}")
    ids = _ids_by_class(fs)
    source = [c for c in digit if digit[c] < 5]
    target = [c for c in digit if digit[c] >= 5]
    val_set = set(val)
    level = Level(level=1, fid=_fid_fn(fs)(source, target), train_classes=source, test_classes=target,
                  val_images={c: [i for i in ids[c] if i in val_set] for c in source})
    for k in (1, 5, 10, 50, 100, 500, 1000):
        level.episodes[str(k)] = sample_episodes({c: ids[c] for c in target}, k, episodes, key=(study, 1, seed))[0]
    spec = SplitSpec(dataset="mnist", backbone=BACKBONE, feature_hash=fs.hash, seed=seed,
                     source=f"oodml {__version__} baselines/scott2018_splits.py mnist-paper", levels=[level],
                     extra=_extra(fs, study, 5))
    return spec.save(out / f"{study}.json")


def omniglot_paper(data_root: str, *, replications: int, episodes: int, seed: int, out: Path) -> list[Path]:
    """The Omniglot split files of Scott et al.'s protocol, one per n (see the module docstring)."""
    fs = pixel_features("omniglot", data_root, rotations=True)
    log(f"scott2018: omniglot features in {cache_features(fs)}")
    ids, fid = _ids_by_class(fs), _fid_fn(fs)
    paths = []
    for n in (5, 10, 100, 1000):
        study = f"scott2018_omniglot_paper_{n}way"
        levels = omniglot_replications(ids, ways=n, ks=(1, 5, 10), replications=replications, episodes=episodes,
                                       fid=fid, key=(study, seed))
        spec = SplitSpec(dataset="omniglot", backbone=BACKBONE, feature_hash=fs.hash, seed=seed,
                         source=f"oodml {__version__} baselines/scott2018_splits.py omniglot-paper", levels=levels,
                         extra=_extra(fs, study, n, replications=replications))
        paths.append(spec.save(out / f"{study}.json"))
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: build the features file and split file(s) of one Scott et al. study."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", choices=("mnist", "omniglot", "mnist-paper", "omniglot-paper"))
    ap.add_argument("--replications", type=int, default=10, help="omniglot-paper: levels (independent draws) per n")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="splits")
    ap.add_argument("--target-per-class", type=int, default=200,
                    help="mnist: t10k images kept per target digit (support + queries); bounds the retrieval cost")
    ap.add_argument("--features-only", action="store_true",
                    help="only write the pixel features into the feature cache (what `oodml run --config "
                         "baselines/scott2018_*.yaml` needs on a fresh machine); leave the split files alone")
    a = ap.parse_args(argv)
    out = Path(a.out_dir)
    if a.dataset == "mnist-paper":
        log(f"scott2018: wrote {mnist_paper(a.data_root, episodes=a.episodes, seed=a.seed, out=out)}")
        return
    if a.dataset == "omniglot-paper":
        for p in omniglot_paper(a.data_root, replications=a.replications, episodes=a.episodes, seed=a.seed, out=out):
            log(f"scott2018: wrote {p}")
        return
    if a.dataset == "mnist":
        fs = pixel_features("mnist", a.data_root, keep=("train/", "t10k/"))
        digit = {str(c): int(c) for c in fs.class_names}
        part = np.array([str(p).split("/")[0] for p in fs.paths])
        src_rows = np.flatnonzero((part == "train") & np.isin(fs.labels, [fs.class_index()[c] for c in digit
                                                                         if digit[c] < 5]))
        tgt_rows = np.flatnonzero((part == "t10k") & np.isin(fs.labels, [fs.class_index()[c] for c in digit
                                                                        if digit[c] >= 5]))
        g = seeding.rng("scott2018_mnist", "targets", a.seed)
        tgt_rows = np.concatenate([np.sort(g.choice(r, min(len(r), a.target_per_class), replace=False))
                                   for r in (tgt_rows[fs.labels[tgt_rows] == c] for c in np.unique(fs.labels[tgt_rows]))])
        rows = np.sort(np.concatenate([src_rows, tgt_rows]))
        keep = ["train/ digits 0-4", f"t10k/ digits 5-9, {a.target_per_class} random images per digit (seed {a.seed})"]
        fs = FeatureSet(fs.features[rows], fs.labels[rows], fs.class_names, fs.paths[rows], dict(fs.meta, keep=keep),
                        fs.class_split)
        log(f"scott2018: mnist features in {cache_features(fs)}")
        if a.features_only:
            return
        spec = scott_split(fs, source=[c for c in digit if digit[c] < 5], target=[c for c in digit if digit[c] >= 5],
                           ks=(1, 5, 10, 50), ways=None, episodes=a.episodes, seed=a.seed, study="scott2018_mnist")
        log(f"scott2018: wrote {spec.save(out / 'scott2018_mnist.json')}")
        return
    fs = pixel_features("omniglot", a.data_root, rotations=True)
    log(f"scott2018: omniglot features in {cache_features(fs)}")
    if a.features_only:
        return
    assert fs.class_split is not None
    source = [str(c) for c, s in zip(fs.class_names, fs.class_split) if s == "train"]
    target = [str(c) for c, s in zip(fs.class_names, fs.class_split) if s == "test"]
    for n in (5, 20):
        spec = scott_split(fs, source=source, target=target, ks=(1, 5, 10), ways=n, episodes=a.episodes,
                           seed=a.seed, study=f"scott2018_omniglot_{n}way")
        log(f"scott2018: wrote {spec.save(out / f'scott2018_omniglot_{n}way.json')}")


if __name__ == "__main__":
    main()
