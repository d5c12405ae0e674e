"""SplitSpec: the versioned split file (docs/formats.md), written deterministically."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodml.errors import OodmlError, check_name
from oodml.features.io import FeatureSet
from oodml.io import write_text_atomic

SCHEMA_VERSION = 1
FID_DEF = {"of": "class means", "covariance_ddof": 1}


@dataclass
class Level:
    """One rung of the ladder. Class lists are sorted; `episodes[str(k)]` is a list of {class: [k image ids]}."""

    level: int
    fid: float
    train_classes: list[str]
    test_classes: list[str]
    val_classes: list[str] = field(default_factory=list)
    removed_classes: list[str] = field(default_factory=list)
    conventional: bool = False
    episodes: dict[str, list[dict[str, list[str]]]] = field(default_factory=dict)
    episode_excluded: dict[str, list[str]] = field(default_factory=dict)
    #: optional: validation images of train classes, {class: [image ids]} (Scott et al.: images of the source classes
    #: held out for early stopping); `select=val` fits hold these out instead of `val_classes`. Written only when
    #: non-empty, so files without it stay byte-identical.
    val_images: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, keys in the documented order (docs/formats.md)."""
        d: dict[str, Any] = {
            "level": int(self.level),
            "fid": float(self.fid),
            "conventional": bool(self.conventional),
            "train_classes": sorted(self.train_classes),
            "val_classes": sorted(self.val_classes),
            "test_classes": sorted(self.test_classes),
            "removed_classes": sorted(self.removed_classes),
            "episodes": {k: [{c: list(ep[c]) for c in sorted(ep)} for ep in eps]
                         for k, eps in sorted(self.episodes.items(), key=lambda kv: int(kv[0]))},
        }
        if self.episode_excluded:
            d["episode_excluded"] = {k: sorted(v) for k, v in sorted(self.episode_excluded.items(),
                                                                     key=lambda kv: int(kv[0]))}
        if self.val_images:
            d["val_images"] = {c: sorted(self.val_images[c]) for c in sorted(self.val_images)}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Level:
        """Parse one level of a split file; OodmlError naming the first value of a wrong type."""
        if not isinstance(d, dict):
            raise OodmlError(f"a level is a {type(d).__name__}, not an object")
        where = f"level {d.get('level')!r}"
        return cls(
            level=_typed(d.get("level"), int, f"{where}: `level`"), fid=_fid(d.get("fid"), where),
            conventional=_typed(d.get("conventional", False), bool, f"{where}: `conventional`"),
            train_classes=_names(d.get("train_classes"), f"{where}: `train_classes`"),
            val_classes=_names(d.get("val_classes", []), f"{where}: `val_classes`"),
            test_classes=_names(d.get("test_classes"), f"{where}: `test_classes`"),
            removed_classes=_names(d.get("removed_classes", []), f"{where}: `removed_classes`"),
            episodes={_shots(k, where): _episodes(v, f"{where}, k={k}")
                      for k, v in _typed(d.get("episodes", {}), dict, f"{where}: `episodes`").items()},
            episode_excluded={_shots(k, where): _names(v, f"{where}: `episode_excluded` k={k}") for k, v in
                              _typed(d.get("episode_excluded", {}), dict, f"{where}: `episode_excluded`").items()},
            val_images={str(c): _names(v, f"{where}: `val_images` of {c!r}") for c, v in
                        _typed(d.get("val_images", {}), dict, f"{where}: `val_images`").items()},
        )

    def check(self) -> None:
        """Check this level's own invariants (docs/formats.md); OodmlError naming the first violation."""
        i = self.level
        tr, te, rm = set(self.train_classes), set(self.test_classes), set(self.removed_classes)
        if tr & te or tr & rm or te & rm:
            raise OodmlError(f"split file level {i}: train, test and removed classes overlap")
        if not set(self.val_classes) <= tr:
            raise OodmlError(f"split file level {i}: val_classes must be a subset of train_classes")
        if not set(self.val_images) <= tr or self.val_classes and self.val_images:
            raise OodmlError(f"split file level {i}: val_images must name train classes, and a level gives "
                             "val_classes or val_images, not both")
        for k, eps in self.episodes.items():
            for e, episode in enumerate(eps):
                stray = sorted(set(episode) - te)
                if stray:
                    kind = "a train class" if stray[0] in tr else "not a test class"
                    raise OodmlError(f"split file level {i}, k={k}, episode {e}: class {stray[0]!r} is {kind}; "
                                     "episodes may use test classes only (regenerate the split file)")
                for c, ids in episode.items():
                    if len(ids) != int(k) or len(set(ids)) != len(ids):
                        raise OodmlError(f"split file level {i}, k={k}, episode {e}: class {c!r} has "
                                         f"{len(ids)} support image(s) ({len(set(ids))} distinct), not {k}")
        for k, excluded in self.episode_excluded.items():
            if not set(excluded) <= te:
                raise OodmlError(f"split file level {i}: episode_excluded k={k} lists classes that are not test "
                                 "classes")

    def split_hash(self) -> str:
        """sha1 of the level's class partition and episodes: identifies 'which shift' in result rows."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SplitSpec:
    """A ladder of levels for one dataset + backbone + features."""

    dataset: str
    backbone: str
    feature_hash: str
    seed: int
    source: str
    levels: list[Level]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"classes_from": ..., "n_ways": ...}
    schema_version: int = SCHEMA_VERSION

    def validate(self) -> None:
        """Check the split file's invariants (docs/formats.md); raises OodmlError naming the first violation."""
        if self.schema_version != SCHEMA_VERSION:
            raise OodmlError(f"split file schema_version {self.schema_version!r} is not one this oodml reads "
                             f"({SCHEMA_VERSION}); regenerate the file with this version of oodml")
        check_name(self.dataset, "split file `dataset`")
        if not self.levels:
            raise OodmlError("split file has no levels")
        prev = None
        universe: set[str] | None = None
        for i, lv in enumerate(self.levels, start=1):
            if lv.level != i:
                raise OodmlError(f"split file levels must be numbered 1..L in order; found {lv.level} at {i}")
            if prev is not None and not lv.fid > prev:
                raise OodmlError(f"split file level {i} fid {lv.fid} does not exceed level {i - 1}'s {prev}")
            prev = lv.fid
            lv.check()
            classes = set(lv.train_classes) | set(lv.test_classes) | set(lv.removed_classes)
            if universe is not None and classes != universe:
                odd = sorted(classes ^ universe)[0]
                raise OodmlError(f"split file level {i}: class {odd!r} is train, test or removed at one level but "
                                 "not at another; every level must partition the same classes")
            universe = classes
        if sum(lv.conventional for lv in self.levels) > 1:
            raise OodmlError("split file marks more than one level as conventional")

    def level(self, n: int) -> Level:
        """Level `n` (1-based)."""
        if not 1 <= n <= len(self.levels):
            raise OodmlError(f"level {n} is not in the split file (it has levels 1..{len(self.levels)})")
        return self.levels[n - 1]

    def to_dict(self) -> dict[str, Any]:
        """JSON form in the documented key order (docs/formats.md)."""
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "feature_hash": self.feature_hash,
            "seed": int(self.seed),
            "source": self.source,
            "fid": dict(FID_DEF),
        }
        for k in sorted(self.extra):
            d[k] = self.extra[k]
        d["levels"] = [lv.to_dict() for lv in self.levels]
        return d

    def dumps(self) -> str:
        """Deterministic JSON text (same spec -> same bytes)."""
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Validate, then write atomically."""
        self.validate()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(p, self.dumps())

    @classmethod
    def load(cls, path: str | Path) -> SplitSpec:
        """Read and validate a split file; OodmlError (exit 2) when missing or malformed."""
        p = Path(path)
        if p.is_dir():
            raise OodmlError(f"split file {str(p)!r} is a folder; pass a split file (e.g. {str(p / 'NAME.json')!r})")
        if not p.is_file():
            raise OodmlError(f"split file {str(p)!r} does not exist; create it with `oodml make-splits DATASET`")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(d, dict):
                raise TypeError(f"the file holds a {type(d).__name__}, not an object")
            known = {"schema_version", "dataset", "backbone", "feature_hash", "seed", "source", "fid", "levels"}
            spec = cls(
                dataset=_typed(d.get("dataset"), str, "`dataset`"), backbone=str(d.get("backbone", "")),
                feature_hash=str(d.get("feature_hash", "")), seed=_typed(d.get("seed", 0), int, "`seed`"),
                source=str(d.get("source", "")),
                levels=[Level.from_dict(x) for x in _typed(d.get("levels"), list, "`levels`")],
                extra={k: v for k, v in d.items() if k not in known},
                schema_version=_typed(d.get("schema_version"), int, "`schema_version`"),
            )
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, TypeError, ValueError) as e:
            raise OodmlError(f"split file {str(p)!r} is malformed ({type(e).__name__}: {e}); regenerate it") from None
        except OodmlError as e:
            raise OodmlError(f"split file {str(p)!r} is malformed: {e}; regenerate it") from None
        spec.validate()
        return spec


def _typed(value: Any, typ: type, what: str) -> Any:
    """`value` when it is a `typ` (an int is not a bool here), else OodmlError naming `what`."""
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise OodmlError(f"{what} must be {typ.__name__}, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _fid(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OodmlError(f"{where}: `fid` must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def _names(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OodmlError(f"{what} must be a list of names")
    return list(value)


def _shots(key: Any, where: str) -> str:
    if not (isinstance(key, str) and key.isdigit() and int(key) >= 1):
        raise OodmlError(f"{where}: episode key {str(key)[:20]!r} is not a number of shots >= 1")
    return str(int(key))


def _episodes(value: Any, where: str) -> list[dict[str, list[str]]]:
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise OodmlError(f"{where}: episodes must be a list of {{class: [image ids]}}")
    return [{str(c): _names(ids, f"{where}: support of {c!r}") for c, ids in e.items()} for e in value]


#: relative agreement required between a level's recorded FID and the FID recomputed on the split file's own features
FID_TOLERANCE = 1e-6


def check_level_fids(levels: list[Level], fs: FeatureSet, where: str, tolerance: float = FID_TOLERANCE) -> None:
    """Recompute each level's FID on the features the split file names (`fs`); OodmlError when one differs from the
    recorded value by more than `tolerance` (relative): a hand-edited FID must not be reported as the split's."""
    from oodml.splits.frechet import frechet_distance

    index, means = fs.class_index(), fs.class_means()
    for lv in levels:
        if len(lv.train_classes) < 2 or len(lv.test_classes) < 2:
            continue
        rows = [[index.get(c, -1) for c in names] for names in (lv.train_classes, lv.test_classes)]
        if min(min(r) for r in rows) < 0:
            raise OodmlError(f"split file {where}: level {lv.level} names classes that are not in its features file")
        fid = frechet_distance(means[rows[0]], means[rows[1]])
        if abs(fid - lv.fid) > tolerance * max(abs(fid), 1e-12):
            raise OodmlError(f"split file {where}: level {lv.level} records FID {lv.fid:.6g}, but its features give "
                             f"{fid:.6g}; the file was edited or is damaged: regenerate it with `oodml make-splits`")
