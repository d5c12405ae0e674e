"""Deep metric learning methods built from pytorch-metric-learning losses and miners, and their adapted variants.

`<loss>`: trained on the source; zero-shot by nearest neighbours, k-shot by nearest prototype, no further training.
`adapted_<loss>`: the same, then fine-tuned on the k-shot support with the same loss (Scott et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from oodml.methods.base import METHODS, Method, MethodContext, MethodInfo
from oodml.methods.losses import PmlObjective
from oodml.methods.params import (ArcFaceParams, ContrastiveParams, HistogramParams, MarginParams,
                                  MultiSimilarityParams, NormSoftmaxParams, ProxyAnchorParams, TrainParams,
                                  TripletParams)
from oodml.methods.embedding import EmbeddingMethod

ObjectiveFn = Callable[[Any, int], nn.Module]


def _pml() -> tuple[Any, Any]:
    """pytorch-metric-learning's `losses` and `miners` (imported on first use: it pulls in scipy.stats)."""
    from pytorch_metric_learning import losses, miners

    return losses, miners


def _contrastive(p: ContrastiveParams, n_classes: int) -> nn.Module:
    losses = _pml()[0]
    return PmlObjective(losses.ContrastiveLoss(pos_margin=p.pos_margin, neg_margin=p.neg_margin))


def _triplet(p: TripletParams, n_classes: int) -> nn.Module:
    losses, miners = _pml()
    miner = None if p.mining == "all" else miners.TripletMarginMiner(margin=p.margin, type_of_triplets=p.mining)
    return PmlObjective(losses.TripletMarginLoss(margin=p.margin), miner)


def _margin(p: MarginParams, n_classes: int) -> nn.Module:
    losses = _pml()[0]
    from oodml.methods.pml_batched import BatchedDistanceWeightedMiner

    loss = losses.MarginLoss(margin=p.margin, beta=p.beta, learn_beta=p.learn_beta)
    return PmlObjective(loss, BatchedDistanceWeightedMiner(cutoff=p.cutoff, nonzero_loss_cutoff=p.nonzero_loss_cutoff))


def _multisimilarity(p: MultiSimilarityParams, n_classes: int) -> nn.Module:
    losses, miners = _pml()
    return PmlObjective(losses.MultiSimilarityLoss(alpha=p.alpha, beta=p.beta, base=p.base),
                        miners.MultiSimilarityMiner(epsilon=p.epsilon))


def _proxy_anchor(p: ProxyAnchorParams, n_classes: int) -> nn.Module:
    losses = _pml()[0]
    return PmlObjective(losses.ProxyAnchorLoss(n_classes, p.embed_dim, margin=p.margin, alpha=p.alpha))


def _arcface(p: ArcFaceParams, n_classes: int) -> nn.Module:
    losses = _pml()[0]
    return PmlObjective(losses.ArcFaceLoss(n_classes, p.embed_dim, margin=p.margin, scale=p.scale))


def _normsoftmax(p: NormSoftmaxParams, n_classes: int) -> nn.Module:
    losses = _pml()[0]
    return PmlObjective(losses.NormalizedSoftmaxLoss(n_classes, p.embed_dim, temperature=p.temperature))


def _histogram(p: HistogramParams, n_classes: int) -> nn.Module:
    from oodml.methods.pml_batched import BinSafeCosineSimilarity, PairHistogramLoss

    return PmlObjective(PairHistogramLoss(n_bins=p.n_bins, distance=BinSafeCosineSimilarity()))


@dataclass(frozen=True)
class DmlLoss:
    """One DML loss of the registry: its params class, objective builder and a description."""

    name: str
    params: type
    build: ObjectiveFn
    proxies: bool
    description: str


DML_LOSSES: tuple[DmlLoss, ...] = (
    DmlLoss("contrastive", ContrastiveParams, _contrastive, False, "contrastive loss (Hadsell et al. 2006)"),
    DmlLoss("triplet", TripletParams, _triplet, False, "triplet loss, semi-hard mining (Schroff et al. 2015)"),
    DmlLoss("margin", MarginParams, _margin, False,
            "margin loss with distance-weighted sampling (Wu et al. 2017)"),
    DmlLoss("multisimilarity", MultiSimilarityParams, _multisimilarity, False,
            "multi-similarity loss and miner (Wang et al. 2019)"),
    DmlLoss("proxy_anchor", ProxyAnchorParams, _proxy_anchor, True, "proxy anchor loss (Kim et al. 2020)"),
    DmlLoss("arcface", ArcFaceParams, _arcface, True, "additive angular margin loss (Deng et al. 2019)"),
    DmlLoss("normsoftmax", NormSoftmaxParams, _normsoftmax, True, "normalised softmax (Zhai & Wu 2019)"),
    DmlLoss("histogram", HistogramParams, _histogram, False, "histogram loss (Ustinova & Lempitsky 2016)"),
)


class DmlMethod(EmbeddingMethod):
    """An embedding trained with one DML loss; `adapted_*` entries fine-tune it on the support."""

    def __init__(self, info: MethodInfo, ctx: MethodContext, params: TrainParams, loss: DmlLoss) -> None:
        super().__init__(info, ctx, params)
        self.loss = loss
        self.init_proxies_on_adapt = loss.proxies

    def make_objective(self, n_classes: int, stage: str) -> nn.Module:
        """The PML loss (and miner) for `n_classes` classes."""
        return self.loss.build(self.params, n_classes)

    def objective_groups(self, objective: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Proxies at lr x proxy_lr_scale; the margin loss's learned beta at beta_lr."""
        beta = [q for n, q in objective.named_parameters() if n.endswith("beta") and q.requires_grad]
        rest = [q for n, q in objective.named_parameters() if not n.endswith("beta") and q.requires_grad]
        scale = float(getattr(self.params, "proxy_lr_scale", 1.0))
        groups = [{"params": rest, "lr": lr * scale}]
        if beta:
            groups.append({"params": beta, "lr": float(getattr(self.params, "beta_lr", lr))})
        return groups


def register_dml_loss(name: str, params: type, build: ObjectiveFn, *, description: str,
                      proxies: bool = False) -> DmlLoss:
    """Register a DML loss as two methods: `name` (trained on the source) and `adapted_<name>` (also fine-tuned on
    the k-shot support); both take the add-ons. Built-in losses and plugins register the same way.

    Args:
        name: method name.
        params: its hyperparameter dataclass (a `TrainParams` subclass with the loss's own fields).
        build: (params, n_classes) -> objective module mapping (embeddings, labels) to a loss, e.g. a
            `PmlObjective` around a pytorch-metric-learning loss.
        description: one line for `oodml list methods`.
        proxies: the objective holds one proxy per class (initialised at the support means when adapting).
    """
    loss = DmlLoss(name, params, build, proxies, description)

    def plain(info: MethodInfo, ctx: MethodContext, params: TrainParams) -> Method:
        return DmlMethod(info, ctx, params, loss)

    METHODS.add(MethodInfo(loss.name, family="dml", trains=True, uses_support=False, params=loss.params, addons=True,
                           description=loss.description), plain)
    METHODS.add(MethodInfo(f"adapted_{loss.name}", family="adapted", trains=True, uses_support=True, addons=True,
                           params=loss.params, description=f"{loss.description}, fine-tuned on the k-shot support",
                           fits_as=loss.name), plain)
    return loss


for _loss in DML_LOSSES:
    register_dml_loss(_loss.name, _loss.params, _loss.build, description=_loss.description, proxies=_loss.proxies)

METHODS.alias("adapted_hist", "adapted_histogram")
