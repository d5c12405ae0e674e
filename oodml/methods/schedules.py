"""Per-k schedules of a hyperparameter (`adapt_iterations: 2:1000,5:1500`): parsing, lookup and the canonical form
that `--method-param` overrides are stored in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oodml.errors import OodmlError


def parse_schedule(value: int | str, what: str = "adapt_iterations") -> dict[int, int]:
    """A per-k schedule `2:1000,5:1500` (or one number for every k: {0: n}) as {k: iterations}; OodmlError if bad."""
    if isinstance(value, int):
        if value < 0:
            raise OodmlError(f"{what} must be >= 0, got {value}")
        return {0: value}
    out: dict[int, int] = {}
    for item in str(value).split(","):
        k, sep, n = item.partition(":")
        try:
            kk, nn = int(k), int(n)
        except ValueError:
            kk = nn = -1
        if not sep or kk < 1 or nn < 0 or kk in out:
            raise OodmlError(f"{what}={value!r} is not a per-k schedule; give a number or shots:iterations pairs "
                             "with distinct shots >= 1, e.g. 2:1000,5:1500")
        out[kk] = nn
    return out


def schedule_for(value: int | str, shots: int) -> int:
    """The schedule's entry for `shots`: the entry of the largest named shots <= `shots`, else of the smallest."""
    table = parse_schedule(value)
    below = [kk for kk in table if kk <= shots]
    return table[max(below) if below else min(table)]


def canonical_schedule(cls_name: str, name: str, value: Any) -> int | str:
    """An int, or a schedule (string or {k: n} mapping) in its canonical string form (sorted by k)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        value = ",".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, str):
        if value.strip().lstrip("-").isdigit():
            return int(value)
        table = parse_schedule(value.replace(" ", ""), name)
        return ",".join(f"{k}:{table[k]}" for k in sorted(table))
    raise OodmlError(f"{cls_name}: {name}={value!r} is not a number or a per-k schedule like 2:1000,5:1500")
