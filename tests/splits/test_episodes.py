"""k-shot episodes: sizes, class membership, disjoint support/query, seeding by key and episode index."""

from __future__ import annotations

import pytest

from oodml.errors import OodmlError
from oodml.splits.episodes import sample_episodes

CLASSES = {f"c{i}": [f"c{i}/img{j:02d}.jpg" for j in range(4 + i)] for i in range(8)}  # 4..11 images


def test_exact_k_distinct_ids_of_that_class_and_disjoint_queries() -> None:
    eps, excluded = sample_episodes(CLASSES, 3, 6, key=("ds", 1, 0))
    assert excluded == [] and len(eps) == 6
    for ep in eps:
        assert sorted(ep) == sorted(CLASSES)
        for cls, support in ep.items():
            assert len(support) == 3 == len(set(support)) and set(support) <= set(CLASSES[cls])
            queries = set(CLASSES[cls]) - set(support)
            assert queries and not queries & set(support)
            assert support == sorted(support)


def test_classes_without_a_query_are_excluded() -> None:
    eps, excluded = sample_episodes(CLASSES, 5, 2, key=("ds", 1, 0))
    assert excluded == ["c0", "c1"]  # 4 and 5 images: no query left after 5 support images
    assert all(sorted(ep) == [f"c{i}" for i in range(2, 8)] for ep in eps)


def test_same_key_same_ids_other_key_or_episode_other_ids() -> None:
    a, _ = sample_episodes(CLASSES, 2, 4, key=("ds", 3, 0))
    assert a == sample_episodes(CLASSES, 2, 4, key=("ds", 3, 0))[0]
    assert a != sample_episodes(CLASSES, 2, 4, key=("ds", 3, 1))[0]  # other seed
    assert a != sample_episodes(CLASSES, 2, 4, key=("ds", 4, 0))[0]  # other level
    assert a[0] != a[1]  # episodes differ from each other
    assert sample_episodes(CLASSES, 2, 9, key=("ds", 3, 0))[0][:4] == a  # more episodes: the first ones unchanged


def test_ways_picks_that_many_classes() -> None:
    eps, _ = sample_episodes(CLASSES, 1, 20, key=("ds", 1, 0), ways=3)
    assert all(len(ep) == 3 for ep in eps)
    assert len({tuple(ep) for ep in eps}) > 1  # the class subsets vary across episodes
    with pytest.raises(OodmlError, match="--ways 9 exceeds the 8"):
        sample_episodes(CLASSES, 1, 1, key=("ds", 1, 0), ways=9)


def test_bad_k_is_a_user_error() -> None:
    with pytest.raises(OodmlError, match="k >= 1"):
        sample_episodes(CLASSES, 0, 1, key=("ds",))
