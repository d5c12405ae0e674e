"""The shared trainable method: an embedding net (or a cohort of them, `+dmml`) trained with an objective.

Subclasses choose the objective (`make_objective`) and, if needed, the batch layout (`batch_indices`). Everything
random is seeded from `MethodContext.seed`: batches from numpy Generators, weight init, PML miners and views from a
forked torch RNG, so the global RNG state is neither used nor changed.
"""

from __future__ import annotations

import contextlib
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
from oodml.methods.cohort import concat_normalized
from oodml.methods.losses import init_proxies, relational_mutual_loss, sec_loss
from oodml.methods.nets import EmbeddingNet, batched_forward, build_trunk, make_head
from oodml.methods.params import DmmlParams, SecParams, TrainParams
from oodml.progress import progress
from oodml.seeding import derive_seed

@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Run a block with the torch CPU RNG seeded to `seed`, restoring the previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def classes_batch(y: np.ndarray, chosen: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to `per_class` distinct random images of each class in `chosen`, laid out class by class in
    the order of `chosen`, shuffled within a class.

    One random key per row and one sort instead of a loop of per-class draws (~10x faster at 100 classes).
    """
    order = np.lexsort((rng.random(len(y)), y))  # grouped by class, random within a class
    classes, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    pos = np.searchsorted(classes, chosen)
    take = np.minimum(counts[pos], per_class)
    first = np.repeat(starts[pos], take)
    within = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    return order[first + within]


def balanced_batch(y: np.ndarray, batch_size: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a class-balanced batch: `batch_size // per_class` classes, up to `per_class` images of each."""
    classes = np.unique(y)
    n_cls = min(len(classes), max(1, batch_size // per_class))
    return classes_batch(y, rng.choice(classes, size=n_cls, replace=False), per_class, rng)


def episode_batch(y: np.ndarray, ways: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of an episode laid out class by class: `ways` classes, up to `per_class` shuffled images each."""
    classes = np.unique(y)
    return classes_batch(y, rng.choice(classes, size=min(ways, len(classes)), replace=False), per_class, rng)


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


class _Plateau:
    """Scott et al.'s stopping rule for the adaptation: keep the weights with the best support score; stop once the
    best score gained less than `min_gain` (relative) since the previous window."""

    def __init__(self, min_gain: float) -> None:
        self.min_gain = min_gain
        self.best = float("-inf")
        self.best_state: Any = None
        self.reference = 0.0

    def update(self, score: float | None, snapshot: Callable[[], Any]) -> None:
        """Record a scoring; snapshot the weights when the score is a new best (ties keep the earlier weights)."""
        if score is not None and score > self.best:
            self.best, self.best_state = score, snapshot()

    def plateaued(self) -> bool:
        """At the end of a window: True to stop."""
        if self.best - self.reference < self.min_gain * self.reference or self.best == float("-inf"):
            return True
        self.reference = self.best
        return False


class EmbeddingMethod(Method):
    """A method that trains an embedding (head, or backbone + head) with an objective; supports `+sec`/`+dmml`.

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
        self.sec: SecParams | None = None
        self.dmml: DmmlParams | None = None
        self.spec = info.name
        #: seeds derive from this name: `adapted_X` fits the very same source model as `X` (same init and batches)
        self.seed_name = info.name.removeprefix("adapted_")
        self.nets: list[EmbeddingNet] = []
        self.objectives: list[nn.Module] = []
        self.in_dim: int | None = ctx.in_dim
        self.n_classes = 0
        self.adapt_shots = 1
        self.adapt_k = 1  # shots of the support being adapted on (picks the `adapt_iterations` entry)
        self.selection: dict[str, Any] = {}  # how the source model was chosen (`select=val`, `epochs`)

    # ----------------------------------------------------------------------------------------------- hooks
    @abstractmethod
    def make_objective(self, n_classes: int, stage: str) -> nn.Module:
        """The training objective for `n_classes` classes (labels 0..n-1) at `stage` ('fit' or 'adapt')."""

    def batch_indices(self, y: np.ndarray, rng: np.random.Generator, stage: str) -> np.ndarray:
        """Row indices of the next training batch (default: class-balanced)."""
        return balanced_batch(y, self.params.batch_size, self.params.samples_per_class, rng)

    def objective_groups(self, objective: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the objective's own parameters."""
        scale = float(getattr(self.params, "proxy_lr_scale", 1.0))
        params = [p for p in objective.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr * scale}]

    # ----------------------------------------------------------------------------------------------- add-ons
    @property
    def n_models(self) -> int:
        """Cohort size (1 without `+dmml`)."""
        return self.dmml.dmml_models if self.dmml is not None else 1

    def _update_every(self, m: int) -> int:
        if self.dmml is None:
            return 1
        every = self.dmml.dmml_update_every
        return int(every[m % len(every)])

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

    def _embed_train(self, net: EmbeddingNet, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = net(xb)
        return z, (F.normalize(z, dim=1) if self.params.normalize else z)

    def _view(self, x: Inputs, idx: np.ndarray, m: int, key: tuple[object, ...]) -> torch.Tensor:
        """Model m's input batch: augmented images (full), or features with noise/dropout for views >= 1 (head)."""
        dev = self.ctx.device
        if self.ctx.regime == "full":
            return x.fetch(idx, train=True, view=m).to(dev)
        xb = x.fetch(idx, train=True, view=m).to(device=dev, dtype=torch.float32)
        if m == 0 or self.dmml is None:
            return xb
        g = torch.Generator().manual_seed(self._seed("view", m, *key))
        keep = 1.0 - self.dmml.dmml_dropout
        mask = (torch.rand(xb.shape, generator=g) < keep).to(xb) / keep
        std = xb.std(dim=0, keepdim=True) if len(xb) > 1 else torch.ones_like(xb[:1])
        noise = torch.randn(xb.shape, generator=g).to(xb) * std * self.dmml.dmml_noise
        return xb * mask + noise

    # ----------------------------------------------------------------------------------------------- training
    def _param_groups(self, m: int, stage: str) -> list[dict[str, Any]]:
        p, net = self.params, self.nets[m]
        if stage == "fit" and not self.fit_trains:
            return []
        groups: list[dict[str, Any]]
        if stage == "fit":
            groups = [{"params": list(net.head.parameters()), "lr": p.lr},
                      {"params": list(net.trunk.parameters()), "lr": p.backbone_lr}]
            lr = p.lr
        elif p.adapt_scope == "last":
            groups = [{"params": list(net.last_layer().parameters()), "lr": p.adapt_lr}]
            lr = p.adapt_lr
        else:
            groups = [{"params": list(net.head.parameters()), "lr": p.adapt_lr},
                      {"params": list(net.trunk.parameters()), "lr": p.adapt_lr * p.backbone_lr / p.lr}]
            lr = p.adapt_lr
        groups += self.objective_groups(self.objectives[m], lr)
        out = []
        for g in groups:
            params = [q for q in g["params"] if q.requires_grad]
            if params:
                out.append({**g, "params": params})
        return out

    def _train_mode(self, stage: str) -> None:
        """Train mode for what `stage` trains; the frozen part stays in eval mode (no BatchNorm statistics change),
        and so does every BatchNorm layer when adapting with `adapt_bn=frozen`."""
        for net in self.nets:
            net.train()
            if stage == "adapt" and self.params.adapt_scope == "last":
                for mod in [net.trunk, *list(net.head)[:-1]]:
                    mod.eval()
            if stage == "adapt" and self.params.adapt_bn == "frozen":
                for mod in net.modules():
                    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                        mod.eval()

    def _losses(self, x: Inputs, idx: np.ndarray, y: np.ndarray, key: tuple[object, ...]) -> list[torch.Tensor]:
        """One loss per cohort model on the batch `idx` (labels `y` are 0..C-1)."""
        yb = torch.as_tensor(y[idx], dtype=torch.long, device=self.ctx.device)
        outs = [self._embed_train(net, self._view(x, idx, m, key)) for m, net in enumerate(self.nets)]
        losses = []
        for m, (z, e) in enumerate(outs):
            loss = self.objectives[m](e, yb)
            if self.sec is not None and self.sec.sec_eta > 0:
                loss = loss + self.sec.sec_eta * sec_loss(z)
            if self.dmml is not None and self.dmml.dmml_weight > 0:
                others = [o[1].detach() for n, o in enumerate(outs) if n != m]
                loss = loss + self.dmml.dmml_weight * relational_mutual_loss(e, others)
            losses.append(loss)
        return losses

    @contextlib.contextmanager
    def _only_training(self, groups: list[list[dict[str, Any]]]) -> Iterator[None]:
        """Switch off gradients of parameters outside `groups` (so frozen parts cost no backward pass)."""
        keep = {id(q) for gs in groups for g in gs for q in g["params"]}
        frozen = [q for mod in [*self.nets, *self.objectives] for q in mod.parameters()
                  if q.requires_grad and id(q) not in keep]
        for q in frozen:
            q.requires_grad_(False)
        try:
            yield
        finally:
            for q in frozen:
                q.requires_grad_(True)

    def _train(self, x: Inputs, y: np.ndarray, stage: str, val: tuple[Inputs, np.ndarray] | None = None) -> None:
        p = self.params
        iterations = p.fit_iterations(len(y)) if stage == "fit" else p.adapt_iterations_for(self.adapt_k)
        groups = [self._param_groups(m, stage) for m in range(self.n_models)]
        if iterations == 0 or not any(groups):
            return
        rng = np.random.default_rng(self._seed(stage, "batches"))
        prefetch = getattr(x, "prefetch", None)
        if prefetch is not None:  # full regime: workers decode/augment the same batches, drawn ahead from a copy
            ahead = copy.deepcopy(rng)
            prefetch((b, True, m) for b in (self.batch_indices(y, ahead, stage) for _ in range(iterations))
                     for m in range(self.n_models))
        opts = [torch.optim.Adam(g, weight_decay=p.weight_decay) if g else None for g in groups]
        self._train_mode(stage)
        show = progress(f"{stage} {self.spec}", iterations) if stage == "fit" else contextlib.nullcontext()
        stop = _Plateau(p.adapt_min_gain) if stage == "adapt" and p.adapt_stop == "plateau" else None
        best = _Plateau(0.0) if val is not None else None
        curve: list[list[float]] = []
        with self._only_training(groups), show as bar:
            for it in range(iterations):
                idx = self.batch_indices(y, rng, stage)
                for opt in opts:
                    if opt is not None:
                        opt.zero_grad(set_to_none=True)
                total = torch.stack(self._losses(x, idx, y, (stage, it))).sum()
                if total.requires_grad:
                    total.backward()
                    for m, opt in enumerate(opts):
                        if opt is not None and it % self._update_every(m) == 0:
                            opt.step()
                if bar is not None:
                    bar.update(1)
                if stop is not None and (it + 1) % p.adapt_check_every == 0:
                    stop.update(self.support_score(x, y), self._snapshot)
                    self._train_mode(stage)
                if stop is not None and (it + 1) % p.adapt_patience == 0 and stop.plateaued():
                    break
                if best is not None and val is not None and ((it + 1) % p.select_every == 0 or it + 1 == iterations):
                    score = self.val_score(*val)
                    curve.append([it + 1, score])
                    best.update(score, lambda: (it + 1, self._snapshot()))
                    self._train_mode(stage)
        if stop is not None and stop.best_state is not None:
            self._restore(stop.best_state)
        if best is not None and best.best_state is not None:
            kept, state = best.best_state
            self._restore(state)
            self.selection.update(select="val", every=p.select_every, kept_iteration=kept, val_curve=curve)
        for net in self.nets:
            net.eval()

    def _snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return ([copy.deepcopy(n.state_dict()) for n in self.nets],
                [copy.deepcopy(o.state_dict()) for o in self.objectives])

    def _restore(self, state: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
        for module, sd in zip([*self.nets, *self.objectives], [*state[0], *state[1]]):
            module.load_state_dict(sd)

    def val_score(self, x: Inputs, y: np.ndarray) -> float:
        """Recall@1 of model 1's embeddings of the validation classes (`select=val`), as the evaluation computes it."""
        from oodml.eval import retrieval_metrics

        return float(retrieval_metrics(self._embed_net(0, x), np.asarray(y), (1,))["recall@1"])

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
        counts = np.bincount(y, minlength=n_classes)
        self.adapt_shots = max(1, int(counts.min()) // 2)
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
        new.adapt_k = int(np.bincount(yi).min())
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

    def adaptation_record(self, k: int) -> dict[str, Any]:
        """Protocol, objective, iterations (this k's entry of the schedule), learning rate and scope."""
        if not self.info.uses_support:
            return {}
        p = self.params
        rec: dict[str, Any] = {"protocol": p.adapt_protocol, "iterations": p.adapt_iterations_for(k),
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
        """'' = model 1; with `+dmml` also 'ensemble' = normalised concatenation of the normalised cohort."""
        first = self.embed(x)
        if self.dmml is None:
            return {"": first}
        parts = [first] + [self._embed_net(m, x) for m in range(1, self.n_models)]
        return {"": first, "ensemble": concat_normalized(parts)}

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
        return copy.deepcopy(self)._grad_probe(x, y, stage)

    def _grad_probe(self, x: Inputs, y: np.ndarray, stage: str) -> list[str]:
        _, yi = np.unique(np.asarray(y), return_inverse=True)
        yi = yi.astype(np.int64)
        groups = [self._param_groups(m, stage) for m in range(self.n_models)]
        if not any(groups):
            return []
        names = {id(q): f"model{m}.{prefix}.{n}" for m, mods in enumerate(zip(self.nets, self.objectives))
                 for prefix, mod in zip(("net", "objective"), mods) for n, q in mod.named_parameters()}
        for mod in [*self.nets, *self.objectives]:
            mod.zero_grad(set_to_none=True)
        self._train_mode(stage)
        with seeded_torch(self._seed("probe")), self._only_training(groups):
            rng = np.random.default_rng(self._seed("probe"))
            total = torch.stack(self._losses(x, self.batch_indices(yi, rng, stage), yi, ("probe",))).sum()
            if total.requires_grad:
                total.backward()
        missing = [names[id(q)] for gs in groups for g in gs for q in g["params"]
                   if q.grad is None or not bool(torch.isfinite(q.grad).all())]
        return missing
