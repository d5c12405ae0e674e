"""Reference and transfer methods: `pretrained` (no training), `baseline` (target support only), `weight_transfer`."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oodml.methods.base import METHODS, Inputs, Method, MethodContext, MethodInfo
from oodml.methods.embedding import EmbeddingMethod
from oodml.methods.losses import ClassifierObjective
from oodml.methods.nets import batched_forward, build_trunk
from oodml.methods.params import ClassifierParams
from oodml.seeding import derive_seed, seeded_torch


class PretrainedMethod(Method):
    """The frozen backbone's features, L2-normalised: the zero-shot reference line."""

    def __init__(self, info: MethodInfo, ctx: MethodContext, params: Any = None) -> None:
        self.info, self.ctx = info, ctx
        self.trunk: nn.Module | None = None

    def fit(self, x: Inputs, y: np.ndarray, val: tuple[Inputs, np.ndarray] | None = None) -> None:
        """Nothing to train."""

    def adapt(self, x: Inputs, y: np.ndarray) -> Method:
        """An untouched copy (the method does not use the support)."""
        return copy.deepcopy(self)

    def embed(self, x: Inputs) -> np.ndarray:
        """Normalised features (head) or normalised backbone outputs (full)."""
        if self.ctx.regime == "head":
            return batched_forward(lambda xb: F.normalize(xb, dim=1), x, self.ctx.device, 4096)
        if self.trunk is None:
            with seeded_torch(derive_seed(self.ctx.seed, self.info.name, "init", 0)):
                self.trunk = build_trunk(self.ctx.regime, self.ctx.backbone)[0].to(self.ctx.device).eval()
        trunk = self.trunk
        return batched_forward(lambda xb: F.normalize(trunk(xb), dim=1), x, self.ctx.device, 64)


class ClassifierMethod(EmbeddingMethod):
    """A softmax classifier on top of the embedding; the embedding is its penultimate layer."""

    def make_objective(self, n_classes: int, stage: str) -> nn.Module:
        """Linear classifier + cross-entropy."""
        return ClassifierObjective(self.params.embed_dim, n_classes)

    def support_score(self, x: Inputs, y: np.ndarray) -> float | None:
        """The classifier's accuracy on the support (what Scott et al. watch when fine-tuning a classifier)."""
        e = torch.from_numpy(self._embed_net(0, x))
        objective = self.objectives[0]
        assert isinstance(objective, ClassifierObjective)
        with torch.no_grad():
            pred = objective.fc(e.to(self.ctx.device)).argmax(dim=1).cpu().numpy()
        return float(np.mean(pred == np.asarray(y)))


class BaselineMethod(ClassifierMethod):
    """Trained on the target k-shot support only: a fresh net and classifier, no source training."""

    adapts_source_model = False
    fit_trains = False

    def fit(self, x: Inputs, y: np.ndarray, val: tuple[Inputs, np.ndarray] | None = None) -> None:
        """No source training; only builds an (untrained) net so that `embed` is defined."""
        if self.in_dim is None and hasattr(x, "dim"):
            self.in_dim = int(x.dim)  # type: ignore[attr-defined]
        with seeded_torch(self._seed("fit")):
            self._build(1)

    def prepare_adapt(self, x: Inputs, y: np.ndarray, n_classes: int) -> None:
        """Start from scratch on the target classes."""
        self._build(n_classes)


@METHODS.register(MethodInfo("pretrained", family="reference", trains=False, uses_support=False,
                             description="frozen backbone features, L2-normalised (zero-shot reference)"))
def _pretrained(info: MethodInfo, ctx: MethodContext, params: Any) -> Method:
    return PretrainedMethod(info, ctx, params)


@METHODS.register(MethodInfo("baseline", family="baseline", trains=True, uses_support=True, zero_shot=False,
                             addons=True, params=ClassifierParams,
                             description="classifier trained from scratch on the target k-shot support only"))
def _baseline(info: MethodInfo, ctx: MethodContext, params: ClassifierParams) -> Method:
    return BaselineMethod(info, ctx, params)


@METHODS.register(MethodInfo("weight_transfer", family="transfer", trains=True, uses_support=True, addons=True,
                             params=ClassifierParams,
                             description="softmax classifier on the source; k-shot: new last layer fine-tuned"))
def _weight_transfer(info: MethodInfo, ctx: MethodContext, params: ClassifierParams) -> Method:
    return ClassifierMethod(info, ctx, params)
