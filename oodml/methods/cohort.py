"""The cohort add-ons: `+dmml`'s rule for models trained together (`MutualCohort`, `MutualTerm`) and `+ens`, a
cohort of independently initialised and independently trained copies of one embedding method (`EnsembleMethod`).

`+dmml` (Park et al. 2020): every model's loss gets a relational mutual term towards the others; models m > 1 see
their own input views (features with dropout and noise in the head regime, their own augmentation stream in the full
regime) and may step less often (`dmml_update_every`).

`+ens`: model 1 is the plain method itself (same seeds, so `X+ens` evaluates exactly `X` as its '' variant); model m > 1
draws its initialisation, batches and miner samples from seeds derived from its own name (`<seed name>|ens<m>`).
The 'ensemble' variant concatenates the members' L2-normalised embeddings and normalises the result, as `+dmml`'s
does, so that `X+dmml[ensemble]` - `X+ens[ensemble]` isolates mutual learning from plain ensembling.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from oodml.methods.base import Inputs, Method
from oodml.methods.embedding import EmbeddingMethod
from oodml.methods.hooks import Cohort, Outputs, Regularizer
from oodml.methods.losses import distance_matching_loss, pairwise_distances
from oodml.methods.params import DmmlCohortParams


def concat_normalized(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Row-wise L2-normalise each (N, d_i) part, concatenate, normalise again; (N, sum d_i) float32."""
    cat = np.concatenate([p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts], 1)
    cat /= np.maximum(np.linalg.norm(cat, axis=1, keepdims=True), 1e-12)
    return cat.astype(np.float32)


class MutualCohort(Cohort):
    """`+dmml`'s (and `+dmmlctl`'s) cohort: `dmml_models` models, per-model update frequency and head-regime input
    views."""

    def __init__(self, params: DmmlCohortParams) -> None:
        self.params = params
        self.size = params.dmml_models

    def update_every(self, m: int) -> int:
        """`dmml_update_every`, cycled over the models."""
        every = self.params.dmml_update_every
        return int(every[m % len(every)])

    def perturb(self, xb: torch.Tensor, m: int, seed: int) -> torch.Tensor:
        """Model 1 sees the features; model m > 1 a dropout mask and Gaussian noise (scaled by the batch's
        per-feature std) drawn from `seed`."""
        if m == 0:
            return xb
        g = torch.Generator().manual_seed(seed)
        keep = 1.0 - self.params.dmml_dropout
        mask = (torch.rand(xb.shape, generator=g) < keep).to(xb) / keep
        std = xb.std(dim=0, keepdim=True) if len(xb) > 1 else torch.ones_like(xb[:1])
        noise = torch.randn(xb.shape, generator=g).to(xb) * std * self.params.dmml_noise
        return xb * mask + noise

    def variants(self, parts: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """'' = model 1; 'ensemble' = the normalised concatenation of the normalised cohort."""
        return {"": parts[0], "ensemble": concat_normalized(parts)}


class MutualTerm(Regularizer):
    """`+dmml`'s relational mutual loss towards the other models (detached), weighted by `dmml_weight`."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        # the batch's outputs and the values of their distance matrices: each model's is computed without a graph once
        # per batch, not once per model that learns towards it (5 instead of 9 for 3 models)
        self._batch: tuple[Sequence[Outputs], dict[int, torch.Tensor]] | None = None

    def term(self, m: int, outs: Sequence[Outputs]) -> torch.Tensor | None:
        """weight x relational_mutual_loss(e_m, the others' e, detached); None at weight 0."""
        if self.weight <= 0:
            return None
        if self._batch is None or self._batch[0] is not outs:
            self._batch = (outs, {})
        values = self._batch[1]
        # model m's own matrix, with its graph, built here as before: the backward pass adds its gradients in the
        # same order, so training is bit for bit what it was without the cache
        mine = pairwise_distances(outs[m][1])
        values[m] = mine.detach()
        others = []
        with torch.no_grad():
            for n, o in enumerate(outs):
                if n != m:
                    if n not in values:
                        values[n] = pairwise_distances(o[1])
                    others.append(values[n])
        if m == len(outs) - 1:
            self._batch = None  # the last model's term: hold no tensors past the batch
        return self.weight * distance_matching_loss(mine, others)


class EnsembleMethod(Method):
    """`n` members built from one configured (unfitted) embedding method; see the module docstring."""

    def __init__(self, method: EmbeddingMethod, n: int) -> None:
        self.info = method.info
        self.members: list[Method] = [method]
        for m in range(1, n):
            member = copy.deepcopy(method)
            member.seed_name = f"{method.seed_name}|ens{m}"
            self.members.append(member)

    @property
    def selects_on_val(self) -> bool:
        """Whether the members' source fits choose their checkpoint on validation classes."""
        return self.members[0].selects_on_val

    def fit(self, x: Inputs, y: np.ndarray, val: tuple[Inputs, np.ndarray] | None = None) -> None:
        """Fit every member on the source, each from its own seeds."""
        for member in self.members:
            member.fit(x, y, val)

    def _with(self, members: Sequence[Method]) -> EnsembleMethod:
        new = copy.copy(self)
        new.members = list(members)
        return new

    def adapt(self, x: Inputs, y: np.ndarray) -> Method:
        """Every member adapted on the support."""
        return self._with([m.adapt(x, y) for m in self.members])

    def adapt_episodes(self, supports: Sequence[tuple[Inputs, np.ndarray]],
                       seeds: Sequence[int] | None = None) -> Iterator[Method]:
        """Every member's `adapt_episodes` (batched where the member's protocol is), zipped per support."""
        per_member = [list(m.adapt_episodes(supports, seeds)) for m in self.members]
        for adapted in zip(*per_member, strict=True):
            yield self._with(adapted)

    def embed(self, x: Inputs) -> np.ndarray:
        """Model 1's embeddings."""
        return self.members[0].embed(x)

    def embed_variants(self, x: Inputs) -> dict[str, np.ndarray]:
        """'' = model 1; 'ensemble' = the normalised concatenation of every member's normalised embeddings."""
        parts = [m.embed(x) for m in self.members]
        return {"": parts[0], "ensemble": concat_normalized(parts)}

    def fit_record(self) -> dict[str, Any]:
        """Model 1's fit record."""
        return self.members[0].fit_record()

    def adaptation_record(self, shots: int) -> dict[str, Any]:
        """Model 1's adaptation settings (all members share them)."""
        return self.members[0].adaptation_record(shots)

    def state_dict(self) -> dict[str, Any]:
        """Every member's fitted state."""
        return {"members": [m.state_dict() for m in self.members]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every member."""
        for m, s in zip(self.members, state["members"], strict=True):
            m.load_state_dict(s)
