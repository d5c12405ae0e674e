"""The method protocol (docs/architecture.md): `fit` on source classes, `adapt` on a k-shot support set, `embed`.

Inputs are abstracted so that one method runs in both regimes:
- `head`: `FeatureInputs` over cached backbone features (the backbone is frozen; methods train a head);
- `full`: image inputs (paths + transforms) through a trainable backbone.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from oodml.features.backbones import DEFAULT_BACKBONE
from oodml.registry import Registry
from oodml.seeding import seed_everything

FAMILIES = ("reference", "baseline", "transfer", "dml", "fewshot", "adapted")


@dataclass(frozen=True)
class MethodInfo:
    """Registry metadata for a method (docs/architecture.md)."""

    name: str
    family: str
    trains: bool
    uses_support: bool
    description: str
    params: type | None = None  # the method's typed hyperparameter dataclass
    zero_shot: bool = True      # False: no k=0 cell (stored as skipped), e.g. `baseline`
    addons: bool = False        # True: accepts the `+sec` / `+dmml` add-ons (methods built on EmbeddingMethod)
    #: the method whose source fit this one's is (same class, seeds and fit-stage code: `adapted_X` fits as `X`);
    #: the fit cache then keeps one fit for both (`fit_identity`), and tests/methods/test_fit_sharing.py checks
    #: that the two fits are bit-identical
    fits_as: str | None = None


METHODS: Registry[MethodInfo] = Registry("method")  # type: ignore[type-var]  # frozen fields vs HasName


class Inputs(Protocol):
    """Indexable training/evaluation inputs: features (head regime) or images (full regime)."""

    def __len__(self) -> int: ...

    def fetch(self, idx: np.ndarray, *, train: bool = False, view: int = 0) -> torch.Tensor:
        """A float batch for rows `idx`; `train` turns on augmentation, `view` selects an augmentation stream."""
        ...


@dataclass
class FeatureInputs:
    """Head-regime inputs: rows of a precomputed feature matrix."""

    x: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self.x.shape[1])

    def fetch(self, idx: np.ndarray, *, train: bool = False, view: int = 0) -> torch.Tensor:
        """Rows `idx` (no augmentation on features; add-ons that need views perturb them themselves)."""
        return self.x[torch.as_tensor(np.asarray(idx), dtype=torch.long)]


@dataclass(frozen=True)
class MethodContext:
    """What a method factory needs besides its hyperparameters."""

    regime: str = "head"          # "head" or "full"
    in_dim: int | None = None     # feature dimension in the head regime
    backbone: str = DEFAULT_BACKBONE
    device: str = "cpu"
    seed: int = 0


class Method(ABC):
    """A benchmark method. `fit` trains on the source; `adapt` returns an adapted copy; `embed` maps inputs."""

    info: MethodInfo

    @abstractmethod
    def fit(self, x: Inputs, y: np.ndarray, val: tuple[Inputs, np.ndarray] | None = None) -> None:
        """Train on the source (train) classes of a level; `val` (inputs and labels of held-out validation classes)
        is given when `selects_on_val`."""

    @property
    def selects_on_val(self) -> bool:
        """True when `fit` wants validation classes to choose its checkpoint."""
        return False

    def adapt(self, x: Inputs, y: np.ndarray) -> Method:
        """Adapt on a k-shot support set; returns a new Method and leaves `self` (the source state) untouched."""
        return copy.deepcopy(self)

    def adapt_episodes(self, supports: Sequence[tuple[Inputs, np.ndarray]],
                       seeds: Sequence[int] | None = None) -> Iterator[Method]:
        """Adapted copies for many k-shot supports (every episode of a cell, of every k), in order; `self` is
        untouched.

        The default adapts one support at a time, when the next copy is asked for (so one copy at a time is in
        memory), seeding the global RNGs with `seeds[i]` first; methods that adapt many supports as one batched
        computation override it (`EmbeddingMethod` with `adapt_protocol=oodml`).
        """
        for i, (x, y) in enumerate(supports):
            if seeds is not None:
                seed_everything(seeds[i])
            yield self.adapt(x, y)

    def fit_record(self) -> dict[str, Any]:
        """How the source fit went, recorded in the cell (e.g. the kept checkpoint); empty: nothing to record."""
        return {}

    def adaptation_record(self, shots: int) -> dict[str, Any]:
        """The adaptation settings in force for supports of `shots` images per class, recorded in the cell (empty:
        nothing to record)."""
        return {}

    @abstractmethod
    def embed(self, x: Inputs) -> np.ndarray:
        """(N, d) float32 embeddings."""

    def embed_variants(self, x: Inputs) -> dict[str, np.ndarray]:
        """Named embedding variants to evaluate; '' is the method itself (e.g. dmml adds 'ensemble')."""
        return {"": self.embed(x)}

    def state_dict(self) -> dict[str, Any]:
        """Trained source state for the fit cache."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
