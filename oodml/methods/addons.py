"""Add-ons composed onto embedding methods with `+`, one registry entry each (`ADDONS`, docs/architecture.md):

- `+sec` (Zhang et al. 2020), an embedding regularizer added to the method's objective;
- `+dmml` (Park et al. 2020), a cohort of models trained together with a relational mutual loss;
- `+dmmlctl`, the control for `+dmml`'s mutual term: the very same cohort (models, initialisations, batches, input
  views, noise, dropout, update schedule) with the mutual term off, so `X+dmml` - `X+dmmlctl` is the mutual term's own
  effect (alias `+dmml_nomutual`);
- `+ens`, the control for `+dmml`: a cohort of independently initialised, independently trained models whose
  L2-normalised embeddings are concatenated (and normalised again), so `X+dmml` - `X+ens` is mutual learning's own
  effect.

A method spec is `<registered name>[+<add-on>...]`, e.g. `triplet+sec`, `adapted_proto+sec`, `margin+ens`; add-on
aliases resolve to their canonical name, so a cell's spec (and id) never holds an alias.
Regularizers apply before cohorts whatever their order in the spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from oodml.errors import OodmlError, suggest
from oodml.methods.base import METHODS, Method
from oodml.methods.cohort import EnsembleMethod, MutualCohort, MutualTerm
from oodml.methods.embedding import EmbeddingMethod
from oodml.methods.hooks import Outputs, Regularizer
from oodml.methods.losses import sec_loss
from oodml.methods.params import DmmlCohortParams, DmmlParams, EnsParams, SecParams
from oodml.registry import Registry

ADDON_KINDS = ("regularizer", "cohort")  # in the order they apply


@dataclass(frozen=True)
class AddonInfo:
    """One add-on: its name, kind (`regularizer` or `cohort`), hyperparameter dataclass and a one-line
    description. Its registry factory is `(method, params) -> Method`."""

    name: str
    kind: str
    params: type
    description: str


ADDONS: Registry[AddonInfo] = Registry("add-on")  # type: ignore[type-var]  # frozen fields vs HasName


def _embedding(method: Method, addon: str) -> EmbeddingMethod:
    if not isinstance(method, EmbeddingMethod):
        raise OodmlError(f"method {method.info.name!r} is not built on EmbeddingMethod, so it takes no add-on "
                         f"(+{addon})")
    return method


class SecTerm(Regularizer):
    """`+sec`: eta x the spherical embedding constraint of the model's raw (unnormalised) embeddings."""

    def __init__(self, eta: float) -> None:
        self.eta = eta

    def term(self, m: int, outs: Sequence[Outputs]) -> torch.Tensor | None:
        """eta x sec_loss(z_m); None at eta 0."""
        return self.eta * sec_loss(outs[m][0]) if self.eta > 0 else None


@ADDONS.register(AddonInfo("sec", "regularizer", SecParams,
                           "spherical embedding constraint: eta * mean_i (||f_i|| - mu)^2 (Zhang 2020)"))
def _sec(method: Method, params: SecParams) -> Method:
    m = _embedding(method, "sec")
    m.add_regularizer(SecTerm(params.sec_eta))
    return m


def _mutual_cohort(method: Method, params: DmmlCohortParams, addon: str) -> EmbeddingMethod:
    """`method` trained as `+dmml`'s cohort (models, views, noise, dropout, update schedule), no mutual term yet."""
    m = _embedding(method, addon)
    m.set_cohort(MutualCohort(params))
    return m


@ADDONS.register(AddonInfo("dmml", "cohort", DmmlParams,
                           "diversified mutual metric learning: a cohort of models with a relational mutual loss; "
                           "evaluates model 1 and the ensemble (Park 2020)"))
def _dmml(method: Method, params: DmmlParams) -> Method:
    m = _mutual_cohort(method, params, "dmml")
    m.add_regularizer(MutualTerm(params.dmml_weight))
    return m


@ADDONS.register(AddonInfo("dmmlctl", "cohort", DmmlCohortParams,
                           "control for +dmml's mutual term: +dmml's cohort, views, noise, dropout and update schedule "
                           "with the mutual loss off (equals +dmml at dmml_weight 0)"))
def _dmmlctl(method: Method, params: DmmlCohortParams) -> Method:
    return _mutual_cohort(method, params, "dmmlctl")


ADDONS.alias("dmml_nomutual", "dmmlctl")


@ADDONS.register(AddonInfo("ens", "cohort", EnsParams,
                           "ensemble control for +dmml: ens_models independently initialised and trained models; "
                           "evaluates model 1 and their concatenated normalised embeddings"))
def _ens(method: Method, params: EnsParams) -> Method:
    return EnsembleMethod(_embedding(method, "ens"), params.ens_models)


def parse_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """`'adapted_hist+sec'` -> (`'adapted_histogram'`, `('sec',)`): canonical method name and its add-ons, in spec
    order.

    Raises OodmlError for an unknown method or add-on, a repeated add-on, two cohorts, or a method that takes no
    add-ons.
    """
    base, *given = [p.strip() for p in spec.split("+")]
    name = METHODS.resolve(base)
    for a in given:
        if a not in ADDONS:
            raise OodmlError(f"unknown add-on {'+' + a!r} in {spec!r}{suggest(a, ADDONS.names())}; "
                             f"add-ons: {', '.join('+' + n for n in ADDONS.names())}")
    addons = [ADDONS.resolve(a) for a in given]
    if len(set(addons)) != len(addons):
        raise OodmlError(f"method {spec!r} repeats an add-on; give each add-on once")
    if sum(ADDONS.info(a).kind == "cohort" for a in addons) > 1:
        cohorts = ", ".join("+" + n for n in ADDONS.names() if ADDONS.info(n).kind == "cohort")
        raise OodmlError(f"method {spec!r} has two cohort add-ons; use one of {cohorts}")
    if addons and not METHODS.info(name).addons:
        raise OodmlError(f"method {name!r} trains no embedding, so it takes no add-on ({spec!r}); "
                         "use add-ons with DML, protonet, adapted_* or weight_transfer methods")
    return name, tuple(addons)


def canonical_spec(spec: str) -> str:
    """The spec with its method name canonical (aliases resolved)."""
    name, addons = parse_spec(spec)
    return "+".join((name, *addons))


def apply_addons(method: Method, addons: dict[str, Any], spec: str) -> Method:
    """`method` with the add-ons `addons` ({name: params}); regularizers apply before cohorts. `spec` names them all."""
    if isinstance(method, EmbeddingMethod):
        method.spec = spec
    for name in sorted(addons, key=lambda a: ADDON_KINDS.index(ADDONS.info(a).kind)):
        method = ADDONS.get(name).factory(method, addons[name])
    return method
