"""Files on disk: the oodml cache, memoised checksums, verified downloads and one-time tar extraction."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from oodml.errors import OodmlError
from oodml.progress import log, progress

_CHUNK = 1 << 20


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


def cache_dir() -> Path:
    """The oodml cache: `$OODML_CACHE`, else `~/.cache/oodml`."""
    env = os.environ.get("OODML_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "oodml"


def is_offline() -> bool:
    """True when `OODML_OFFLINE=1` forbids network access."""
    return os.environ.get("OODML_OFFLINE", "") not in ("", "0")


def can_reach(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the host of `url` opens within `timeout` (file:// URLs: the file exists)."""
    parts = urllib.parse.urlparse(url)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path)).is_file()
    if is_offline() or not parts.hostname:
        return False
    port = parts.port or {"https": 443, "http": 80, "ftp": 21}.get(parts.scheme, 443)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


class JsonMemo:
    """A small JSON memo in the cache (e.g. checksums keyed by path, size and mtime); lost writes only cost time."""

    def __init__(self, name: str) -> None:
        self.path = cache_dir() / name
        self._data: dict[str, object] | None = None

    def _load(self) -> dict[str, object]:
        if self._data is None:
            try:
                self._data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._data = {}
        return self._data

    def get(self, key: str) -> object | None:
        """The stored value, or None."""
        return self._load().get(key)

    def put(self, key: str, value: object) -> None:
        """Store a value (atomic file replace)."""
        data = self._load()
        data[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, sort_keys=True))
            tmp.replace(self.path)
        except OSError:
            pass


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def file_digests(path: str | Path) -> dict[str, str]:
    """md5 and sha256 of a file, memoised in the cache by (path, size, mtime)."""
    p = Path(path)
    memo = JsonMemo("digests.json")
    key = _stat_key(p)
    hit = memo.get(key)
    if isinstance(hit, dict):
        return {str(k): str(v) for k, v in hit.items()}
    md5, sha = hashlib.md5(), hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            md5.update(block)
            sha.update(block)
    out = {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}
    memo.put(key, out)
    return out


def files_digest(base: Path, rel_paths: Sequence[str]) -> str:
    """sha256 over the names and bytes of many files under `base`, memoised by their (path, size, mtime) list."""
    stats = hashlib.sha256()
    for rel in rel_paths:
        stats.update(f"{rel}\0{_stat_key(base / rel)}\n".encode())
    memo = JsonMemo("tree_digests.json")
    key = stats.hexdigest()
    hit = memo.get(key)
    if isinstance(hit, str):
        return hit
    h = hashlib.sha256()
    for rel in rel_paths:
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256((base / rel).read_bytes()).digest())
    memo.put(key, h.hexdigest())
    return h.hexdigest()


def download_file(remote: RemoteFile, dest_dir: Path) -> Path:
    """Download `remote` into `dest_dir` and verify its checksums; a mismatch deletes the file and raises OodmlError."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / remote.name
    tmp = dest_dir / f".{remote.name}.{os.getpid()}.part"
    try:
        with urllib.request.urlopen(remote.url, timeout=30) as resp:  # noqa: S310 (official URL from the table)
            total = int(resp.headers.get("Content-Length") or 0) or remote.size
            with tmp.open("wb") as f, progress(f"download {remote.name}", total, unit="B") as p:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(block)
                    p.update(len(block))
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise OodmlError(f"download of {remote.url} failed ({e}); fetch it by hand into {dest_dir}") from None
    digests = file_digests(tmp)
    if not remote.matches(digests):
        tmp.unlink(missing_ok=True)
        raise OodmlError(f"download of {remote.url} has md5 {digests['md5']}, expected {remote.md5}; the server sent "
                         f"a different file (retry later, or fetch it by hand into {dest_dir})")
    tmp.replace(dest)
    return dest


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


def extracted_dir(archive: Path, digest: str) -> Path:
    """Where `extract_tar` puts an archive with this checksum (complete when it holds a `.complete` file)."""
    return cache_dir() / "extracted" / f"{archive.name.split('.')[0]}-{digest[:12]}"


def extract_tar(archive: Path, digest: str) -> Path:
    """Extract a tar archive once into the cache (keyed by its checksum) and return the folder."""
    dest = extracted_dir(archive, digest)
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"extracting {archive} into {dest} (once)")
    try:
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OodmlError(f"archive {archive} is corrupt or truncated ({e}); download it again") from None
    (tmp / ".complete").write_text(str(archive) + "\n")
    if dest.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(dest)
    return dest


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
