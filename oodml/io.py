"""Writing files safely: one atomic-write helper (temp file in the same folder, fsync, rename; the temp file is
removed on error) and the cleanup of temp files a killed process left behind.

Temp files are named `.<name>.<pid>.<random>.tmp`, so a later run can tell a dead writer's leftovers from a live
writer's file in progress.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
_TEMP_PID = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def temp_path(path: str | Path) -> Path:
    """A fresh temp name beside `path`: `.<name>.<pid>.<random>.tmp`."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write `path` in one step: yields a file object on a temp file in the same folder; on a clean exit the data
    is flushed, fsynced and renamed over `path`; on an exception the temp file is removed and `path` is untouched.
    The file is created with mode 0666 less the umask (as `open` does).

    Args:
        path: the destination; its folder must exist.
        mode: "w" (text) or "wb" (binary).
        encoding: text encoding (ignored in binary mode).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    final = Path(path)
    tmp = temp_path(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
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
    """Remove the temp files (`*.tmp`) in `folder` whose writer process is gone (or that name none, as older
    oodml's did); a live process's file in progress stays. Returns the removed paths."""
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
