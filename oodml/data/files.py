"""Dataset files: the official files of a dataset (`RemoteFile`), their verified download and the 'dataset not
found' message. The cache, memoised checksums, downloads and tar extraction themselves live in `oodml.io`
(the names below are aliases kept for the dataset modules)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from oodml.errors import OodmlError
from oodml.io import (JsonMemo, cache_dir, can_reach, download, extract_tar, extracted_dir, file_digests,  # noqa: F401
                      files_digest, is_offline)
from oodml.progress import log

__all__ = ["JsonMemo", "RemoteFile", "cache_dir", "can_reach", "download", "download_file", "extract_tar",
           "extracted_dir", "fetch_official", "file_digests", "files_digest", "is_offline", "note_unofficial", "tar_has"]


@dataclass(frozen=True)
class RemoteFile:
    """One official file of a dataset: its name in the data root, where it is published, and its checksums."""

    name: str
    url: str
    md5: str
    sha256: str | None = None
    size: int | None = None

    def matches(self, digests: dict[str, str]) -> bool:
        """True when `digests` (from `file_digests`) equal the official checksums."""
        if digests["md5"] != self.md5:
            return False
        return self.sha256 is None or digests["sha256"] == self.sha256


def download_file(remote: RemoteFile, dest_dir: Path) -> Path:
    """Download `remote` into `dest_dir` and verify its checksums; a mismatch deletes the file and raises OodmlError."""

    def check(tmp: Path) -> None:
        digests = file_digests(tmp)
        if not remote.matches(digests):
            raise OodmlError(f"download of {remote.url} has md5 {digests['md5']}, expected {remote.md5}; the server "
                             f"sent a different file (retry later, or fetch it by hand into {dest_dir})")

    return download(remote.url, dest_dir / remote.name, size=remote.size, check=check)


def fetch_official(dataset: str, files: Sequence[RemoteFile], root: Path, looked_for: str) -> None:
    """Download the official files of an empty/missing root, or raise the 'dataset not found' OodmlError."""
    how = (f"put {' + '.join(f.name for f in files)} (from {files[0].url}) there, or pass --data-root / set "
           f"OODML_DATA to a folder holding it" if files else "pass --data-root / set OODML_DATA to its folder")
    missing_msg = f"dataset {dataset} not found in {root} (looked for {looked_for}); {how}"
    empty = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    if not files or not empty or not all(can_reach(f.url) for f in files):
        raise OodmlError(missing_msg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OodmlError(f"{missing_msg} (cannot create it to download into: {e.strerror})") from None
    for f in files:
        log(f"{dataset}: downloading {f.url} into {root}")
        download_file(f, root)


_NOTED: set[tuple[str, tuple[str, ...]]] = set()


def note_unofficial(dataset: str, paths: Iterable[Path], official: Sequence[RemoteFile]) -> None:
    """Log one line when local archives are not byte-identical to the official files (their layout was checked);
    once per process, not once per cell that loads the dataset."""
    table = {f.name: f for f in official}
    odd = [p for p in paths if p.name not in table or not table[p.name].matches(file_digests(p))]
    key = (dataset, tuple(str(p.resolve()) for p in odd))
    if odd and key not in _NOTED:
        _NOTED.add(key)
        log(f"note: {dataset}: {', '.join(p.name for p in odd)}: checksum differs from the official file; "
            "the layout is valid, using it")


def tar_has(archive: Path, member: str) -> bool:
    """Whether a tar archive holds `member` (stops reading at the first match)."""
    try:
        with tarfile.open(archive) as tf:
            for info in tf:
                if info.name.rstrip("/") == member or info.name.lstrip("./") == member:
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False
