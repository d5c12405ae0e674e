"""SplitSpec: the versioned split file (SPEC §3), written deterministically."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodml.errors import OodmlError
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

    def to_dict(self) -> dict[str, Any]:
        """JSON form, keys in SPEC order."""
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
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Level:
        """Parse one level of a split file."""
        return cls(
            level=int(d["level"]), fid=float(d["fid"]), conventional=bool(d.get("conventional", False)),
            train_classes=list(d["train_classes"]), val_classes=list(d.get("val_classes", [])),
            test_classes=list(d["test_classes"]), removed_classes=list(d.get("removed_classes", [])),
            episodes={str(k): list(v) for k, v in d.get("episodes", {}).items()},
            episode_excluded={str(k): list(v) for k, v in d.get("episode_excluded", {}).items()},
        )

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
        """Check SPEC §3 invariants; raises OodmlError naming the first violation."""
        prev = None
        for i, lv in enumerate(self.levels, start=1):
            if lv.level != i:
                raise OodmlError(f"split file levels must be numbered 1..L in order; found {lv.level} at {i}")
            if prev is not None and not lv.fid > prev:
                raise OodmlError(f"split file level {i} fid {lv.fid} does not exceed level {i - 1}'s {prev}")
            prev = lv.fid
            tr, te, rm = set(lv.train_classes), set(lv.test_classes), set(lv.removed_classes)
            if tr & te or tr & rm or te & rm:
                raise OodmlError(f"split file level {i}: train, test and removed classes overlap")
            if not set(lv.val_classes) <= tr:
                raise OodmlError(f"split file level {i}: val_classes must be a subset of train_classes")
        if sum(lv.conventional for lv in self.levels) > 1:
            raise OodmlError("split file marks more than one level as conventional")

    def level(self, n: int) -> Level:
        """Level `n` (1-based)."""
        if not 1 <= n <= len(self.levels):
            raise OodmlError(f"level {n} is not in the split file (it has levels 1..{len(self.levels)})")
        return self.levels[n - 1]

    def to_dict(self) -> dict[str, Any]:
        """JSON form in SPEC key order."""
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
        if not p.is_file():
            raise OodmlError(f"split file {str(p)!r} does not exist; create it with `oodml make-splits DATASET`")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            known = {"schema_version", "dataset", "backbone", "feature_hash", "seed", "source", "fid", "levels"}
            spec = cls(
                dataset=str(d["dataset"]), backbone=str(d.get("backbone", "")),
                feature_hash=str(d.get("feature_hash", "")), seed=int(d.get("seed", 0)),
                source=str(d.get("source", "")), levels=[Level.from_dict(x) for x in d["levels"]],
                extra={k: v for k, v in d.items() if k not in known}, schema_version=int(d["schema_version"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise OodmlError(f"split file {str(p)!r} is malformed ({type(e).__name__}: {e}); regenerate it") from None
        spec.validate()
        return spec
