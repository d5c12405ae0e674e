"""k-shot episodes: per test class, k support image ids drawn from an explicit, key-derived Generator (every sampler takes an explicit numpy Generator)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from oodml import seeding
from oodml.errors import OodmlError


def sample_episodes(class_to_ids: Mapping[str, Sequence[str]], k: int, n_episodes: int, *, key: tuple,
                    ways: int | None = None) -> tuple[list[dict[str, list[str]]], list[str]]:
    """Sample `n_episodes` k-shot episodes over the classes of `class_to_ids`.

    Episode `e` draws from `seeding.rng(*key, k, e)` only, so it stays the same when the number of episodes, the
    list of shots or anything outside `key` changes. An episode maps each of its classes to k distinct image ids
    (sorted); the class's other images are its queries. A class with fewer than k + 1 images cannot have a query
    and is excluded.

    Args:
        class_to_ids: class name -> its image ids.
        k: support images per class (≥ 1).
        n_episodes: number of episodes.
        key: seed key, e.g. (dataset, level, seed); the episode uses (*key, k, episode).
        ways: classes per episode, sampled from the eligible ones (None: every eligible class).

    Returns:
        (episodes, excluded classes), both with classes in sorted order.
    """
    if k < 1 or n_episodes < 0:
        raise OodmlError(f"episodes need k >= 1 and a non-negative count; got k={k}, episodes={n_episodes}")
    ids = {str(c): sorted(str(i) for i in v) for c, v in class_to_ids.items()}
    excluded = sorted(c for c, v in ids.items() if len(v) < k + 1)
    eligible = sorted(c for c, v in ids.items() if len(v) >= k + 1)
    if ways is not None and ways > len(eligible):
        raise OodmlError(f"--ways {ways} exceeds the {len(eligible)} test classes with at least {k + 1} images "
                         f"(key {key}); lower --ways or --k")
    episodes: list[dict[str, list[str]]] = []
    for e in range(n_episodes):
        g = seeding.rng(*key, k, e)
        classes = eligible if ways is None else sorted(eligible[i] for i in g.choice(len(eligible), ways,
                                                                                      replace=False))
        episodes.append({c: sorted(ids[c][i] for i in g.choice(len(ids[c]), k, replace=False)) for c in classes})
    return episodes, excluded
