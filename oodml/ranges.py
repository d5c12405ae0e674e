"""Parsing of the integer-list options `--shifts`, `--k`, `--seeds` (README.md): `3`, `1,3,5`, `1..8`, `2..4,7`, `all`."""

from __future__ import annotations

import re

from oodml.errors import OodmlError

_ITEM = re.compile(r"^(-?\d+)(?:\.\.(-?\d+))?$")


def parse_int_list(text: str, option: str, *, minimum: int = 0, allow_all: bool = False, limit: int | None = None,
                   limit_hint: str = "") -> tuple[int, ...] | None:
    """Parse an integer list; returns None for `all` (when allowed). Raises OodmlError on malformed input.

    Ranges are inclusive and must ascend (`8..1` is an error); values below `minimum` are errors; duplicates are
    dropped, order of first appearance kept. A list of more than `limit` values is refused before it is expanded
    (`limit_hint` names the option that raises the limit).
    """
    text = text.strip()
    if allow_all and text == "all":
        return None
    how = "use e.g. 3, 1,3,5, 1..8 or 2..4,7" + (" or all" if allow_all else "")
    if not text:
        raise OodmlError(f"{option} is empty; {how}")
    bounds: list[tuple[int, int]] = []
    for part in text.split(","):
        m = _ITEM.match(part.strip())
        if not m:
            raise OodmlError(f"{option} {text!r} is malformed at {part.strip()!r}; {how}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise OodmlError(f"{option} range {part.strip()!r} descends; write it low..high, e.g. {hi}..{lo}")
        if lo < minimum:
            raise OodmlError(f"{option} value {lo} is out of range: values must be >= {minimum}")
        bounds.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in bounds)
    if limit is not None and count > limit:
        raise OodmlError(f"{option} {text!r} lists {count:,} values, more than the {limit:,} allowed"
                         + (f"; confirm a bigger grid with {limit_hint} N" if limit_hint else ""))
    seen: dict[int, None] = {}
    for lo, hi in bounds:
        seen.update(dict.fromkeys(range(lo, hi + 1)))
    return tuple(seen)


def format_int_list(values: tuple[int, ...] | None) -> str:
    """Inverse of `parse_int_list` for display: (1,2,3,5) -> '1..3,5'; None -> 'all'."""
    if values is None:
        return "all"
    parts: list[str] = []
    vals = sorted(values)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}..{vals[j]}")
        i = j + 1
    return ",".join(parts)
