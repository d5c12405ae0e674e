"""Seeding: one explicit seed per cell, derived from the cell key, so adding a method changes no other cell."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def derive_seed(*key: object) -> int:
    """A stable 63-bit seed from any key parts (strings, ints), independent of Python's hash randomisation."""
    text = "\x1f".join(str(k) for k in key)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def rng(*key: object) -> np.random.Generator:
    """A numpy Generator seeded from `derive_seed(*key)`."""
    return np.random.default_rng(derive_seed(*key))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with `deterministic`, also ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Run a block with the torch CPU RNG seeded to `seed`, restoring the previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
