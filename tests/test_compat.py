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


def test_fresh_process_imports_through_compat_and_patches_only_on_failure() -> None:
    code = ("import oodml.compat as c; tv = c.import_torchvision(); "
            "import importlib.util, torch; "
            "print(c.patched, hasattr(torch.ops.torchvision, 'nms'), tv.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    patched, has_nms = out[0] == "True", out[1] == "True"
    assert has_nms  # either the real extension or the defined schema
    direct = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    assert patched == (direct.returncode != 0)  # the shim is used exactly when a plain import fails
