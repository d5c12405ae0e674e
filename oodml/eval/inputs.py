"""Input normalisation for the evaluation functions: numpy arrays or torch tensors of any float dtype.

Nothing here imports torch: a tensor is recognised only when torch is already loaded, so the numpy path stays
torch-free and cheap (the runner calls the metrics thousands of times on small episode query sets).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from oodml.errors import OodmlError


def is_tensor(x: Any) -> bool:
    """True when `x` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any, dtype: DTypeLike | None = None) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device, any dtype incl. bfloat16) or a sequence."""
    if is_tensor(x):
        torch = sys.modules["torch"]
        t = x.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # numpy has no bfloat16; float32 holds both exactly
        x = t.cpu().numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)


def as_embeddings(x: Any, name: str = "embeddings", dtype: DTypeLike = np.float32) -> np.ndarray:
    """A C-contiguous (N, D) float array of `dtype`; OodmlError for a wrong shape, no rows, or NaN/inf values."""
    arr = to_numpy(x)
    if arr.ndim != 2:
        raise OodmlError(f"{name} must be a 2-D (N, D) array, got shape {tuple(arr.shape)}; reshape before evaluating")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise OodmlError(f"{name} is empty (shape {tuple(arr.shape)}); evaluate at least one row with D >= 1")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise OodmlError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        raise OodmlError(f"{name} contain NaN or inf values; check the method's output (e.g. a diverged loss)")
    return arr


def as_labels(labels: Any, n: int, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Encode any 1-D labels (ints, strings) as class codes 0..C-1 in sorted label order.

    Returns:
        (codes (N,) int64, class sizes (C,) int64).
    """
    arr = to_numpy(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise OodmlError(f"{name} must be 1-D with one label per row ({n}), got shape {tuple(arr.shape)}")
    _, codes, counts = np.unique(arr, return_inverse=True, return_counts=True)
    return codes.reshape(-1).astype(np.int64, copy=False), counts.astype(np.int64, copy=False)
