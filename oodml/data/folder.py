"""`folder`: any folder of class sub-folders of images (class = sub-folder name; images found recursively).

A folder dataset is named after its folder (`~/photos/birds` is `birds`), or by the loader option `name`
(`--name NAME`), so that its split file (`splits/<name>.json`), cached features and report folder
(`results/<name>/`) never collide with another folder dataset's. A name that is not a registered dataset is read
as a folder dataset of that name (`oodml run --dataset birds` finds `$OODML_DATA/birds` or `--data-root DIR`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from oodml.data.base import DATASETS, DatasetInfo, DirSource, ImageDataset, list_images
from oodml.errors import OodmlError

#: a dataset name: it becomes a file name (`splits/<name>.json`) and a folder name (`results/<name>/`)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def folder_name(root: Path, name: str | None = None) -> str:
    """The dataset name of the folder `root`: `name` when given (checked), else the folder's own name with
    characters outside `[A-Za-z0-9_.-]` replaced by `_`. A registered dataset's name (other than `folder`) is
    refused, so that a folder never shares the split file, features or report of a published dataset."""
    if name is not None:
        if not NAME_PATTERN.fullmatch(name):
            raise OodmlError(f"--name {name!r} is not a usable dataset name; use letters, digits, '_', '.' or '-' "
                             "(at most 64, starting with a letter or digit)")
        chosen, how = name, f"--name {name}"
    else:
        base = root.expanduser().resolve().name
        chosen = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("_.-")[:64] or "folder"
        how = f"the folder {str(root)!r}"
    if chosen != "folder" and chosen in DATASETS.names(include_aliases=True):
        raise OodmlError(f"{how} would name the dataset {chosen!r}, which is a registered dataset; "
                         "pass --name NAME (a new name) for this folder")
    return chosen


@DATASETS.register(DatasetInfo("folder", "any folder of class sub-folders of images (--data-root DIR); named after "
                               "the folder, or --name NAME"))
def folder(root: Path, name: str | None = None) -> ImageDataset:
    """Load `root/<class>/**/<image>`; image ids `<class>/<relative path>`; no conventional split.

    Args:
        root: the folder holding one sub-folder per class.
        name: the dataset's name (default: the folder's name, see `folder_name`).
    """
    if not root.is_dir():
        raise OodmlError(f"dataset folder {root} does not exist; pass --data-root DIR holding one sub-folder per class")
    dataset_name = folder_name(root, name)
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
    return ImageDataset(name=dataset_name, root=root, paths=paths, labels=np.asarray(labels),
                        class_names=class_names, class_split=None, source=DirSource(root))
