"""What an add-on contributes to an embedding method (`ADDONS`, `oodml.methods.addons`): regularizer terms that the
trainer adds to each model's loss, and a cohort rule (how many models train together and how they differ).

The trainer (`oodml.methods.trainer`) calls these hooks and knows no add-on by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

#: one model's outputs on a batch: (raw embeddings z, embeddings e as the objective sees them)
Outputs = tuple[torch.Tensor, torch.Tensor]


class Regularizer(ABC):
    """A term added to each cohort model's training loss (after the objective, in add-on order)."""

    @abstractmethod
    def term(self, m: int, outs: Sequence[Outputs]) -> torch.Tensor | None:
        """Model m's term, given every model's outputs on the batch; None adds nothing."""


class Cohort:
    """How many models an embedding method trains together and how they differ; this base rule is one model."""

    #: number of models (model 1 is the one `embed` returns)
    size: int = 1

    def update_every(self, m: int) -> int:
        """Model m takes an optimizer step every this many iterations."""
        return 1

    def perturb(self, xb: torch.Tensor, m: int, seed: int) -> torch.Tensor:
        """Model m's view of a batch of features (head regime); `seed` is this model's and batch's own."""
        return xb

    def variants(self, parts: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Named embeddings to evaluate from every model's embeddings (model 1 first); '' is model 1."""
        return {"": parts[0]}


#: the cohort of one model (no cohort add-on)
SINGLE = Cohort()
