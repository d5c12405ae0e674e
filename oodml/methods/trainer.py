"""The training loop, separate from the model (in the spirit of pytorch-metric-learning's trainers).

A `Trainer` runs one training stage (`fit` on the source, `adapt` on a support) of a cohort of embedding nets: it
draws batches with the method's sampler, computes each model's objective plus the regularizer terms that add-ons
contribute (`oodml.methods.hooks`), steps one Adam per model (as often as the cohort rule says), and calls its
watchers after every iteration: `PlateauStop` (Scott et al.'s adaptation stop) and `ValSelect` (checkpoint chosen on
validation classes). Everything random comes from the Generator it is given and the torch RNG the caller seeded.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oodml.methods.base import Inputs
from oodml.methods.hooks import SINGLE, Cohort, Outputs, Regularizer
from oodml.methods.nets import EmbeddingNet
from oodml.methods.params import TrainParams
from oodml.progress import progress

#: an optimizer parameter group: {"params": [...], "lr": ...}
Group = dict[str, Any]
#: the modules' state dicts, in order (a checkpoint kept in memory)
Snapshot = list[dict[str, Any]]


def net_groups(net: EmbeddingNet, params: TrainParams, stage: str) -> tuple[list[Group], float]:
    """The net's optimizer groups at `stage` and the learning rate the objective's own parameters start from.

    fit: head at `lr`, trunk at `backbone_lr`; adapt: the last layer (`adapt_scope=last`) or everything
    (`all`: the head at `adapt_lr`, the trunk scaled by backbone_lr / lr).
    """
    p = params
    if stage == "fit":
        return ([{"params": list(net.head.parameters()), "lr": p.lr},
                 {"params": list(net.trunk.parameters()), "lr": p.backbone_lr}], p.lr)
    if p.adapt_scope == "last":
        return [{"params": list(net.last_layer().parameters()), "lr": p.adapt_lr}], p.adapt_lr
    return ([{"params": list(net.head.parameters()), "lr": p.adapt_lr},
             {"params": list(net.trunk.parameters()), "lr": p.adapt_lr * p.backbone_lr / p.lr}], p.adapt_lr)


def trainable(groups: Sequence[Group]) -> list[Group]:
    """The groups restricted to parameters that require a gradient; empty groups dropped."""
    out = []
    for g in groups:
        params = [q for q in g["params"] if q.requires_grad]
        if params:
            out.append({**g, "params": params})
    return out


def train_mode(nets: Sequence[EmbeddingNet], stage: str, params: TrainParams) -> None:
    """Train mode for what `stage` trains; the frozen part stays in eval mode (no BatchNorm statistics change),
    and so does every BatchNorm layer when adapting with `adapt_bn=frozen`."""
    for net in nets:
        net.train()
        if stage == "adapt" and params.adapt_scope == "last":
            for mod in [net.trunk, *list(net.head)[:-1]]:
                mod.eval()
        if stage == "adapt" and params.adapt_bn == "frozen":
            for mod in net.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()


@contextlib.contextmanager
def only_training(modules: Sequence[nn.Module], groups: Sequence[Sequence[Group]]) -> Iterator[None]:
    """Switch off gradients of the modules' parameters outside `groups` (so frozen parts cost no backward pass)."""
    keep = {id(q) for gs in groups for g in gs for q in g["params"]}
    frozen = [q for mod in modules for q in mod.parameters() if q.requires_grad and id(q) not in keep]
    for q in frozen:
        q.requires_grad_(False)
    try:
        yield
    finally:
        for q in frozen:
            q.requires_grad_(True)


def snapshot(modules: Sequence[nn.Module]) -> Snapshot:
    """Copies of the modules' state dicts."""
    return [copy.deepcopy(m.state_dict()) for m in modules]


def restore(modules: Sequence[nn.Module], state: Snapshot) -> None:
    """Load a `snapshot` back."""
    for module, sd in zip(modules, state, strict=True):
        module.load_state_dict(sd)


class Plateau:
    """Keep the state with the best score; `plateaued` says whether the best gained less than `min_gain`
    (relative) since the previous window."""

    def __init__(self, min_gain: float) -> None:
        self.min_gain = min_gain
        self.best = float("-inf")
        self.best_state: Any = None
        self.reference = 0.0

    def update(self, score: float | None, take: Callable[[], Any]) -> None:
        """Record a scoring; take the state when the score is a new best (ties keep the earlier state)."""
        if score is not None and score > self.best:
            self.best, self.best_state = score, take()

    def plateaued(self) -> bool:
        """At the end of a window: True to stop."""
        if self.best - self.reference < self.min_gain * self.reference or self.best == float("-inf"):
            return True
        self.reference = self.best
        return False


