"""Prototypical networks (Snell et al. 2017) and adapted prototypical networks (Scott et al. 2018)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from oodml.methods.base import METHODS, Inputs, Method, MethodContext, MethodInfo
from oodml.methods.batches import episode_batch
from oodml.methods.embedding import EmbeddingMethod
from oodml.methods.losses import ProtoObjective, prototype_logits
from oodml.methods.params import ProtoParams


def whole_episode(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of an episode of every class of `y` (labels 0..C-1) with all its rows, laid out class by class
    (classes in random order, rows shuffled within a class); its first shots per class are the support
    (`oodml.methods.losses.prototype_logits`)."""
    return episode_batch(y, int(y.max()) + 1, int(np.bincount(y).max()), rng)


def episodic_accuracy(e: torch.Tensor, y: np.ndarray, shots: int, episodes: int,
                      rng: np.random.Generator) -> float | None:
    """Nearest-prototype accuracy of the queries over `episodes` episodes drawn from the labelled rows `e`, each
    class's rows redrawn into `shots` support rows and the rest as queries (Scott et al.'s adaptation score).

    Args:
        e: (N, d) embeddings.
        y: (N,) labels 0..C-1.
        shots: support rows per class in an episode.
        episodes: how many episodes to draw (`whole_episode`).
        rng: the episodes' generator.

    Returns:
        Correct queries over all queries of all episodes (a class with <= `shots` rows has none); None when no
        class has a query.
    """
    y = np.asarray(y)
    if int(np.bincount(y).max()) <= shots:
        return None
    correct = total = 0
    for _ in range(episodes):
        idx = whole_episode(y, rng)
        rows = torch.as_tensor(idx, device=e.device)
        logits, target, held_out = prototype_logits(e[rows], torch.as_tensor(y[idx], device=e.device), shots)
        correct += int((logits.argmax(dim=1) == target)[held_out].sum())
        total += int(held_out.sum())
    return correct / total


class ProtoMethod(EmbeddingMethod):
    """Episodic n-way k-shot training on the source; `adapted_proto` also trains on episodes of the support.

    An adaptation episode holds every target class; each class's support images are redrawn (shuffled) into
    `ProtoParams.adapt_shots(k)` shots and the rest as queries (k = 1: the image is both). With `adapt_stop=plateau`
    and `adapt_score=episodes` the stop watches `episodic_accuracy` on episodes drawn the same way.
    """

    params: ProtoParams

    def __init__(self, info: MethodInfo, ctx: MethodContext, params: ProtoParams) -> None:
        super().__init__(info, ctx, params)
        self.seed_name = "protonet"  # adapted_proto starts from protonet's source model
        self.adapt_episode_shots = 1  # support images per class in an adaptation episode (the rest are its queries)
        #: the episodic score's generator (`adapt_score=episodes`), seeded when an adaptation starts
        self.score_rng: np.random.Generator | None = None

    def make_objective(self, n_classes: int, stage: str) -> nn.Module:
        """Prototypical loss with the stage's number of shots."""
        return ProtoObjective(self.params.shots if stage == "fit" else self.adapt_episode_shots)

    def batch_indices(self, y: np.ndarray, rng: np.random.Generator, stage: str) -> np.ndarray:
        """A source episode (fit) or the whole support, shuffled within classes (adapt)."""
        p = self.params
        if stage == "fit":
            return episode_batch(y, p.ways, p.shots + p.queries, rng)
        return whole_episode(y, rng)

    def prepare_adapt(self, x: Inputs, y: np.ndarray, n_classes: int) -> None:
        """The episode shots for this support (`adapt_support_fraction` of its smallest class) and a fresh score
        generator, then the adaptation objective."""
        self.adapt_episode_shots = self.params.adapt_shots(int(np.bincount(y, minlength=n_classes).min()))
        self.score_rng = np.random.default_rng(self._seed("adapt", "score"))
        super().prepare_adapt(x, y, n_classes)

    def support_score(self, x: Inputs, y: np.ndarray) -> float | None:
        """`adapt_score=loo_nn`: leave-one-out 1-NN accuracy (`EmbeddingMethod.support_score`); `episodes`: model
        1's `episodic_accuracy` on the support, with the episode shots of its smallest class."""
        p = self.params
        if p.adapt_score == "loo_nn":
            return super().support_score(x, y)
        y = np.asarray(y)
        shots = p.adapt_shots(int(np.bincount(y).min()))
        if int(np.bincount(y).max()) <= shots:
            return None  # one image per class: nothing to score (checked before embedding)
        rng = self.score_rng if self.score_rng is not None else np.random.default_rng(self._seed("adapt", "score"))
        e = torch.from_numpy(self._embed_net(0, x)).to(self.ctx.device)
        return episodic_accuracy(e, y, shots, p.adapt_score_episodes, rng)


@METHODS.register(MethodInfo("protonet", family="fewshot", trains=True, uses_support=False, addons=True,
                             params=ProtoParams,
                             description="prototypical networks, episodic n-way k-shot on the source (Snell 2017)"))
def _protonet(info: MethodInfo, ctx: MethodContext, params: ProtoParams) -> Method:
    return ProtoMethod(info, ctx, params)


@METHODS.register(MethodInfo("adapted_proto", family="adapted", trains=True, uses_support=True, addons=True,
                             params=ProtoParams, fits_as="protonet",
                             description="prototypical networks fine-tuned on episodes of the k-shot support"))
def _adapted_proto(info: MethodInfo, ctx: MethodContext, params: ProtoParams) -> Method:
    return ProtoMethod(info, ctx, params)
