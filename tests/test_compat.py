"""oodml.compat: torchvision and timm import on this CPU torch; the shim is idempotent and only used when needed."""

from __future__ import annotations

import subprocess
import sys

from oodml import compat


def test_import_torchvision_gives_working_models_and_transforms() -> None:
    tv = compat.import_torchvision()
    assert tv.__version__ and compat.import_torchvision() is tv
    model = tv.models.resnet18(weights=None)
    assert sum(p.numel() for p in model.parameters()) > 10_000_000
    assert tv.models.ResNet50_Weights.IMAGENET1K_V1.meta["num_params"] == 25557032
    t = tv.transforms.Compose([tv.transforms.Resize(8), tv.transforms.ToTensor()])
    from PIL import Image

    assert tuple(t(Image.new("RGB", (16, 16))).shape) == (3, 8, 8)


def test_import_timm_after_compat() -> None:
    timm = compat.import_timm()
    assert timm.is_model("tf_efficientnet_lite0")


def test_fresh_process_patches_exactly_when_a_plain_import_fails() -> None:
    code = ("try:\n    import torchvision\n    direct = True\nexcept RuntimeError:\n    direct = False\n"
            "import torch, oodml.compat as c\ntv = c.import_torchvision()\n"
            "print(direct, c.patched, hasattr(torch.ops.torchvision, 'nms'), bool(tv.models.resnet18))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    direct, patched, has_nms, models_ok = (w == "True" for w in out)
    assert has_nms and models_ok
    assert patched == (not direct)  # the shim is used exactly when a plain import fails, and then repairs it
