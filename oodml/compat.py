"""Import torchvision (and timm) on a CPU torch whose paired torchvision wheel is a CUDA build.

Such a torchvision fails at import with "operator torchvision::nms does not exist" because its compiled ops don't
load. Defining the op schemas that its Python code registers fake kernels for lets the pure-Python parts (models,
transforms, weight metadata) import. Where the extension loads, this module changes nothing.
Always import torchvision/timm in oodml through `import_torchvision()` / `import_timm()`.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import torch

_LIB: Any = None  # keeps the torch.library fragment alive for the process lifetime
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
patched = False


def _define_schemas() -> None:
    global _LIB, patched
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            _LIB.define(schema)
        patched = True


def import_torchvision() -> ModuleType:
    """Import and return torchvision, defining the missing op schemas first when its extension can't load."""
    if "torchvision" in sys.modules and getattr(sys.modules["torchvision"], "__version__", None):
        return sys.modules["torchvision"]
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _define_schemas()
        import torchvision
    return torchvision


def import_timm() -> ModuleType:
    """Import and return timm (which imports torchvision) through `import_torchvision`."""
    import_torchvision()
    import timm

    return timm


RAY_INSTALL = "pip install 'oodml[ray]'  (or: pip install 'ray>=2.9')"


def import_ray() -> ModuleType:
    """Import Ray; OodmlError with the install command when it is missing."""
    try:
        import ray
    except ImportError:
        from oodml.errors import OodmlError

        raise OodmlError(f"--executor ray needs Ray, which is not installed; install it with {RAY_INSTALL}, "
                         f"or use --executor local") from None
    return ray
