"""On-disk feature cache: `<cache>/features/<dataset>/<backbone>-<key>.npz`, keyed by dataset content + backbone +
transform + runtime (`$OODML_CACHE`, else `~/.cache/oodml`)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from oodml.errors import OodmlError
from oodml.features.io import check_npz
from oodml.io import cache_dir
from oodml.progress import log

#: Bump when the extraction procedure changes in a way that changes features (2: chunked forward pass).
EXTRACT_VERSION = 2


def feature_cache_dir() -> Path:
    """Folder of cached features files."""
    return cache_dir() / "features"


def cache_key(dataset_hash: str, backbone: str, weights: str, transform: str, runtime: str = "torch") -> str:
    """sha256 (first 20 hex digits) of what determines the features.

    The runtime that ran the backbone is part of the key (torch and ONNX Runtime features differ by rounding); torch
    keeps the key it had before runtimes existed, so features cached then stay valid."""
    parts: list[object] = [EXTRACT_VERSION, dataset_hash, backbone, weights, transform]
    text = json.dumps(parts if runtime == "torch" else [*parts, runtime])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_path(dataset: str, backbone: str, key: str) -> Path:
    """Where the features for a cache key live."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone)
    return feature_cache_dir() / dataset / f"{safe}-{key}.npz"


def read_meta(path: Path) -> dict[str, object]:
    """The `meta` JSON of a features file without loading its arrays ({} when unreadable: a file that is no .npz or
    whose array headers claim more than it holds is skipped with a note, and computed again where it is needed)."""
    try:
        check_npz(path, "cached features file")
    except OodmlError as e:
        log(f"note: {e}; skipped")
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return dict(json.loads(str(z["meta"])))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return {}


def find_cached_features(feature_hash: str) -> Path | None:
    """The cached features file whose `meta.feature_hash` equals `feature_hash`, or None."""
    root = feature_cache_dir()
    if not root.is_dir():
        return None
    for path in sorted(root.glob("*/*.npz")):
        if read_meta(path).get("feature_hash") == feature_hash:
            return path
    return None
