"""User-facing errors and the checks applied to untrusted input.

The CLI turns an `OodmlError` into one `error:` line on stderr and exit code 2. Names that become parts of paths
(`check_name`) and structures parsed from files others may have written (`check_bounded`) are checked here, so that
such input fails with that one line instead of writing elsewhere or exhausting memory.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class OodmlError(Exception):
    """Bad input from the user (unknown name, malformed list, missing or corrupt file, missing dataset).

    The message must be one line that says what is wrong and how to fix it.
    """


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean a, b?)' for the closest `choices` to `name`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


#: a name that may become one path component: letters, digits, `_`, `-`, `.` (not leading), at most 100 characters
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str, what: str) -> str:
    """Return `name` when it is safe as one path component (NAME_PATTERN), else raise OodmlError naming `what`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise OodmlError(f"{what}: {str(name)[:80]!r} is not a valid name (letters, digits, '_', '-' and '.', "
                         "starting with a letter or digit, no '..' or '/'): it would become part of a path")
    return name


#: bounds of `check_bounded`: a study config or split pickle has some 10^5 values, nested a few levels deep
MAX_NODES = 5_000_000
MAX_DEPTH = 64


def check_bounded(obj: Any, what: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Walk `obj` (dicts, lists, tuples, sets; shared references counted at every use, as they expand) without
    recursion; raise OodmlError when it holds more than `max_nodes` values or nests deeper than `max_depth`.

    This stops YAML and pickle alias bombs (a few bytes that expand to 2^40 values) and very deep nesting before
    any code that would expand or recurse into them.
    """
    stack: list[tuple[Any, int]] = [(obj, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise OodmlError(f"{what} expands to more than {max_nodes:,} values (aliases or references that repeat "
                             "one value many times?); refusing to read it")
        if isinstance(item, Mapping):
            children: Iterable[Any] = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        else:
            continue
        if depth >= max_depth:
            raise OodmlError(f"{what} nests deeper than {max_depth} levels; refusing to read it")
        stack.extend((c, depth + 1) for c in children)


def check_writable(folder: str | os.PathLike[str], what: str) -> None:
    """Raise OodmlError unless files can be created in `folder` (or, when it does not exist yet, in the folder that
    will hold it): run before any work, so that a read-only, immutable or misplaced destination fails at once.

    The check creates and removes one empty temporary file; a folder that does not exist is not created.
    """
    path = Path(folder)
    if not str(folder).strip():
        raise OodmlError(f"{what}: an empty path; give a folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OodmlError(f"{what} {str(path)!r}: {str(probe)!r} is a file, not a folder; choose another destination")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".oodml-write-check-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OodmlError(f"{what} {str(path)!r} is not writable ({e.strerror or e} in {str(probe)!r}); choose "
                         "another destination or fix its permissions") from None
