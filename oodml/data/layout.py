"""Small helpers shared by the loaders: finding archives in a root, reading whitespace tables, layout errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from oodml.data.files import extract_tar, extracted_dir, file_digests, tar_has
from oodml.errors import OodmlError


def archives_in(root: Path, official: str, suffixes: Sequence[str]) -> list[Path]:
    """Archives in `root`: the official file name first, then any other file with one of `suffixes`."""
    if not root.is_dir():
        return []
    others = sorted(p for p in root.iterdir()
                    if p.is_file() and p.name != official and p.name.endswith(tuple(suffixes)))
    first = [root / official] if (root / official).is_file() else []
    return first + others


def extracted_from(archive: Path, marker: str) -> Path | None:
    """The cache folder holding `archive` extracted (extracting it once) if it contains `marker`, else None."""
    digest = file_digests(archive)["sha256"]
    done = extracted_dir(archive, digest)
    if (done / ".complete").is_file():
        return done if (done / marker).exists() else None
    if not tar_has(archive, marker):
        return None
    return extract_tar(archive, digest)


def read_table(path: Path, n_cols: int, header: bool = False) -> list[tuple[str, ...]]:
    """Rows of a whitespace-separated text file (the last column may contain spaces only if n_cols says so)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise OodmlError(f"cannot read {path} ({e.strerror}); the dataset folder is incomplete") from None
    rows = []
    for n, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=n_cols - 1)
        if len(parts) != n_cols:
            raise OodmlError(f"{path}:{n} has {len(parts)} columns, expected {n_cols}; "
                             "the file is not the official one")
        rows.append(tuple(parts))
    return rows


def missing_files_error(dataset: str, base: Path, missing: Sequence[str]) -> OodmlError:
    """The error for a layout whose index lists images that are not there."""
    return OodmlError(f"dataset {dataset}: {len(missing)} listed images are missing under {base} (first: "
                      f"{missing[0]}); extract the complete official archive there")
