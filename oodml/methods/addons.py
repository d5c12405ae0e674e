"""Add-ons composed onto embedding methods with `+`: `+sec` (Zhang et al. 2020) and `+dmml` (Park et al. 2020).

A method spec is `<registered name>[+<add-on>...]`, e.g. `triplet+sec`, `adapted_proto+sec`, `margin+dmml`.
"""

from __future__ import annotations

from dataclasses import dataclass

from oodml.errors import OodmlError, suggest
from oodml.methods.base import METHODS
from oodml.methods.params import DmmlParams, SecParams


@dataclass(frozen=True)
class AddonInfo:
    """One add-on: its name, hyperparameter dataclass and a one-line description."""

    name: str
    params: type
    description: str


ADDONS: dict[str, AddonInfo] = {
    a.name: a for a in (
        AddonInfo("sec", SecParams, "spherical embedding constraint: eta * mean_i (||f_i|| - mu)^2 (Zhang 2020)"),
        AddonInfo("dmml", DmmlParams, "diversified mutual metric learning: a cohort of models with a relational "
                                      "mutual loss; evaluates model 1 and the ensemble (Park 2020)"),
    )
}


def parse_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """`'adapted_hist+sec'` -> (`'adapted_histogram'`, `('sec',)`): canonical method name and its add-ons.

    Raises OodmlError for an unknown method or add-on, a repeated add-on, or a method that takes no add-ons.
    """
    base, *addons = [p.strip() for p in spec.split("+")]
    name = METHODS.resolve(base)
    for a in addons:
        if a not in ADDONS:
            raise OodmlError(f"unknown add-on {'+' + a!r} in {spec!r}{suggest(a, ADDONS)}; "
                             f"add-ons: {', '.join('+' + n for n in ADDONS)}")
    if len(set(addons)) != len(addons):
        raise OodmlError(f"method {spec!r} repeats an add-on; give each add-on once")
    if addons and not METHODS.info(name).addons:
        raise OodmlError(f"method {name!r} trains no embedding, so it takes no add-on ({spec!r}); "
                         "use add-ons with DML, protonet, adapted_* or weight_transfer methods")
    return name, tuple(addons)


def canonical_spec(spec: str) -> str:
    """The spec with its method name canonical (aliases resolved)."""
    name, addons = parse_spec(spec)
    return "+".join((name, *addons))
