"""`folder`: any folder of class sub-folders of images (class = sub-folder name; images found recursively)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oodml.data.base import DATASETS, DatasetInfo, DirSource, ImageDataset, list_images
from oodml.errors import OodmlError


@DATASETS.register(DatasetInfo("folder", "any folder of class sub-folders of images (--data-root DIR)"))
def folder(root: Path) -> ImageDataset:
    """Load `root/<class>/**/<image>`; image ids `<class>/<relative path>`; no conventional split."""
    if not root.is_dir():
        raise OodmlError(f"dataset folder {root} does not exist; pass --data-root DIR holding one sub-folder per class")
    paths: list[str] = []
    labels: list[int] = []
    class_names: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = list_images(sub)
        if images:
            paths += [f"{sub.name}/{i}" for i in images]
            labels += [len(class_names)] * len(images)
            class_names.append(sub.name)
    if not paths:
        raise OodmlError(f"no images in class sub-folders of {root}; expected {root}/<class>/<image>.jpg|png")
    return ImageDataset(name="folder", root=root, paths=paths, labels=np.asarray(labels),
                        class_names=class_names, class_split=None, source=DirSource(root))
