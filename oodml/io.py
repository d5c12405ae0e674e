"""Files on disk: one atomic-write helper (temp file in the same folder, fsync, rename; the temp file is removed on
error), the cleanup of temp files a killed process left behind, the oodml cache (`cache_dir`, memoised checksums,
one-time tar extraction) and the network helpers (reachability, verified downloads).

Temp files are named `.<name>.<pid>.<random>.tmp`, so a later run can tell a dead writer's leftovers from a live
writer's file in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from oodml.errors import OodmlError
from oodml.progress import log, progress

_CHUNK = 1 << 20
TEMP_SUFFIX = ".tmp"
_TEMP_PID = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def temp_path(path: str | Path) -> Path:
    """A fresh temp name beside `path`: `.<name>.<pid>.<random>.tmp`."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write `path` in one step: yields a file object on a temp file in the same folder (its `name` is the temp
    path); on a clean exit the data is flushed, fsynced and renamed over `path`; on an exception the temp file is
    removed and `path` is untouched. The file is created with mode 0666 less the umask (as `open` does).

    Args:
        path: the destination; its folder must exist.
        mode: "w" (text) or "wb" (binary).
        encoding: text encoding (ignored in binary mode).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    final = Path(path)
    tmp = temp_path(final)

    def exclusive(name: str, flags: int) -> int:
        return os.open(name, flags | os.O_EXCL, 0o666)

    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding, opener=exclusive) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`atomic_write` of a whole text (UTF-8); returns `path`."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder in one step: yields a temp folder beside `path`, renamed to `path` on a clean exit (unless
    another process finished `path` first: then the temp folder is dropped) and removed on an exception."""
    final = Path(path)
    tmp = temp_path(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temp files (`*.tmp`) in `folder` whose writer process is gone (or whose name
    carries no writer pid); a live process's file in progress stays. Returns the removed paths."""
    removed: list[Path] = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for p in d.glob(f".*{TEMP_SUFFIX}"):
        m = _TEMP_PID.match(p.name)
        if m is not None and (int(m.group(1)) == os.getpid() or _alive(int(m.group(1)))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            continue
    return removed


# --- the cache ---------------------------------------------------------------------------------------------------


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
            write_text_atomic(self.path, json.dumps(data, sort_keys=True))
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


def extracted_dir(archive: Path, digest: str) -> Path:
    """Where `extract_tar` puts an archive with this checksum (complete when it holds a `.complete` file)."""
    return cache_dir() / "extracted" / f"{archive.name.split('.')[0]}-{digest[:12]}"


def extract_tar(archive: Path, digest: str) -> Path:
    """Extract a tar archive once into the cache (keyed by its checksum) and return the folder."""
    dest = extracted_dir(archive, digest)
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"extracting {archive} into {dest} (once)")
    try:
        with atomic_dir(dest) as tmp:  # another process finishing first wins
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
            (tmp / ".complete").write_text(str(archive) + "\n")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise OodmlError(f"archive {archive} is corrupt or truncated ({e}); download it again") from None
    return dest


# --- network -----------------------------------------------------------------------------------------------------


def download(url: str, dest: Path, *, size: int | None = None, check: Callable[[Path], None] | None = None) -> Path:
    """Download `url` to `dest` in one step (`atomic_write`); `check(temp_path)` may raise to reject the file
    (it is then removed). Network errors raise OodmlError."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(dest, "wb") as f:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (official URL from a dataset table)
                total = int(resp.headers.get("Content-Length") or 0) or size
                with progress(f"download {dest.name}", total, unit="B") as p:
                    for block in iter(lambda: resp.read(_CHUNK), b""):
                        f.write(block)
                        p.update(len(block))
            f.flush()
            if check is not None:
                check(Path(f.name))
    except (urllib.error.URLError, OSError) as e:
        raise OodmlError(f"download of {url} failed ({e}); fetch it by hand into {dest.parent}") from None
    return dest
