import json
from pathlib import Path

import pytest

from oodml.errors import OodmlError
from oodml.splits.spec import Level, SplitSpec


def spec() -> SplitSpec:
    return SplitSpec(
        dataset="d", backbone="b", feature_hash="h", seed=0, source="test",
        levels=[
            Level(1, 1.5, ["b", "a"], ["c"], val_classes=["a"], conventional=True,
                  episodes={"2": [{"c": ["c/1", "c/2"]}]}),
            Level(2, 3.0, ["a"], ["c"], removed_classes=["b"]),
        ],
    )


def test_roundtrip_is_byte_identical(tmp_path: Path) -> None:
    p = spec().save(tmp_path / "s.json")
    text = p.read_text()
    again = SplitSpec.load(p).save(tmp_path / "t.json").read_text()
    assert text == again
    d = json.loads(text)
    assert list(d)[:7] == ["schema_version", "dataset", "backbone", "feature_hash", "seed", "source", "fid"]
    assert d["levels"][0]["train_classes"] == ["a", "b"]


@pytest.mark.parametrize("mutate,msg", [
    (lambda s: setattr(s.levels[1], "fid", 1.0), "does not exceed"),
    (lambda s: s.levels[1].test_classes.append("a"), "overlap"),
    (lambda s: s.levels[0].val_classes.append("z"), "subset"),
    (lambda s: setattr(s.levels[1], "conventional", True), "more than one"),
    (lambda s: setattr(s.levels[1], "level", 5), "numbered"),
])
def test_validation(mutate, msg: str) -> None:  # type: ignore[no-untyped-def]
    s = spec()
    mutate(s)
    with pytest.raises(OodmlError, match=msg):
        s.validate()


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(OodmlError, match="does not exist"):
        SplitSpec.load(tmp_path / "x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(OodmlError, match="malformed"):
        SplitSpec.load(bad)
    with pytest.raises(OodmlError, match="levels 1..2"):
        spec().level(3)
