"""Scott et al. (2018, "Adapted Deep Embeddings") task sampling, as their data readers do it.

Read from tylersco/adapted_deep_embeddings `data/omniglot/read_omniglot.py`, `data/mnist/read_mnist.py` and
`run_model.py` (`kntl_data_form`):
- Omniglot: the n target classes are drawn at random over *all* classes, rotations included (1,623 x 4 = 6,492),
  then n source classes at random over the rest (`kntl_data_form(t1_classes=n, k, n)`); each source class keeps 15
  random images for training and its other 5 for validation (early stopping); each target class gives k random
  support images and its other 20 - k images are the test queries. One draw per replication.
- MNIST: source = digits 0-4 of train and test pooled; a random 3,000 of them for validation and the next 8,000 for
  training; target = digits 5-9 pooled, k random support images per digit.

A replication is one split level here (its own source and target classes, validation images and support sets);
levels are numbered by increasing FID as the split file requires (docs/formats.md), so their order carries no meaning of its own. Every draw
comes from a Generator derived from an explicit key (every sampler takes an explicit numpy Generator).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from oodml import seeding
from oodml.errors import OodmlError
from oodml.splits.episodes import sample_episodes
from oodml.splits.spec import Level

#: Scott et al.'s Omniglot source split: images per source class for training (the others validate)
OMNIGLOT_TRAIN_PER_CLASS = 15
#: Scott et al.'s MNIST source sizes (`--t1_train 8000 --t1_valid 3000` in their trained_models/*/opts.txt)
MNIST_TRAIN, MNIST_VALID = 8000, 3000

FidFn = Callable[[Sequence[str], Sequence[str]], float]


def _sorted_ids(ids: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    return {str(c): sorted(str(i) for i in v) for c, v in ids.items()}


def _numbered(levels: list[Level]) -> list[Level]:
    """Levels sorted by FID and numbered 1..L (docs/formats.md); OodmlError when two draws tie (FID must increase)."""
    levels = sorted(levels, key=lambda lv: lv.fid)
    if any(a.fid >= b.fid for a, b in zip(levels, levels[1:])):
        raise OodmlError("two replications have the same FID; draw again with another seed")
    for i, lv in enumerate(levels, 1):
        lv.level = i
    return levels


def omniglot_replications(class_to_ids: Mapping[str, Sequence[str]], *, ways: int, ks: Sequence[int],
                          replications: int, episodes: int, fid: FidFn, key: tuple,
                          train_per_class: int = OMNIGLOT_TRAIN_PER_CLASS) -> list[Level]:
    """One level per replication: n target classes at random over all classes, n source classes from the rest.

    Args:
        class_to_ids: every class (rotations included) -> its image ids.
        ways: n, the number of target classes (and, as in their code, of source classes).
        ks: shots; `episodes` support draws per k over the level's target classes (their code: one).
        replications: number of independent draws (levels).
        episodes: support draws per k and level; the queries of a draw are the target images outside its support.
        fid: FID of (source classes, target classes), recorded as the level's `fid`.
        key: seed key, e.g. (study, seed); replication r draws from (*key, "replication", r).
        train_per_class: source images per class used for training; the class's others are `val_images`.
    """
    ids = _sorted_ids(class_to_ids)
    names = sorted(ids)
    if 2 * ways > len(names):
        raise OodmlError(f"{ways}-way tasks need {2 * ways} classes (n target + n source); there are {len(names)}")
    levels = []
    for r in range(replications):
        g = seeding.rng(*key, "replication", r)
        target = sorted(names[i] for i in g.choice(len(names), ways, replace=False))
        rest = sorted(set(names) - set(target))
        source = sorted(rest[i] for i in g.choice(len(rest), ways, replace=False))
        val: dict[str, list[str]] = {}
        for c in source:
            if len(ids[c]) <= train_per_class:
                raise OodmlError(f"class {c!r} has {len(ids[c])} images; Scott et al.'s split needs more than "
                                 f"{train_per_class}")
            keep = set(g.choice(len(ids[c]), train_per_class, replace=False).tolist())
            val[c] = [i for j, i in enumerate(ids[c]) if j not in keep]
        lv = Level(level=0, fid=float(fid(source, target)), train_classes=source, test_classes=target,
                   removed_classes=sorted(set(rest) - set(source)), val_images=val)
        for k in ks:
            eps, excluded = sample_episodes({c: ids[c] for c in target}, k, episodes, key=(*key, "replication", r))
            lv.episodes[str(k)] = eps
            if excluded:
                lv.episode_excluded[str(k)] = excluded
        levels.append(lv)
    return _numbered(levels)


def mnist_source_images(source_ids: Sequence[str], *, key: tuple, n_train: int = MNIST_TRAIN,
                        n_valid: int = MNIST_VALID) -> tuple[list[str], list[str]]:
    """(training ids, validation ids): a random `n_valid` of the pooled source images, then the next `n_train`."""
    ids = sorted(str(i) for i in source_ids)
    if n_train + n_valid > len(ids):
        raise OodmlError(f"the source has {len(ids)} images, fewer than {n_train} + {n_valid}")
    order = seeding.rng(*key, "source").permutation(len(ids))
    return sorted(ids[i] for i in order[n_valid:n_valid + n_train]), sorted(ids[i] for i in order[:n_valid])
