"""The shared trainable method, model side: a cohort of embedding nets (one without a cohort add-on), each with its
training objective; fitting, adapting, embedding and the fitted state.

Subclasses choose the objective (`make_objective`) and, if needed, the batch layout (`batch_indices`); the
iteration loop is `oodml.methods.trainer.Trainer`, and add-ons plug in through `add_regularizer` / `set_cohort`
(`oodml.methods.hooks`). Everything random is seeded from `MethodContext.seed`: batches from numpy Generators, weight
init, PML miners and views from a forked torch RNG, so the global RNG state is neither used nor changed.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oodml.errors import OodmlError
from oodml.methods.base import Inputs, Method, MethodContext, MethodInfo
from oodml.methods.batches import balanced_batch
from oodml.methods.hooks import SINGLE, Cohort, Regularizer
from oodml.methods.losses import init_proxies
from oodml.methods.nets import EmbeddingNet, batched_forward, build_trunk, make_head
from oodml.methods.params import TrainParams
from oodml.methods.trainer import Group, PlateauStop, Trainer, ValSelect, Watcher, net_groups, trainable
from oodml.seeding import derive_seed, seeded_torch


def class_means(e: torch.Tensor, y: np.ndarray, n_classes: int) -> torch.Tensor:
    """(C, d) mean embedding per class label 0..C-1."""
    yt = torch.as_tensor(y, dtype=torch.long, device=e.device)
    sums = torch.zeros(n_classes, e.shape[1], dtype=e.dtype, device=e.device).index_add_(0, yt, e)
    counts = torch.bincount(yt, minlength=n_classes).clamp_min(1).to(e.dtype)
    return sums / counts[:, None]


def loo_nn_accuracy(e: torch.Tensor, y: np.ndarray) -> float | None:
    """Leave-one-out 1-nearest-neighbour accuracy (Euclidean) among the rows of `e` whose class has >= 2 rows;
    None when no class has 2 (nothing to score)."""
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    counts = torch.bincount(labels)
    scored = counts[labels] >= 2
    if not bool(scored.any()):
        return None
    d = torch.cdist(e.double(), e.double())
    d.fill_diagonal_(float("inf"))
    hit = labels[d.argmin(dim=1)] == labels
    return float(hit[scored].double().mean())


class EmbeddingMethod(Method):
    """A method that trains an embedding (head, or backbone + head) with an objective; takes the add-ons.

    Args:
        info: the registry entry.
        ctx: regime, feature dim, backbone, device, seed.
        params: the method's hyperparameters (a `TrainParams` subclass).
    """

    #: initialise the adaptation objective's class proxies at the support class means
    init_proxies_on_adapt: bool = False
    #: False for methods whose adaptation starts from scratch instead of the source model (`baseline`)
    adapts_source_model: bool = True
    #: False for methods that train nothing on the source (`baseline`): the fit stage has no parameter groups
    fit_trains: bool = True

    def __init__(self, info: MethodInfo, ctx: MethodContext, params: TrainParams) -> None:
        self.info = info
        self.ctx = ctx
        self.params = params
        #: terms added to every model's loss (`+sec`, `+dmml`), in add-on order
        self.regularizers: list[Regularizer] = []
        #: how many models train together and how they differ (`+dmml`)
        self.cohort: Cohort = SINGLE
        self.spec = info.name
        #: seeds derive from this name: `adapted_X` fits the very same source model as `X` (same init and batches)
        self.seed_name = info.name.removeprefix("adapted_")
        self.nets: list[EmbeddingNet] = []
        self.objectives: list[nn.Module] = []
        self.in_dim: int | None = ctx.in_dim
        self.n_classes = 0
        self.support_shots = 1  # images per class of the support being adapted on (picks the `adapt_iterations` entry)
        self.selection: dict[str, Any] = {}  # how the source model was chosen (`select=val`, `epochs`)

    # ----------------------------------------------------------------------------------------------- hooks
    @abstractmethod
    def make_objective(self, n_classes: int, stage: str) -> nn.Module:
        """The training objective for `n_classes` classes (labels 0..n-1) at `stage` ('fit' or 'adapt')."""

    def batch_indices(self, y: np.ndarray, rng: np.random.Generator, stage: str) -> np.ndarray:
        """Row indices of the next training batch (default: class-balanced)."""
        return balanced_batch(y, self.params.batch_size, self.params.samples_per_class, rng)

    def objective_groups(self, objective: nn.Module, lr: float) -> list[Group]:
        """Optimizer parameter groups of the objective's own parameters."""
        scale = float(getattr(self.params, "proxy_lr_scale", 1.0))
        params = [p for p in objective.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr * scale}]

    # ----------------------------------------------------------------------------------------------- add-ons
    def add_regularizer(self, regularizer: Regularizer) -> None:
        """Add a term to every model's training loss (after the objective and earlier terms)."""
        self.regularizers.append(regularizer)

    def set_cohort(self, cohort: Cohort) -> None:
        """Train a cohort of models by `cohort`'s rule instead of one model."""
        self.cohort = cohort

    @property
    def n_models(self) -> int:
        """Cohort size (1 without a cohort add-on)."""
        return self.cohort.size

    # ----------------------------------------------------------------------------------------------- building
    def _seed(self, *key: object) -> int:
        return derive_seed(self.ctx.seed, self.seed_name, *key)

    def _build(self, n_classes: int) -> None:
        """Fresh nets (each seeded by its cohort index) and fit objectives."""
        self.n_classes = n_classes
        p = self.params
        self.nets, self.objectives = [], []
        for m in range(self.n_models):
            with seeded_torch(self._seed("init", m)):
                trunk, trunk_dim, freeze = build_trunk(self.ctx.regime, self.ctx.backbone)
                in_dim = trunk_dim if trunk_dim is not None else self.in_dim
                if in_dim is None:
                    raise OodmlError("the head regime needs the feature dimension; fit on features first")
                net = EmbeddingNet(trunk, make_head(in_dim, p.embed_dim, p.head, p.hidden_dim), freeze)
                self.nets.append(net.to(self.ctx.device))
                self.objectives.append(self.make_objective(n_classes, "fit").to(self.ctx.device))

    # ----------------------------------------------------------------------------------------------- training
    def _groups(self, stage: str) -> list[list[Group]]:
        """Per model, the optimizer groups `stage` trains: the net's part and the objective's own parameters."""
        if stage == "fit" and not self.fit_trains:
            return [[] for _ in self.nets]
        out = []
        for net, objective in zip(self.nets, self.objectives, strict=True):
            groups, lr = net_groups(net, self.params, stage)
            out.append(trainable(groups + self.objective_groups(objective, lr)))
        return out

    def _trainer(self, stage: str) -> Trainer:
        return Trainer(self.nets, self.objectives, self.params, stage, self.ctx.regime, self.ctx.device,
                       batches=lambda y, rng: self.batch_indices(y, rng, stage), seed=self._seed,
                       regularizers=self.regularizers, cohort=self.cohort,
                       label=f"{stage} {self.spec}" if stage == "fit" else None)

    def _train(self, x: Inputs, y: np.ndarray, stage: str, val: tuple[Inputs, np.ndarray] | None = None) -> None:
        p = self.params
        iterations = p.fit_iterations(len(y)) if stage == "fit" else p.adapt_iterations_for(self.support_shots)
        groups = self._groups(stage)
        if iterations == 0 or not any(groups):
            return
        watchers: list[Watcher] = []
        if stage == "adapt" and p.adapt_stop == "plateau":
            watchers.append(PlateauStop(lambda: self.support_score(x, y), p.adapt_check_every, p.adapt_patience,
                                        p.adapt_min_gain))
        if val is not None:
            watchers.append(ValSelect(lambda: self.val_score(*val), p.select_every, iterations, self.selection,
                                      p.select_patience))
        rng = np.random.default_rng(self._seed(stage, "batches"))
        self._trainer(stage).run(x, y, iterations, rng, groups, watchers)

    def val_score(self, x: Inputs, y: np.ndarray) -> float:
        """`select_metric` of model 1's embeddings of the validation classes (`select=val`), as the evaluation computes
        it: recall@1, or recall@1 + ooDML's mAP@1000."""
        from oodml.eval import retrieval_metrics
        from oodml.eval.metrics import map_at_k_metric, recall_metric
        from oodml.eval.retrieval import retrieval_per_query

        if self.params.select_metric == "recall@1":
            return float(retrieval_metrics(self._embed_net(0, x), np.asarray(y), (1,))["recall@1"])
        parts = self.params.select_metric.split("+")
        entries = [recall_metric(1) if n == "recall@1" else map_at_k_metric(int(n.removeprefix("map@"))) for n in parts]
        summary = retrieval_per_query(self._embed_net(0, x), np.asarray(y), metrics=entries).summary()
        return float(sum(summary[n] for n in parts))

    def support_score(self, x: Inputs, y: np.ndarray) -> float | None:
        """How well model 1 fits the support `x` (labels 0..C-1), for the `plateau` adaptation stop: leave-one-out
        1-NN accuracy of its embeddings; None when no class has two images."""
        return loo_nn_accuracy(torch.from_numpy(self._embed_net(0, x)), y)

    # ----------------------------------------------------------------------------------------------- protocol
    @property
    def selects_on_val(self) -> bool:
        """True when the source fit wants validation classes (`select=val`)."""
        return self.params.select == "val"

    def fit(self, x: Inputs, y: np.ndarray, val: tuple[Inputs, np.ndarray] | None = None) -> None:
        """Train on the source classes (labels are re-indexed to 0..C-1); with `select=val`, `val` (inputs and
        labels of the held-out validation classes) chooses the checkpoint."""
        classes, yi = np.unique(np.asarray(y), return_inverse=True)
        if self.in_dim is None and hasattr(x, "dim"):
            self.in_dim = int(x.dim)  # type: ignore[attr-defined]
        if self.selects_on_val and val is None:
            raise OodmlError(f"{self.spec}: select=val needs validation classes; the split level has none (rebuild "
                             "the splits with val classes) or use select=last")
        p = self.params
        self.selection = {"iterations": p.fit_iterations(len(yi)), "epochs": p.epochs} if p.epochs > 0 else {}
        with seeded_torch(self._seed("fit")):
            self._build(len(classes))
            self._train(x, yi.astype(np.int64), "fit", val if self.selects_on_val else None)

    def fit_record(self) -> dict[str, Any]:
        """How the source model was trained and chosen (epochs, `select=val`: kept iteration and val curve)."""
        return dict(self.selection)

    def prepare_adapt(self, x: Inputs, y: np.ndarray, n_classes: int) -> None:
        """Replace the objectives by ones for the target classes (proxies at the support means if configured)."""
        self.objectives = []
        for m in range(self.n_models):
            obj = self.make_objective(n_classes, "adapt").to(self.ctx.device)
            if self.init_proxies_on_adapt:
                e = torch.from_numpy(self._embed_net(m, x))
                init_proxies(obj, class_means(e, y, n_classes))
            self.objectives.append(obj)
        self.n_classes = n_classes

    def adapt(self, x: Inputs, y: np.ndarray) -> Method:
        """A fine-tuned copy (when the method uses the support; otherwise an untouched copy)."""
        if self.info.uses_support and self.params.adapt_protocol == "oodml":
            return next(self.adapt_episodes([(x, y)]))
        new = copy.deepcopy(self)
        if not self.info.uses_support:
            return new
        if not new.nets:
            raise OodmlError(f"{self.spec}: call fit before adapt")
        classes, yi = np.unique(np.asarray(y), return_inverse=True)
        yi = yi.astype(np.int64)
        new.support_shots = int(np.bincount(yi).min())
        with seeded_torch(self._seed("adapt")):
            new.prepare_adapt(x, yi, len(classes))
            if new.params.adapt_stop == "plateau" and new.support_score(x, yi) is None:
                return new  # one image per class: nothing to score the adaptation on (Scott et al. don't adapt)
            new._train(x, yi, "adapt")
        return new

    def adapt_episodes(self, supports: Sequence[tuple[Inputs, np.ndarray]],
                       seeds: Sequence[int] | None = None) -> Iterator[Method]:
        """Adapted copies for many supports. With `adapt_protocol=oodml`, every support's (and cohort model's) last
        layer is fine-tuned in one batched computation (`oodml.methods.batched`); otherwise one support at a time.

        The copies share the source model's frozen backbone (it is not trained by this protocol).
        """
        if not (self.info.uses_support and self.params.adapt_protocol == "oodml"):
            return super().adapt_episodes(supports, seeds)
        return iter(self._adapt_batched(supports))

    def _adapt_batched(self, supports: Sequence[tuple[Inputs, np.ndarray]]) -> list[Method]:
        from oodml.methods.batched import AdaptTask, adapt_last_layers

        if not self.nets:
            raise OodmlError(f"{self.spec}: call fit before adapt")
        if not self.adapts_source_model:
            raise OodmlError(f"{self.spec} trains from scratch on the support; adapt_protocol=oodml fine-tunes a "
                             "source model's last layer, so use adapt_protocol=own_loss for it")
        p = self.params
        lasts: list[nn.Linear] = []
        for net in self.nets:
            layer = net.last_layer()
            if not isinstance(layer, nn.Linear) or layer.bias is None:
                raise OodmlError(f"{self.spec}: adapt_protocol=oodml needs a linear last layer with a bias")
            lasts.append(layer)
        tasks: list[AdaptTask] = []
        for x, y in supports:
            yi = np.unique(np.asarray(y), return_inverse=True)[1].astype(np.int64)
            iterations = p.adapt_iterations_for(int(np.bincount(yi).min()))
            for m in range(self.n_models):
                g = torch.Generator().manual_seed(self._seed("adapt", "miner", m))
                tasks.append(AdaptTask(self._frozen_part(m, x), yi, iterations,
                                       np.random.default_rng(self._seed("adapt", "batches")), g))
        weight = torch.stack([layer.weight.detach() for layer in lasts] * len(supports))
        bias = torch.stack([layer.bias.detach() for layer in lasts] * len(supports))
        adapt_last_layers(weight, bias, tasks, lr=p.adapt_lr, weight_decay=p.weight_decay,
                          batch=lambda y, rng: balanced_batch(y, p.batch_size, p.samples_per_class, rng))
        out: list[Method] = []
        shared = {id(net.trunk): net.trunk for net in self.nets}
        for i in range(len(supports)):
            new = copy.deepcopy(self, dict(shared))
            for m, net in enumerate(new.nets):
                last = net.last_layer()
                assert isinstance(last, nn.Linear)
                with torch.no_grad():
                    last.weight.copy_(weight[i * self.n_models + m])
                    last.bias.copy_(bias[i * self.n_models + m])
                net.eval()
            out.append(new)
        return out

    def _frozen_part(self, m: int, x: Inputs) -> torch.Tensor | Callable[[np.ndarray], torch.Tensor]:
        """Inputs of model m's last layer (backbone and earlier head layers in eval mode, no gradients): on cached
        features computed once for all of `x` (a tensor), else a function rows -> inputs."""
        net = self.nets[m].eval()
        dev = self.ctx.device

        def below_last(xb: torch.Tensor) -> torch.Tensor:
            h = net.trunk(xb)
            for layer in list(net.head)[:-1]:
                h = layer(h)
            return h

        if self.ctx.regime == "head":
            bs = 4096
            return torch.from_numpy(batched_forward(below_last, x, dev, bs)).to(dev)

        def fetch(rows: np.ndarray) -> torch.Tensor:
            with torch.no_grad():
                return below_last(x.fetch(rows, train=True).to(dev))

        return fetch

    def adaptation_record(self, shots: int) -> dict[str, Any]:
        """Protocol, objective, iterations (the schedule's entry for `shots`), learning rate and scope."""
        if not self.info.uses_support:
            return {}
        p = self.params
        rec: dict[str, Any] = {"protocol": p.adapt_protocol, "iterations": p.adapt_iterations_for(shots),
                               "lr": p.adapt_lr, "scope": p.adapt_scope}
        if p.adapt_protocol == "oodml":
            rec["objective"] = "margin 0.2, beta 1.2 fixed, distance-weighted miner cutoffs 0.5/1.4"
            rec["batch"] = [p.batch_size, p.samples_per_class]
        else:
            rec["objective"] = "own"
            rec["stop"] = p.adapt_stop
        return rec

    def _embed_net(self, m: int, x: Inputs) -> np.ndarray:
        net = self.nets[m].eval()
        bs = 4096 if self.ctx.regime == "head" else 64
        fn = (lambda xb: F.normalize(net(xb), dim=1)) if self.params.normalize else net
        return batched_forward(fn, x, self.ctx.device, bs)

    def embed(self, x: Inputs) -> np.ndarray:
        """(N, embed_dim) float32 embeddings of model 1 (L2-normalised when `normalize`)."""
        if not self.nets:
            raise OodmlError(f"{self.spec}: call fit before embed")
        return self._embed_net(0, x)

    def embed_variants(self, x: Inputs) -> dict[str, np.ndarray]:
        """'' = model 1, and the cohort's variants (with `+dmml`, 'ensemble')."""
        parts = [self.embed(x)] + [self._embed_net(m, x) for m in range(1, self.n_models)]
        return self.cohort.variants(parts)

    def state_dict(self) -> dict[str, Any]:
        """The fitted source state: nets and objectives of every cohort model (CPU tensors)."""

        def cpu(sd: dict[str, Any]) -> dict[str, Any]:
            return {k: v.detach().cpu().clone() for k, v in sd.items()}

        return {"in_dim": self.in_dim, "n_classes": self.n_classes, "selection": self.selection,
                "nets": [cpu(n.state_dict()) for n in self.nets],
                "objectives": [cpu(o.state_dict()) for o in self.objectives]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the nets and objectives and load a `state_dict`."""
        self.in_dim = state["in_dim"]
        self.selection = dict(state.get("selection", {}))
        self._build(int(state["n_classes"]))
        for net, sd in zip(self.nets, state["nets"], strict=True):
            net.load_state_dict(sd)
            net.eval()
        for obj, sd in zip(self.objectives, state["objectives"], strict=True):
            obj.load_state_dict(sd)

    def grad_probe(self, x: Inputs, y: np.ndarray, stage: str = "fit") -> list[str]:
        """Names of the parameters `stage` would train that get no finite gradient on one batch (for tests).

        Runs on a copy, so neither parameters nor BatchNorm statistics of `self` change.
        """
        probe = copy.deepcopy(self)
        yi = np.unique(np.asarray(y), return_inverse=True)[1].astype(np.int64)
        groups = probe._groups(stage)
        if not any(groups):
            return []
        with seeded_torch(probe._seed("probe")):
            return probe._trainer(stage).probe(x, yi, np.random.default_rng(probe._seed("probe")), groups)