class Watcher(ABC):
    """Called after every training iteration (PML's end-of-iteration hook) and once after the loop."""

    @abstractmethod
    def after(self, it: int, trainer: Trainer) -> bool:
        """After iteration `it` (0-based): True stops the training."""

    @abstractmethod
    def finish(self, trainer: Trainer) -> None:
        """After the last iteration (e.g. restore the chosen weights)."""


@dataclass
class PlateauStop(Watcher):
    """Scott et al.'s adaptation stop: score the support every `check_every` iterations, keep the best-scoring
    weights, stop when the best gained less than `min_gain` (relative) over `patience` iterations."""

    score: Callable[[], float | None]
    check_every: int
    patience: int
    min_gain: float
    plateau: Plateau = field(init=False)

    def __post_init__(self) -> None:
        self.plateau = Plateau(self.min_gain)

    def after(self, it: int, trainer: Trainer) -> bool:
        """Score at the check points; True at a patience boundary where the score plateaued."""
        if (it + 1) % self.check_every == 0:
            self.plateau.update(self.score(), trainer.snapshot)
            trainer.train_mode()
        return (it + 1) % self.patience == 0 and self.plateau.plateaued()

    def finish(self, trainer: Trainer) -> None:
        """Restore the best-scoring weights."""
        if self.plateau.best_state is not None:
            trainer.restore(self.plateau.best_state)


@dataclass
class ValSelect(Watcher):
    """`select=val`: score the validation classes every `every` iterations and at the last one, keep the best
    checkpoint, and write what was kept into `record` (kept iteration, the validation curve); with `patience` > 0,
    stop once that many scorings in a row brought no new best (early stopping)."""

    score: Callable[[], float]
    every: int
    iterations: int
    record: dict[str, Any]
    patience: int = 0
    plateau: Plateau = field(init=False, default_factory=lambda: Plateau(0.0))
    curve: list[list[float]] = field(init=False, default_factory=list)

    def after(self, it: int, trainer: Trainer) -> bool:
        """Score at the selection points; True (stop) when `patience` scorings in a row found no new best."""
        if (it + 1) % self.every == 0 or it + 1 == self.iterations:
            score = self.score()
            self.curve.append([it + 1, score])
            self.plateau.update(score, lambda: (it + 1, trainer.snapshot()))
            trainer.train_mode()
            return 0 < self.patience <= self.scorings_since_best()
        return False

    def scorings_since_best(self) -> int:
        """Scorings after the kept checkpoint (all of them while none is kept)."""
        kept = self.plateau.best_state[0] if self.plateau.best_state is not None else 0
        return sum(i > kept for i, _ in self.curve)

    def finish(self, trainer: Trainer) -> None:
        """Restore the kept checkpoint and record it."""
        if self.plateau.best_state is not None:
            kept, state = self.plateau.best_state
            trainer.restore(state)
            self.record.update(select="val", every=self.every, kept_iteration=kept, val_curve=self.curve)
            if self.patience:
                self.record.update(patience=self.patience, stopped_at=self.curve[-1][0])


