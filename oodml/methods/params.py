"""Typed, frozen hyperparameters per method family, with the papers' defaults (CPU-friendly in the `head` regime).

`resolve_params` applies `--method-param` overrides (`name=value` for every method having that field, or
`method.name=value` for one method) with type checks; the result is validated once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from oodml.errors import OodmlError, suggest
from oodml.methods.schedules import canonical_schedule, parse_schedule, schedule_for

HEADS = ("linear", "mlp")
ADAPT_SCOPES = ("last", "all")
ADAPT_STOPS = ("fixed", "plateau")
ADAPT_BN = ("train", "frozen")
ADAPT_PROTOCOLS = ("own_loss", "oodml")
SELECTS = ("last", "val")
#: `select_metric` values: the score `select: val` keeps the best checkpoint by (ooDML's: recall@1 + mAP@1000)
SELECT_METRICS = ("recall@1", "recall@1+map@1000")
ADAPT_SCORES = ("loo_nn", "episodes")

#: what `adapt_protocol: oodml` sets unless the same fields are given explicitly (Milbich et al. 2021, few-shot
#: script: Adam at 1e-4 on the last linear layer, 1,000 iterations at 2 shots and 1,500 at 5 shots)
OODML_ADAPTATION = {"adapt_lr": 1e-4, "adapt_iterations": "2:1000,5:1500", "adapt_scope": "last"}

#: field metadata of hyperparameters added after results were published: such a field is left out of a method's
#: resolved parameters (and so of its cells' ids) while it has its default, which keeps the old behaviour, so that
#: finished cells keep their ids and are not rerun.
LATER = {"omit_at_default": True}


@dataclass(frozen=True)
class TrainParams:
    """Shared by every trained embedding method.

    Attributes:
        embed_dim: output size of the embedding head (ooDML uses 512 on ResNet-50; 128 here for the CPU head).
        head: `linear` (D -> embed_dim) or `mlp` (D -> hidden_dim -> ReLU -> embed_dim).
        hidden_dim: hidden width of the `mlp` head.
        normalize: L2-normalise the head output (training loss input and embeddings).
        lr: Adam learning rate of the head (and of loss parameters).
        backbone_lr: Adam learning rate of the backbone in the `full` regime (ooDML: 1e-5).
        weight_decay: Adam weight decay.
        iterations: source training iterations (batches).
        epochs: when > 0, the source training length in epochs instead: iterations = ceil(epochs x the level's
            training images / batch_size) (ooDML counts epochs; its sampler is batch_size=112, samples_per_class=2).
        select: `last`: keep the source model as training leaves it; `val`: hold the level's `val_classes` out of
            training, score them with `select_metric` (`oodml.eval`) every `select_every` iterations and at the end,
            and keep the best-scoring weights (ooDML's checkpoint selection); the cell records the kept iteration and
            the validation curve.
        select_metric: `select: val`'s score: `recall@1`, or `recall@1+map@1000` (ooDML's: recall@1 plus their
            mAP@1000, `oodml.eval.metrics.map_at_k_per_query`), both of model 1 on the validation classes.
        select_every: `val`: iterations between two validation scorings.
        select_patience: `val`: stop the source training once this many scorings in a row brought no new best
            (Scott et al.'s early stopping; 0: train the whole length and keep the best, as ooDML does).
        batch_size: images per batch.
        samples_per_class: images per class in a batch (ooDML: 2).
        adapt_iterations: fine-tuning iterations on the k-shot support (methods that adapt): one number for every
            k, or a per-k schedule `2:1000,5:1500` (a YAML mapping `{2: 1000, 5: 1500}` works too). A k that the
            schedule doesn't name takes the entry of the largest named k below it (k = 10 above: 1,500), and a k below
            every named one the entry of the smallest (k = 1 above: 1,000).
        adapt_lr: learning rate of the adaptation.
        adapt_scope: `last` (the head's last layer plus loss parameters, ooDML) or `all` (all trainable parameters,
            Scott et al.).
        adapt_stop: `fixed` (exactly `adapt_iterations` steps, ooDML) or `plateau` (Scott et al.: at most
            `adapt_iterations` steps; every `adapt_check_every` steps the fit to the support is scored (classifier
            methods: the classifier's accuracy on the support; embedding methods: leave-one-out 1-NN accuracy among
            the support images); the weights with the best score are kept, and training stops once the best score
            gained less than `adapt_min_gain` (relative) over `adapt_patience` steps. An embedding method with one
            image per class has nothing to score, so it is not adapted, as in Scott et al.'s code at k = 1).
        adapt_check_every: `plateau`: steps between two scorings of the support.
        adapt_patience: `plateau`: window of steps over which the best score must improve.
        adapt_min_gain: `plateau`: relative improvement of the best score required per window (Scott et al.: 0.01).
        adapt_bn: `train`: BatchNorm layers that adapt re-estimate their running statistics on the support batches
            (as in training; Scott et al.'s code); `frozen`: they keep the source statistics while their weights
            adapt (a 5-image support batch gives noisy statistics).
        adapt_protocol: `own_loss`: the adaptation trains with the method's own objective (Scott et al.);
            `oodml`: ooDML's few-shot protocol (Milbich et al. 2021): the last linear layer only, with their margin
            criterion (PML `MarginLoss`, margin 0.2, beta 1.2 kept fixed as their fine-tuning optimiser holds only
            the last layer, on L2-normalised embeddings, triplets from the distance-weighted miner with cutoff 0.5
            and non-zero-loss cutoff 1.4), class-balanced support batches (`batch_size`, `samples_per_class`);
            unless given explicitly it sets adapt_lr=1e-4, adapt_iterations=2:1000,5:1500, adapt_scope=last. All
            episodes of a cell adapt together as one batched computation (`EmbeddingMethod.adapt_episodes`).
    """

    embed_dim: int = 128
    head: str = "linear"
    hidden_dim: int = 512
    normalize: bool = True
    lr: float = 1e-3
    backbone_lr: float = 1e-5
    weight_decay: float = 0.0
    iterations: int = 300
    batch_size: int = 64
    samples_per_class: int = 2
    adapt_iterations: int | str = 100
    adapt_lr: float = 1e-3
    adapt_scope: str = "last"
    adapt_stop: str = field(default="fixed", metadata=LATER)
    adapt_check_every: int = field(default=1, metadata=LATER)
    adapt_patience: int = field(default=100, metadata=LATER)
    adapt_min_gain: float = field(default=0.01, metadata=LATER)
    adapt_bn: str = field(default="train", metadata=LATER)
    adapt_protocol: str = field(default="own_loss", metadata=LATER)
    epochs: float = field(default=0.0, metadata=LATER)
    select: str = field(default="last", metadata=LATER)
    select_every: int = field(default=100, metadata=LATER)
    select_patience: int = field(default=0, metadata=LATER)
    select_metric: str = field(default="recall@1", metadata=LATER)

    @staticmethod
    def preset(values: Mapping[str, Any]) -> dict[str, Any]:
        """Field values implied by the given ones (`adapt_protocol: oodml` -> ooDML's lr, schedule and scope)."""
        return dict(OODML_ADAPTATION) if values.get("adapt_protocol") == "oodml" else {}

    def adapt_iterations_for(self, shots: int) -> int:
        """The adaptation iterations for supports of `shots` images per class (see `adapt_iterations`)."""
        return schedule_for(self.adapt_iterations, shots)

    def fit_iterations(self, n_train: int) -> int:
        """Source training iterations for `n_train` training images (`epochs` converted, else `iterations`)."""
        if self.epochs > 0:
            return max(1, math.ceil(self.epochs * n_train / self.batch_size))
        return self.iterations

    def validate(self) -> None:
        """Raise OodmlError for out-of-range values."""
        if self.select not in SELECTS:
            raise OodmlError(f"select={self.select!r} is not one of {', '.join(SELECTS)}")
        if self.select_metric not in SELECT_METRICS:
            raise OodmlError(f"select_metric={self.select_metric!r} is not one of {', '.join(SELECT_METRICS)}")
        if self.select_every < 1 or self.epochs < 0 or self.select_patience < 0:
            raise OodmlError(f"need select_every >= 1, epochs >= 0 and select_patience >= 0, got {self.select_every},"
                             f" {self.epochs} and {self.select_patience}")
        if self.adapt_protocol not in ADAPT_PROTOCOLS:
            raise OodmlError(f"adapt_protocol={self.adapt_protocol!r} is not one of {', '.join(ADAPT_PROTOCOLS)}")
        if self.adapt_protocol == "oodml" and (self.adapt_scope != "last" or self.adapt_stop != "fixed"):
            raise OodmlError("adapt_protocol=oodml adapts the last layer for a fixed number of iterations; drop "
                             "adapt_scope/adapt_stop or use adapt_protocol=own_loss")
        if self.adapt_stop not in ADAPT_STOPS:
            raise OodmlError(f"adapt_stop={self.adapt_stop!r} is not one of {', '.join(ADAPT_STOPS)}")
        if not 1 <= self.adapt_check_every <= self.adapt_patience:
            raise OodmlError(f"need 1 <= adapt_check_every <= adapt_patience, got {self.adapt_check_every} and "
                             f"{self.adapt_patience}")
        if self.adapt_bn not in ADAPT_BN:
            raise OodmlError(f"adapt_bn={self.adapt_bn!r} is not one of {', '.join(ADAPT_BN)}")
        if self.adapt_min_gain < 0:
            raise OodmlError(f"adapt_min_gain must be >= 0, got {self.adapt_min_gain}")
        if self.head not in HEADS:
            raise OodmlError(f"head={self.head!r} is not one of {', '.join(HEADS)}")
        if self.adapt_scope not in ADAPT_SCOPES:
            raise OodmlError(f"adapt_scope={self.adapt_scope!r} is not one of {', '.join(ADAPT_SCOPES)}")
        for name in ("embed_dim", "hidden_dim", "batch_size", "samples_per_class"):
            if getattr(self, name) < 1:
                raise OodmlError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.iterations < 0:
            raise OodmlError(f"iterations must be >= 0, got {self.iterations}")
        parse_schedule(self.adapt_iterations, "adapt_iterations")
        for name in ("lr", "backbone_lr", "adapt_lr"):
            if not getattr(self, name) > 0:
                raise OodmlError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ContrastiveParams(TrainParams):
    """Contrastive loss (Hadsell et al. 2006) on L2 distances of normalised embeddings."""

    pos_margin: float = 0.0
    neg_margin: float = 1.0


@dataclass(frozen=True)
class TripletParams(TrainParams):
    """Triplet loss (Schroff et al. 2015): margin 0.2, semi-hard negatives."""

    margin: float = 0.2
    mining: str = "semihard"  # all | hard | semihard | easy (PML TripletMarginMiner types)

    def validate(self) -> None:
        """Raise OodmlError for out-of-range values."""
        super().validate()
        if self.mining not in ("all", "hard", "semihard", "easy"):
            raise OodmlError(f"mining={self.mining!r} is not one of all, hard, semihard, easy")


@dataclass(frozen=True)
class MarginParams(TrainParams):
    """Margin loss with distance-weighted sampling (Wu et al. 2017): margin 0.2, learned beta from 1.2."""

    margin: float = 0.2
    beta: float = 1.2
    learn_beta: bool = True
    beta_lr: float = 5e-4
    cutoff: float = 0.5
    nonzero_loss_cutoff: float = 1.4


@dataclass(frozen=True)
class MultiSimilarityParams(TrainParams):
    """Multi-similarity loss + miner (Wang et al. 2019): alpha 2, beta 50, base 0.5, epsilon 0.1."""

    alpha: float = 2.0
    beta: float = 50.0
    base: float = 0.5
    epsilon: float = 0.1


@dataclass(frozen=True)
class ProxyParams(TrainParams):
    """Losses with one learned proxy (class weight) per source class."""

    proxy_lr_scale: float = 1.0


@dataclass(frozen=True)
class ProxyAnchorParams(ProxyParams):
    """Proxy anchor (Kim et al. 2020): margin 0.1, alpha 32, proxies at 100x the learning rate."""

    margin: float = 0.1
    alpha: float = 32.0
    proxy_lr_scale: float = 100.0


@dataclass(frozen=True)
class ArcFaceParams(ProxyParams):
    """ArcFace (Deng et al. 2019): additive angular margin 0.5 rad (28.6 degrees), scale 64."""

    margin: float = 28.6
    scale: float = 64.0


@dataclass(frozen=True)
class NormSoftmaxParams(ProxyParams):
    """Normalised softmax (Zhai & Wu 2019): temperature 0.05."""

    temperature: float = 0.05


@dataclass(frozen=True)
class HistogramParams(TrainParams):
    """Histogram loss (Ustinova & Lempitsky 2016): cosine similarities, bins of width 2 / n_bins."""

    n_bins: int = 100

    def validate(self) -> None:
        """Raise OodmlError for out-of-range values."""
        super().validate()
        if self.n_bins < 2:
            raise OodmlError(f"n_bins must be >= 2, got {self.n_bins}")


@dataclass(frozen=True)
class ProtoParams(TrainParams):
    """Prototypical networks (Snell et al. 2017): episodic n-way k-shot, squared Euclidean, unnormalised.

    Attributes:
        ways, shots, queries: a source training episode: `ways` classes, `shots` support and `queries` query images
            of each.
        adapt_support_fraction: `adapted_proto`: every adaptation episode holds every target class, and each class's
            k support images are redrawn into max(1, floor(fraction x k)) episode shots (the prototype) and the rest
            as its queries (k = 1: the image is both). 0.5 (the default) is k // 2, oodml's original split; 0.75 is
            Scott et al.'s (their `run_model.py`: `episode_support = floor(0.75 k)`).
        adapt_score: `adapted_proto` with `adapt_stop=plateau`: what the stop watches. `loo_nn` (the default):
            leave-one-out 1-NN accuracy among the support images, as for every embedding method; `episodes`: Scott et
            al.'s episodic score, the nearest-prototype accuracy of the queries over `adapt_score_episodes` episodes
            drawn from the support as the training episodes are (`adapt_support_fraction`), fresh episodes at every
            scoring from a generator seeded by the cell (one image per class: nothing to score, so no adaptation).
        adapt_score_episodes: `adapt_score=episodes`: episodes per scoring (Scott et al.: 250 on Omniglot, 75 on
            MNIST, their `--evaluation_episodes`).
    """

    normalize: bool = False
    ways: int = 20
    shots: int = 5
    queries: int = 5
    adapt_support_fraction: float = field(default=0.5, metadata=LATER)
    adapt_score: str = field(default="loo_nn", metadata=LATER)
    adapt_score_episodes: int = field(default=250, metadata=LATER)

    def adapt_shots(self, k: int) -> int:
        """Episode shots of a class with `k` support images: max(1, floor(adapt_support_fraction x k))."""
        return max(1, math.floor(self.adapt_support_fraction * k + 1e-9))  # 1e-9: 0.29 x 100 is 28.999...

    def validate(self) -> None:
        """Raise OodmlError for out-of-range values."""
        super().validate()
        for name in ("ways", "shots", "queries", "adapt_score_episodes"):
            if getattr(self, name) < 1:
                raise OodmlError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.adapt_support_fraction < 1:
            raise OodmlError(f"adapt_support_fraction must be in (0, 1) (Scott et al.: 0.75), got "
                             f"{self.adapt_support_fraction}")
        if self.adapt_score not in ADAPT_SCORES:
            raise OodmlError(f"adapt_score={self.adapt_score!r} is not one of {', '.join(ADAPT_SCORES)}")
        if self.adapt_score != "loo_nn" and self.adapt_stop != "plateau":
            raise OodmlError(f"adapt_score={self.adapt_score} is what adapt_stop=plateau watches; set "
                             "adapt_stop=plateau or drop adapt_score")


@dataclass(frozen=True)
class ClassifierParams(TrainParams):
    """Softmax classifier on the embedding (weight transfer, baseline); fine-tunes everything by default."""

    normalize: bool = False
    adapt_scope: str = "all"


@dataclass(frozen=True)
class SecParams:
    """Spherical embedding constraint (Zhang et al. 2020): weight eta of mean_i (||f_i|| - mu)^2."""

    sec_eta: float = 1.0

    def validate(self) -> None:
        """Raise OodmlError for out-of-range values."""
        if self.sec_eta < 0:
            raise OodmlError(f"sec_eta must be >= 0, got {self.sec_eta}")


@dataclass(frozen=True)
class DmmlCohortParams:
    """`+dmml`'s cohort without its mutual term: the control `+dmmlctl` (Park et al. 2020's cohort, views and schedule).

    Attributes:
        dmml_models: cohort size M (model 1 is evaluated alone and in the ensemble).
        dmml_update_every: per model, update every n-th iteration (temporal diversity); cycled when shorter than M.
        dmml_noise: head regime: Gaussian feature noise (times the batch's per-dimension std) on views >= 1.
        dmml_dropout: head regime: feature dropout probability on views >= 1.
    """

    dmml_models: int = 3
    dmml_update_every: tuple[int, ...] = (1, 1, 2)
    dmml_noise: float = 0.1
    dmml_dropout: float = 0.1

    def validate(self) -> None:
        """Raise OodmlError for out-of-range values."""
        if self.dmml_models < 2:
            raise OodmlError(f"dmml_models must be >= 2, got {self.dmml_models}")
        if not self.dmml_update_every or any(int(u) < 1 for u in self.dmml_update_every):
            raise OodmlError("dmml_update_every must be a list of integers >= 1, e.g. [1,1,2]")
        if not 0 <= self.dmml_dropout < 1:
            raise OodmlError(f"dmml_dropout must be in [0, 1), got {self.dmml_dropout}")
        if self.dmml_noise < 0:
            raise OodmlError("dmml_noise must be >= 0")


@dataclass(frozen=True)
class DmmlParams(DmmlCohortParams):
    """Diversified mutual metric learning (Park et al. 2020): `DmmlCohortParams` plus the mutual loss's weight."""

    dmml_weight: float = 1.0

    def validate(self) -> None:
        """Raise OodmlError for out-of-range values."""
        super().validate()
        if self.dmml_weight < 0:
            raise OodmlError("dmml_weight must be >= 0")


@dataclass(frozen=True)
class EnsParams:
    """Ensemble control `+ens`: cohort size (the default equals `+dmml`'s, `dmml_models`)."""

    ens_models: int = 3

    def validate(self) -> None:
        """Raise OodmlError for out-of-range values."""
        if self.ens_models < 2:
            raise OodmlError(f"ens_models must be >= 2, got {self.ens_models}")


def field_names(cls: type | None) -> set[str]:
    """Names of the fields of a params dataclass (empty for None)."""
    return {f.name for f in dataclasses.fields(cls)} if cls is not None else set()


def _coerce(cls_name: str, name: str, value: Any, typ: Any) -> Any:
    """Convert an override value to the field's type, or raise OodmlError."""
    text = str(typ)
    if text == "int | str":
        return canonical_schedule(cls_name, name, value)
    wanted = {bool: "true or false", int: "integer", float: "number", str: "string"}.get(
        typ, "list of integers" if text.startswith("tuple[int") else text.replace("typing.", ""))
    bad = OodmlError(f"{cls_name}: {name}={value!r} is not a valid {wanted} (--method-param {name}=VALUE)")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if typ is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if typ is str:
        if isinstance(value, str):
            return value
        raise bad
    if text.startswith("tuple[int"):
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise bad
        return tuple(int(v) for v in items)
    return value  # pragma: no cover - every params field has one of the types above


def build_params(cls: type, values: Mapping[str, Any], *, what: str) -> Any:
    """Instantiate the dataclass `cls` from overrides `values` (type-checked), then validate it."""
    hints = get_type_hints(cls)
    known = field_names(cls)
    unknown = sorted(set(values) - known)
    if unknown:
        raise OodmlError(
            f"{what} has no hyperparameter {unknown[0]!r}{suggest(unknown[0], known)}; "
            f"its fields: {', '.join(sorted(known))}"
        )
    preset = getattr(cls, "preset", None)
    values = {**(preset(values) if preset is not None else {}), **values}
    kw = {k: _coerce(what, k, v, hints[k]) for k, v in values.items()}
    obj = cls(**kw)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def to_jsonable(obj: Any) -> dict[str, Any]:
    """A params dataclass as a JSON-able dict (tuples become lists); `LATER` fields only where not at their
    default."""
    if obj is None:
        return {}
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.metadata.get("omit_at_default") and v == f.default:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
