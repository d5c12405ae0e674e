"""Files on disk: one atomic-write helper (temp file in the same folder, fsync, rename; the temp file is removed on
error; a destination that is a symbolic link is refused), paths inside a folder that refuse names from data that are
not one path component and links on the way (`safe_name`, `safe_path`), a lock on a folder (`folder_lock`), the
cleanup of temp files a killed process left behind, the oodml cache (`cache_dir`, memoised checksums, one-time tar
extraction) and the network helpers (reachability, verified downloads).

Temp files are named `.<name>.<pid>.<random>.tmp`, so a later run can tell a dead writer's leftovers from a live
writer's file in progress.
"""

from __future__ import annotations

import errno
import fcntl
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


#: characters a file name built from data keeps; every other one becomes `_`
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.@+=\[\]-]")
_MAX_NAME = 120


def safe_name(name: str) -> str:
    """A name built from data (a metric, method or series label) as one harmless path component: characters other
    than letters, digits and `_ . @ + = [ ] -` become `_`, `..` becomes `__`, a leading `.` becomes `_`, and a name
    over 120 characters is cut and given a hash of the whole name (so distinct names stay distinct)."""
    out = _UNSAFE_CHARS.sub("_", str(name)).replace("..", "__")
    if not out or out.startswith("."):
        out = "_" + out
    if len(out) > _MAX_NAME:
        out = out[:_MAX_NAME - 13] + "-" + hashlib.sha1(str(name).encode()).hexdigest()[:12]
    return out


def _link_error(path: Path, root: Path) -> OodmlError:
    return OodmlError(f"{str(path)!r} is a symbolic link inside {str(root)!r}; oodml does not write through links "
                      "below a destination (a shared folder could point them anywhere): remove the link and rerun")


def safe_path(root: str | Path, *parts: str) -> Path:
    """`root / parts...` for writing: each part must be one path component (no `/`, not `.` or `..`; pass names
    from data through `safe_name` first), and no existing component below `root` may be a symbolic link, so the
    path stays inside `root` (`root` itself may be a link: the user named it). OodmlError otherwise."""
    base = Path(root)
    path = base
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\0" in part or os.sep in part:
            raise OodmlError(f"{part!r} is not one file name; refusing to write it under {str(base)!r}")
        path = path / part
        if path.is_symlink():
            raise _link_error(path, base)
    return path


def safe_dir(root: str | Path, *parts: str) -> Path:
    """`safe_path(root, *parts)`, created as a folder (with its parents below `root`) when absent; OodmlError when
    one of them is a link or a file."""
    path = Path(root)
    for i in range(len(parts)):
        path = safe_path(root, *parts[:i + 1])
        try:
            path.mkdir(parents=i == 0, exist_ok=True)
        except FileExistsError:
            raise OodmlError(f"{str(path)!r} is a file, not a folder; move it away and rerun") from None
        except OSError as e:
            raise disk_error(e, path) from None
        if path.is_symlink():  # made a link between the check and mkdir
            raise _link_error(path, Path(root))
    return path


def disk_error(e: OSError, path: str | Path) -> OodmlError:
    """The one-line error of a failed write: a full disk (or quota) is named as such."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OodmlError(f"no space left on the device holding {str(path)!r} ({e.strerror}); free some space or "
                          "write elsewhere, then rerun (finished files are kept)")
    return OodmlError(f"cannot write {str(path)!r}: {e.strerror or e}")


@contextmanager
def folder_lock(folder: str | Path, *, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive `fcntl` lock on `<folder>/<name>` (created when absent) for the block; another process
    waits for it. The kernel releases it when the holder exits or is killed, so a killed run never blocks the next.
    """
    lock = safe_path(folder, name)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
    if final.is_symlink():
        raise _link_error(final, final.parent)
    tmp = temp_path(final)

    def exclusive(name: str, flags: int) -> int:
        return os.open(name, flags | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)

    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding, opener=exclusive) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if final.is_symlink():  # a link made while we wrote: the rename would replace it, but say so instead
            raise _link_error(final, final.parent)
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
