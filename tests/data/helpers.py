"""Tiny image trees for tests: distinct little images, written in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: int = 12, mode: str = "RGB") -> Path:
    """A small random image (content depends on `seed`)."""
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path)
    return path


def write_class_tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    """`root/<class>/img<j><ext>` with `counts[class]` images each."""
    seed = 0
    for cls, n in counts.items():
        for j in range(n):
            write_image(root / cls / f"img{j:02d}{ext}", seed)
            seed += 1
    return root


def isolate(monkeypatch: object, base: Path) -> None:
    """Point the oodml cache at `base` and forbid network access."""
    monkeypatch.setenv("OODML_CACHE", str(base))  # type: ignore[attr-defined]
    monkeypatch.setenv("OODML_OFFLINE", "1")  # type: ignore[attr-defined]
