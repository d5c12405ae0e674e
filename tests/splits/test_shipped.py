"""The split files shipped in splits/: valid, with their plot, and saying what they were built from."""

from __future__ import annotations

from pathlib import Path

import pytest

from oodml.splits.spec import SplitSpec

SPLITS = Path(__file__).resolve().parents[2] / "splits"
SHIPPED = sorted(SPLITS.glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_split_file_is_valid(path: Path) -> None:
    spec = SplitSpec.load(path)  # validates SPEC §3 invariants
    if spec.source.endswith("make-splits") or spec.source.startswith("ooDML pickle"):  # the CLI writes the plot
        assert path.with_suffix(".png").is_file()
    assert spec.levels and "classes_from" in spec.extra
    every = set(spec.levels[0].train_classes) | set(spec.levels[0].test_classes) | set(spec.levels[0].removed_classes)
    for lv in spec.levels:
        assert set(lv.train_classes) | set(lv.test_classes) | set(lv.removed_classes) == every
        for k, eps in lv.episodes.items():
            excluded = set(lv.episode_excluded.get(k, []))
            for ep in eps:
                assert all(len(set(ids)) == int(k) for ids in ep.values())
                assert set(ep) <= set(lv.test_classes) - excluded


def test_shipped_names_say_what_they_cover() -> None:
    names = {p.stem for p in SHIPPED}
    assert "cars196_oodml" in names
    if "cub200_subset050" in names:
        spec = SplitSpec.load(SPLITS / "cub200_subset050.json")
        src = spec.extra["classes_from"]
        assert src["n_classes"] == 50 and src["last_class"].startswith("050.")
        assert spec.feature_hash and spec.backbone == "efficientnet_lite0"