@dataclass
class Trainer:
    """One training stage of a cohort of nets, each with its objective (see the module docstring).

    Attributes:
        nets, objectives: model m is `nets[m]` trained with `objectives[m]`.
        params: the method's hyperparameters (normalisation, weight decay, adaptation scope and BatchNorm rule).
        stage: 'fit' or 'adapt'.
        regime: 'head' (features) or 'full' (images).
        device: where the nets are.
        batches: (labels, rng) -> row indices of the next batch.
        seed: (*key) -> a seed of this method (for the cohort's per-model views).
        regularizers: terms added to each model's loss, in order.
        cohort: cohort rule (model count, update frequency, views).
        label: progress-bar label; None shows no progress.
    """

    nets: Sequence[EmbeddingNet]
    objectives: Sequence[nn.Module]
    params: TrainParams
    stage: str
    regime: str
    device: str
    batches: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    seed: Callable[..., int]
    regularizers: Sequence[Regularizer] = ()
    cohort: Cohort = SINGLE
    label: str | None = None

    @property
    def modules(self) -> list[nn.Module]:
        """Every net, then every objective."""
        return [*self.nets, *self.objectives]

    def snapshot(self) -> Snapshot:
        """The current weights of nets and objectives."""
        return snapshot(self.modules)

    def restore(self, state: Snapshot) -> None:
        """Load weights taken by `snapshot`."""
        restore(self.modules, state)

    def train_mode(self) -> None:
        """Train mode for what this stage trains (`train_mode`)."""
        train_mode(self.nets, self.stage, self.params)

    def inputs(self, x: Inputs, idx: np.ndarray, m: int, key: tuple[object, ...]) -> torch.Tensor:
        """Model m's input batch: augmented images of view m (full), or features through the cohort's view (head)."""
        if self.regime == "full":
            return x.fetch(idx, train=True, view=m).to(self.device)
        xb = x.fetch(idx, train=True, view=m).to(device=self.device, dtype=torch.float32)
        return self.cohort.perturb(xb, m, self.seed("view", m, *key))

    def outputs(self, net: EmbeddingNet, xb: torch.Tensor) -> Outputs:
        """(z, e): the net's embeddings and, with `normalize`, their L2-normalised version for the objective."""
        z = net(xb)
        return z, (F.normalize(z, dim=1) if self.params.normalize else z)

    def losses(self, x: Inputs, idx: np.ndarray, y: np.ndarray, key: tuple[object, ...]) -> list[torch.Tensor]:
        """One loss per model on the batch `idx` (labels `y` are 0..C-1): objective plus regularizer terms."""
        yb = torch.as_tensor(y[idx], dtype=torch.long, device=self.device)
        outs = [self.outputs(net, self.inputs(x, idx, m, key)) for m, net in enumerate(self.nets)]
        losses = []
        for m, (_, e) in enumerate(outs):
            loss = self.objectives[m](e, yb)
            for reg in self.regularizers:
                term = reg.term(m, outs)
                if term is not None:
                    loss = loss + term
            losses.append(loss)
        return losses

    def step(self, x: Inputs, y: np.ndarray, idx: np.ndarray, opts: Sequence[torch.optim.Optimizer | None],
             it: int) -> None:
        """One iteration on the batch `idx`: every model's loss, one backward pass, the due optimizer steps."""
        for opt in opts:
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        total = torch.stack(self.losses(x, idx, y, (self.stage, it))).sum()
        if total.requires_grad:
            total.backward()
            for m, opt in enumerate(opts):
                if opt is not None and it % self.cohort.update_every(m) == 0:
                    opt.step()

    def run(self, x: Inputs, y: np.ndarray, iterations: int, rng: np.random.Generator,
            groups: Sequence[Sequence[Group]], watchers: Sequence[Watcher] = ()) -> None:
        """Train for up to `iterations` steps, model m on its parameter groups `groups[m]`; nets end in eval mode."""
        prefetch = getattr(x, "prefetch", None)
        if prefetch is not None:  # full regime: workers decode/augment the same batches, drawn ahead from a copy
            ahead = copy.deepcopy(rng)
            prefetch((b, True, m) for b in (self.batches(y, ahead) for _ in range(iterations))
                     for m in range(len(self.nets)))
        opts = [torch.optim.Adam(g, weight_decay=self.params.weight_decay) if g else None for g in groups]
        self.train_mode()
        show = progress(self.label, iterations) if self.label else contextlib.nullcontext()
        with only_training(self.modules, groups), show as bar:
            for it in range(iterations):
                self.step(x, y, self.batches(y, rng), opts, it)
                if bar is not None:
                    bar.update(1)
                if any([w.after(it, self) for w in watchers]):
                    break
        for w in watchers:
            w.finish(self)
        for net in self.nets:
            net.eval()

    def probe(self, x: Inputs, y: np.ndarray, rng: np.random.Generator,
              groups: Sequence[Sequence[Group]]) -> list[str]:
        """Names of the parameters in `groups` that get no finite gradient from one batch (for tests)."""
        names = {id(q): f"model{m}.{prefix}.{n}" for m, mods in enumerate(zip(self.nets, self.objectives))
                 for prefix, mod in zip(("net", "objective"), mods) for n, q in mod.named_parameters()}
        for mod in self.modules:
            mod.zero_grad(set_to_none=True)
        self.train_mode()
        with only_training(self.modules, groups):
            total = torch.stack(self.losses(x, self.batches(y, rng), y, ("probe",))).sum()
            if total.requires_grad:
                total.backward()
        return [names[id(q)] for gs in groups for g in gs for q in g["params"]
                if q.grad is None or not bool(torch.isfinite(q.grad).all())]
