"""Datasets: a registry of loaders that read the official layouts, straight from the archive or folder.

`load_dataset(name, root)` returns an `ImageDataset` (sorted image ids, int64 labels, class names as
docs/formats.md describes, conventional split); an unregistered name is a `folder` dataset of that name;
`resolve_root` picks the data root (--data-root, $OODML_DATA/<name>, ~/.cache/oodml/data/<name>).
"""

from oodml.data import cars, cub, folder, mnist, omniglot, sop  # noqa: F401  (each module registers its loaders)
from oodml.data.base import DATASETS, DatasetInfo, ImageDataset, load_dataset, resolve_root

__all__ = ["DATASETS", "DatasetInfo", "ImageDataset", "load_dataset", "resolve_root"]
