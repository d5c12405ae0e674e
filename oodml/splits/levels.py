"""A split level resolved against a features file: class names and image ids become feature rows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.splits.spec import Level


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
    #: shots -> one array of support rows per episode; an episode's queries are its classes' other test rows.
    supports: dict[int, list[np.ndarray]] = field(default_factory=dict)
    #: rows of the level's validation classes, or of its validation images (`val_images`) where it lists them
    #: (subsets of the train rows; held out by `select=val` fits)
    val_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


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


def resolve_level(fs: FeatureSet, index: ImageIndex, lv: Level, shots: Sequence[int]) -> LevelData:
    """Resolve one level's classes and the support sets of its `shots`-shot episodes into feature rows."""
    supports: dict[int, list[np.ndarray]] = {}
    for k in shots:
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
    if lv.val_images:
        val = np.asarray(sorted(index.row(str(i), c, f"level {lv.level}, val_images") for c in sorted(lv.val_images)
                                for i in lv.val_images[c]), dtype=np.int64)
    else:
        val = fs.select_classes(lv.val_classes) if lv.val_classes else np.zeros(0, dtype=np.int64)
    return LevelData(level=lv.level, fid=lv.fid, split_hash=lv.split_hash(),
                     train_rows=fs.select_classes(lv.train_classes), test_rows=fs.select_classes(lv.test_classes),
                     n_train_classes=len(lv.train_classes), n_test_classes=len(lv.test_classes), supports=supports,
                     val_rows=val)
