"""Prototypical networks (Snell et al. 2017) and adapted prototypical networks (Scott et al. 2018)."""

from __future__ import annotations

import numpy as np
from torch import nn

from oodml.methods.base import METHODS, Method, MethodContext, MethodInfo
from oodml.methods.batches import episode_batch
from oodml.methods.embedding import EmbeddingMethod
from oodml.methods.losses import ProtoObjective
from oodml.methods.params import ProtoParams


class ProtoMethod(EmbeddingMethod):
    """Episodic n-way k-shot training on the source; `adapted_proto` also trains on episodes of the support.

    An adaptation episode holds every target class; each class's shuffled support images are split into
    max(1, k // 2) shots and k - shots queries (k = 1: the image is both).
    """

    params: ProtoParams

    def __init__(self, info: MethodInfo, ctx: MethodContext, params: ProtoParams) -> None:
        super().__init__(info, ctx, params)
        self.seed_name = "protonet"  # adapted_proto starts from protonet's source model

    def make_objective(self, n_classes: int, stage: str) -> nn.Module:
        """Prototypical loss with the stage's number of shots."""
        return ProtoObjective(self.params.shots if stage == "fit" else self.adapt_episode_shots)

    def batch_indices(self, y: np.ndarray, rng: np.random.Generator, stage: str) -> np.ndarray:
        """A source episode (fit) or the whole support, shuffled within classes (adapt)."""
        p = self.params
        if stage == "fit":
            return episode_batch(y, p.ways, p.shots + p.queries, rng)
        return episode_batch(y, int(y.max()) + 1, int(np.bincount(y).max()), rng)


@METHODS.register(MethodInfo("protonet", family="fewshot", trains=True, uses_support=False, addons=True,
                             params=ProtoParams,
                             description="prototypical networks, episodic n-way k-shot on the source (Snell 2017)"))
def _protonet(info: MethodInfo, ctx: MethodContext, params: ProtoParams) -> Method:
    return ProtoMethod(info, ctx, params)


@METHODS.register(MethodInfo("adapted_proto", family="adapted", trains=True, uses_support=True, addons=True,
                             params=ProtoParams,
                             description="prototypical networks fine-tuned on episodes of the k-shot support"))
def _adapted_proto(info: MethodInfo, ctx: MethodContext, params: ProtoParams) -> Method:
    return ProtoMethod(info, ctx, params)
