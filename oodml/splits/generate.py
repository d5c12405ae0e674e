"""The FID ladder (`oodml make-splits`): train/test class partitions of rising distribution shift (ooDML; the split
file: docs/formats.md).

Starting from the dataset's conventional split, two greedy walks over class partitions are made:

- harder: the train classes closest to the test mean (relative to the train mean) move to test and the test classes
  closest to the train mean move to train, ooDML style, with a tabu history so that classes don't oscillate; a move is
  kept only when it raises the FID. When swaps stop helping, the same candidates are removed from both sides instead
  (`removed_classes`), never below a floor of classes per side;
- easier: the inverse swaps (the most train-typical train classes to test and vice versa), kept while they lower the
  FID.

Both walks update running sums (n, Σ m, Σ m mᵀ) per side when classes move instead of recomputing the statistics, and
evaluate each proposal with the moment-based Fréchet distance (no D × D square root). Where both sides have more
classes than dimensions (Stanford Online Products), `FastPartitionStats` takes the same swaps with low-rank FID
updates (benchmarks/splits.py); elsewhere its arithmetic is the plain search's, so split files stay byte-identical.
From the trajectory, `levels` partitions spread evenly in FID are picked (the conventional one is always kept and
marked); their FIDs are then recomputed from scratch with `frechet_distance` (where both sides exceed the dimensions,
the search's own FIDs are kept: as exact, about 1e-13), and validation classes and k-shot episodes are drawn from
key-derived seeds.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oodml import seeding
from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.progress import log, progress
from oodml.splits.episodes import sample_episodes
from oodml.splits.frechet import (JointDiag, Moments, frechet_distance, frechet_from_moments, moments_from_sums,
                                  one_blas_thread, trace_sqrt_cov, trace_sqrt_update)
from oodml.splits.spec import Level, SplitSpec

TRAIN, TEST, REMOVED = 0, 1, 2


#: most episodes per k and level (`--episodes`): a split file holds each episode's support ids (see LadderCfg)
MAX_EPISODES = 100_000


@dataclass(frozen=True)
class LadderCfg:
    """Knobs of the ladder search (the defaults follow the ooDML procedure).

    Attributes:
        levels: number of levels to pick from the trajectory.
        ks: shots for the episodes.
        episodes: episodes per k and level. 10, as in the ooDML code: on the CUB subset it resolves a
            2-point paired gain at level 1 (half-width <= 0.009 with 3 seeds), and where it does not (level 8) no
            episode count does: there the seeds set the width. 25 narrows a 3-seed interval by about 10% more
            (results/README.md, "Episodes: how many are enough"); pass `--episodes 25` for that.
        seed: seed for the fallback conventional split, validation classes and episodes.
        ways: classes per episode (None: every test class).
        val_fraction: share of each level's train classes put in `val_classes`.
        floor_fraction: removal never leaves a side with fewer than this share of its conventional classes.
        tabu: a class that moved in one of the last `tabu` steps doesn't move again.
        swaps_per_step: classes moved per side and step (None: one per 100 classes, at least 1); halved when no
            move helps, doubled back after a success.
        max_steps: most accepted steps per direction.
        patience: with single moves, how many candidate pairs down the rankings are tried before a walk stops.
        min_gain: a move counts only when it changes the FID by more than this fraction of the starting FID (finer
            steps add nothing to a ladder of a few levels, and it keeps recomputed level FIDs strictly ordered).
    """

    levels: int = 8
    ks: tuple[int, ...] = (2, 5, 10)
    episodes: int = 10
    seed: int = 0
    ways: int | None = None
    val_fraction: float = 0.25
    floor_fraction: float = 0.5
    tabu: int = 5
    swaps_per_step: int | None = None
    max_steps: int = 300
    patience: int = 5
    min_gain: float = 1e-3

    def __post_init__(self) -> None:
        if self.levels < 2:
            raise OodmlError(f"--levels must be at least 2, got {self.levels}")
        if not self.ks or min(self.ks) < 1:
            raise OodmlError(f"--k values must be >= 1, got {self.ks}")
        if not 1 <= self.episodes <= MAX_EPISODES:
            raise OodmlError(f"--episodes must be in 1..{MAX_EPISODES:,}, got {self.episodes:,} (a split file lists "
                             "the support ids of every episode: 100,000 episodes of 100 classes at k = 5 already "
                             "take about 1.2 GB per k and level, in memory and on disk)")
        if self.ways is not None and self.ways < 2:
            raise OodmlError(f"--ways must be at least 2, got {self.ways} (a 1-way episode scores 1.0 whatever the "
                             "embedding)")
        if not 0.0 <= self.val_fraction < 1.0 or not 0.0 < self.floor_fraction <= 1.0:
            raise OodmlError("val_fraction must be in [0, 1) and floor_fraction in (0, 1]")
        if self.swaps_per_step is not None and self.swaps_per_step < 1 or min(self.max_steps, self.tabu) < 0 \
                or self.patience < 1 or self.min_gain < 0:
            raise OodmlError("swaps_per_step and patience must be >= 1, max_steps, tabu and min_gain >= 0")


@dataclass(frozen=True)
class Move:
    """Classes `idx` go to sides `to` (TRAIN, TEST or REMOVED); `fid` is the FID after the move (search precision)."""

    idx: np.ndarray
    to: np.ndarray
    fid: float


class PartitionStats:
    """A partition of class means into train/test/removed with running sums per side, for fast FID proposals."""

    def __init__(self, means: np.ndarray, side: np.ndarray) -> None:
        self.means = means
        self.sq_norms = np.einsum("ij,ij->i", means, means)
        self.side = side.astype(np.int8).copy()
        self.n = [0, 0]
        self.total = [np.zeros(means.shape[1]), np.zeros(means.shape[1])]
        self.gram = [np.zeros((means.shape[1],) * 2), np.zeros((means.shape[1],) * 2)]
        for s in (TRAIN, TEST):
            m = means[self.side == s]
            self.n[s], self.total[s], self.gram[s] = len(m), m.sum(axis=0), self._gram_of(m)

    @staticmethod
    def _gram_of(m: np.ndarray) -> np.ndarray:
        """Σ m mᵀ over the rows of `m`."""
        return m.T @ m  # type: ignore[no-any-return]

    def copy(self) -> PartitionStats:
        """An independent copy (the class means are shared)."""
        other = copy.copy(self)
        other.side, other.n = self.side.copy(), list(self.n)
        other.total, other.gram = [t.copy() for t in self.total], [g.copy() for g in self.gram]
        return other

    def _side_after(self, s: int, idx: np.ndarray, to: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, Σ m, Σ m mᵀ) of side `s` after the move, by updating the running sums with the moved classes."""
        old = self.side[idx]
        add, rem = idx[(to == s) & (old != s)], idx[(old == s) & (to != s)]
        total = self.total[s] + self.means[add].sum(axis=0) - self.means[rem].sum(axis=0)
        gram = self.gram[s] + self.means[add].T @ self.means[add] - self.means[rem].T @ self.means[rem]
        return self.n[s] + len(add) - len(rem), total, gram

    def _moments(self, s: int, n: int, total: np.ndarray, gram: np.ndarray, idx: np.ndarray,
                 to: np.ndarray) -> Moments:
        if n > self.means.shape[1]:
            return moments_from_sums(n, total, gram)
        members = self.side == s
        members[idx] = to == s
        m = self.means[members]
        mu = total / n
        factor = (m - mu).T / math.sqrt(n - 1)
        return Moments(n, mu, float(np.einsum("ij,ij->", factor, factor)), factor=factor)

    def fid(self, idx: np.ndarray | None = None, to: np.ndarray | None = None) -> float:
        """FID of the partition after moving classes `idx` to sides `to` (no change when None), by the fast route
        of `frechet_from_moments(exact=False)`."""
        idx = np.zeros(0, dtype=np.int64) if idx is None else idx
        to = np.zeros(0, dtype=np.int8) if to is None else to
        mom = []
        for s in (TRAIN, TEST):
            n, total, gram = self._side_after(s, idx, to)
            if n < 2:
                return math.nan
            mom.append(self._moments(s, n, total, gram, idx, to))
        return frechet_from_moments(mom[0], mom[1], exact=False)

    def apply(self, idx: np.ndarray, to: np.ndarray) -> None:
        """Move classes `idx` to sides `to`, updating the running sums."""
        for s in (TRAIN, TEST):
            self.n[s], self.total[s], self.gram[s] = self._side_after(s, idx, to)
        self.side[idx] = to

    def ranking(self, s: int, blocked: set[int], ends: int | None = None) -> np.ndarray:
        """Members of side `s` (minus `blocked`), most like the other side first, by the ooDML score
        ‖m − μ_other‖ − ‖m − μ_own‖ (ascending; ties by class index). `ends`: only the first and last `ends`
        entries must be in order (subclasses may use it; here the whole ranking is exact)."""
        members = np.flatnonzero(self.side == s)
        if blocked:
            members = members[~np.isin(members, np.fromiter(blocked, dtype=np.int64))]
        m, sq = self.means[members], self.sq_norms[members]
        own, other = self.total[s] / self.n[s], self.total[1 - s] / self.n[1 - s]
        # ‖m − μ‖ = √(‖m‖² − 2 m·μ + ‖μ‖²): one matrix-vector product per mean, no (C, D) temporaries
        dist = np.sqrt(np.clip(sq[:, None] - 2 * m @ np.stack([other, own], axis=1)
                               + np.array([other @ other, own @ own]), 0.0, None))
        return members[np.argsort(dist[:, 0] - dist[:, 1], kind="stable")]


class _Base:
    """A base partition for the low-rank route: its sides, counts, side means and joint decomposition, with the
    whitened (W⁻¹ m, train side) and projected (Wᵀ m, test side) class means computed so far."""

    def __init__(self, side: np.ndarray, n: list[int], mu: list[np.ndarray], joint: JointDiag) -> None:
        self.side, self.n, self.mu, self.joint = side, n, mu, joint
        self.cols: list[dict[int, np.ndarray]] = [{-1: joint.whiten(mu[TRAIN][:, None])[:, 0]},
                                                  {-1: joint.project(mu[TEST][:, None])[:, 0]}]

    def transformed(self, s: int, means: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(D, len(classes) + 1): the transformed means of `classes`, then of the base's side mean."""
        cache = self.cols[s]
        new = [int(c) for c in classes if int(c) not in cache]
        if new:
            fn = self.joint.whiten if s == TRAIN else self.joint.project
            for c, col in zip(new, fn(means[new].T).T):
                cache[c] = col
        return np.stack([cache[int(c)] for c in classes] + [cache[-1]], axis=1)


class FastPartitionStats(PartitionStats):
    """`PartitionStats` with the same proposals, ranking and FIDs (to float64 rounding, about 1e-13 relative), faster
    where both sides have more classes than dimensions (Stanford Online Products: 11k per side, 1,280-d).

    There, a proposal's FID comes from one of two routes (elsewhere `PartitionStats.fid`, bit for bit):

    - low rank: a move changes each side's covariance by a matrix of rank ≤ (classes moved) + 1. With a joint
      eigen-decomposition of a base partition (`JointDiag`: W Wᵀ = Σ_train, Wᵀ Σ_test W = Λ), the Tr (Σ_a Σ_b)^½ of
      any partition a few moves away comes from `trace_sqrt_update` in O(N D k²) instead of O(D³). The base is the
      current partition, taken when a small proposal arrives and the moves since the last base are too many
      (rank above `max_rank`), and is reused across steps until then (updating the eigen-decomposition itself by
      secular equations would need compiled code; the integral needs only BLAS);
    - dense: the Gram matrices are updated by the moved classes' `dsyrk` products (shared by both sides of a swap,
      reused when the move is applied) and the trace comes from `trace_sqrt_cov` (Cholesky, `dsygst`, eigenvalues):
      about half the flops of `PartitionStats`.

    Gram updates of applied moves wait until a dense evaluation or a new base needs them. Rankings are cached until
    the partition changes, and where both sides are large they come from one product of every class mean with both
    side means.
    """

    #: most columns (classes moved since the base, both sides, + 2) for the low-rank route; a new base is taken for
    #: a proposal of at most half as many
    max_rank = 96
    #: fewest dimensions for the low-rank route (below, a dense evaluation is cheap)
    min_dim = 512

    def __init__(self, means: np.ndarray, side: np.ndarray) -> None:
        super().__init__(means, side)
        self._lower = True  # self.gram: lower triangles, column-major (see _to_full)
        self._reset()

    def _reset(self) -> None:
        self._version = 0
        self._ranks: dict[tuple[int, int, frozenset[int]], np.ndarray] = {}
        self._dots: tuple[int, np.ndarray] | None = None
        self._stale: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None] = [None, None]
        self._base: _Base | None = None
        self._no_base = -1
        self._pending: tuple[bytes, list[tuple[np.ndarray | None, np.ndarray | None]]] | None = None
        self._gram_side = self.side.copy()  # the partition self.gram describes

    def _to_full(self) -> None:
        """Where a side has no more classes than dimensions the plain search's code takes over: its Gram matrices
        are full and symmetric (here they are lower triangles, column-major) and kept up to date by it."""
        if self._lower:
            self._sync_gram()
            self.gram = [np.ascontiguousarray(g + np.tril(g, -1).T) for g in self.gram]
            self._lower = False

    @staticmethod
    def _gram_of(m: np.ndarray) -> np.ndarray:
        """Lower triangle of Σ m mᵀ, column-major (`dsyrk`); the upper triangle stays 0."""
        from scipy.linalg.blas import dsyrk

        return dsyrk(1.0, m, trans=1, lower=1)  # type: ignore[no-any-return]

    def copy(self) -> FastPartitionStats:
        if self._lower:
            self._sync_gram()
        other = super().copy()
        assert isinstance(other, FastPartitionStats)
        other._reset()
        other.gram, other._lower = [g.copy(order="K") for g in self.gram], self._lower
        return other

    def _large(self, n: tuple[int, int] | list[int]) -> bool:
        return min(n) > self.means.shape[1]

    def _moved(self, s: int, before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(classes that join side s, classes that leave it) between two partitions."""
        return np.flatnonzero((after == s) & (before != s)), np.flatnonzero((before == s) & (after != s))

    def _syrk(self, rows: np.ndarray) -> np.ndarray:
        """Σ m mᵀ over the given classes, lower triangle (`dsyrk`)."""
        from scipy.linalg.blas import dsyrk

        if len(rows) == 0:
            return np.zeros((self.means.shape[1],) * 2)
        return dsyrk(1.0, self.means[rows], trans=1, lower=1)  # type: ignore[no-any-return]

    def _products(self, before: np.ndarray, after: np.ndarray) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """Per side, Σ m mᵀ (lower triangle) over the classes that join it and over those that leave it between two
        partitions (None for none); a product shared by both sides of a swap is made once."""
        products: dict[bytes, np.ndarray] = {}

        def gram_of(rows: np.ndarray) -> np.ndarray | None:
            if len(rows) == 0:
                return None
            key = rows.tobytes()
            if key not in products:
                products[key] = self._syrk(rows)
            return products[key]

        return [(gram_of(add), gram_of(rem)) for add, rem in (self._moved(s, before, after) for s in (TRAIN, TEST))]

    def _sync_gram(self, products: list[tuple[np.ndarray | None, np.ndarray | None]] | None = None) -> None:
        """Bring self.gram (lower triangles) up to the current partition, with `products` when they are known."""
        if products is None:
            if np.array_equal(self._gram_side, self.side):
                return
            products = self._products(self._gram_side, self.side)
        for s, (add, rem) in zip((TRAIN, TEST), products):
            for part, op in ((add, np.add), (rem, np.subtract)):
                if part is not None:
                    op(self.gram[s], part if self._lower else part + np.tril(part, -1).T, out=self.gram[s])
        self._gram_side = self.side.copy()

    def fid(self, idx: np.ndarray | None = None, to: np.ndarray | None = None) -> float:
        idx = np.zeros(0, dtype=np.int64) if idx is None else idx
        to = np.zeros(0, dtype=np.int8) if to is None else to
        after = self.side.copy()
        after[idx] = to
        n = [int((after == s).sum()) for s in (TRAIN, TEST)]
        if not (self._large(self.n) and self._large(n)):
            self._to_full()
            return super().fid(idx, to)
        old = self.side[idx]
        total = [self.total[s] + self.means[idx[(to == s) & (old != s)]].sum(axis=0)
                 - self.means[idx[(old == s) & (to != s)]].sum(axis=0) for s in (TRAIN, TEST)]
        mu = [total[s] / n[s] for s in (TRAIN, TEST)]
        trace = [(float(self.sq_norms[after == s].sum()) - float(total[s] @ mu[s])) / (n[s] - 1) for s in (TRAIN, TEST)]
        root = self._lowrank_root(len(idx), after) if self.means.shape[1] >= self.min_dim else None
        if root is None:
            root = self._dense_root(idx, to, after, n, total, mu)
        diff = mu[TRAIN] - mu[TEST]
        return max(float(diff @ diff) + trace[TRAIN] + trace[TEST] - 2.0 * root, 0.0)

    def _rank(self, before: np.ndarray, after: np.ndarray) -> int:
        """Columns of the low-rank update between two partitions: classes moved per side, plus each side's mean."""
        return sum(len(c) for s in (TRAIN, TEST) for c in self._moved(s, before, after)) + 2

    def _lowrank_root(self, size: int, after: np.ndarray) -> float | None:
        """Tr (Σ_a Σ_b)^½ of partition `after` by the low-rank route, or None where it does not apply."""
        base = self._base
        if base is None or self._rank(base.side, after) > self.max_rank:
            if size == 0 or self._rank(self.side, after) > self.max_rank // 2 or self._no_base == self._version:
                return None  # the dense route (a base stays for later, smaller proposals)
            self._sync_gram()
            joint = JointDiag.of(*((self.gram[s] - np.outer(self.total[s], self.total[s] / self.n[s])) / (self.n[s] - 1)
                                   for s in (TRAIN, TEST)))
            if joint is None:
                self._no_base = self._version  # (near-)singular here: not again for this partition
                return None
            mus = [self.total[s] / self.n[s] for s in (TRAIN, TEST)]
            base = self._base = _Base(self.side.copy(), list(self.n), mus, joint)
        cols, cores, scale = [], [], 1.0
        for s in (TRAIN, TEST):
            add, rem = self._moved(s, base.side, after)
            changed = np.concatenate([add, rem])
            eps = np.concatenate([np.ones(len(add)), -np.ones(len(rem))])
            n0, n1 = base.n[s], base.n[s] + len(add) - len(rem)
            # (n1 − 1) Σ' = (n0 − 1) Σ0 + U S Uᵀ with U = [moved means, base mean]: Gram change ± m mᵀ and
            # n0 μ0 μ0ᵀ − n1 μ1 μ1ᵀ, where n1 μ1 = U t
            t = np.append(eps, float(n0))
            core = np.diag(np.append(eps, 0.0)) - np.outer(t, t) / n1
            core[-1, -1] += n0
            cols.append(base.transformed(s, self.means, changed))
            cores.append(core / (n0 - 1))
            scale *= (n0 - 1) / (n1 - 1)
        value = trace_sqrt_update(base.joint, cols[TRAIN], cores[TRAIN], cols[TEST], cores[TEST])
        return None if value is None else math.sqrt(scale) * value

    def _dense_root(self, idx: np.ndarray, to: np.ndarray, after: np.ndarray, n: list[int], total: list[np.ndarray],
                    mu: list[np.ndarray]) -> float:
        """Tr (Σ_a Σ_b)^½ of partition `after` from the Gram matrices updated by the moved classes."""
        from scipy.linalg.blas import dger

        self._sync_gram()
        products = self._products(self.side, after)
        self._pending = (idx.tobytes() + to.tobytes(), products)
        covs = []
        for s, (add, rem) in zip((TRAIN, TEST), products):  # (n − 1) Σ' = gram + add − rem − total μᵀ, in place
            cov = self.gram[s] + add if add is not None else self.gram[s].copy(order="F")
            if rem is not None:
                cov -= rem
            covs.append(dger(-1.0, total[s], mu[s], a=cov, overwrite_a=1))
        return trace_sqrt_cov(covs[TRAIN], covs[TEST], overwrite=True) / math.sqrt((n[TRAIN] - 1) * (n[TEST] - 1))

    def apply(self, idx: np.ndarray, to: np.ndarray) -> None:
        after = self.side.copy()
        after[idx] = to
        n = [int((after == s).sum()) for s in (TRAIN, TEST)]
        if not (self._large(self.n) and self._large(n)):
            self._to_full()
            super().apply(idx, to)
            self._gram_side = self.side.copy()
        else:
            pending = self._pending
            if pending is not None and pending[0] == idx.tobytes() + to.tobytes():
                self._sync_gram(pending[1])  # the dense evaluation's products, gram was in sync then
            old = self.side[idx]
            for s in (TRAIN, TEST):
                self.total[s] = self.total[s] + self.means[idx[(to == s) & (old != s)]].sum(axis=0) \
                    - self.means[idx[(old == s) & (to != s)]].sum(axis=0)
                self.n[s] = n[s]
            self.side[idx] = to
            if pending is not None and pending[0] == idx.tobytes() + to.tobytes():
                self._gram_side = self.side.copy()
        self._pending = None
        self._version += 1

    def ranking(self, s: int, blocked: set[int], ends: int | None = None) -> np.ndarray:
        key = (self._version, s, frozenset(blocked))
        if key not in self._ranks:
            self._ranks = {k: v for k, v in self._ranks.items() if k[0] == self._version}
            if not self._large(self.n):
                self._ranks[key] = super().ranking(s, blocked)
            else:
                self._ranks[key] = self._ends_ranking(s, blocked, ends)
        return self._ranks[key]

    def _scores(self, rows: np.ndarray | None, s: int) -> np.ndarray:
        """The ooDML score of classes `rows` (None: every class) against side `s` (as `ranking`)."""
        own, other = self.total[s] / self.n[s], self.total[1 - s] / self.n[1 - s]
        if rows is None:
            if self._dots is None or self._dots[0] != self._version:  # (2, D) x (D, C): one pass over the means
                self._dots = (self._version, np.stack([self.total[TRAIN] / self.n[TRAIN],
                                                       self.total[TEST] / self.n[TEST]]) @ self.means.T)
            dots, sq = self._dots[1][[1 - s, s]].T, self.sq_norms
        else:
            dots, sq = (np.stack([other, own]) @ self.means[rows].T).T, self.sq_norms[rows]
        dist = np.sqrt(np.clip(sq[:, None] - 2 * dots + np.array([other @ other, own @ own]), 0.0, None))
        return dist[:, 0] - dist[:, 1]  # type: ignore[no-any-return]

    def _ends_ranking(self, s: int, blocked: set[int], ends: int | None) -> np.ndarray:
        """`PartitionStats.ranking`, exact in its first and last `ends` entries (None: all); the middle is ordered
        by scores of a few moves ago.

        A score is a difference of two distances to the side means, so it moves by at most ‖Δμ_train‖ + ‖Δμ_test‖
        when the means do: only members whose old score lies within twice that of the `ends`-th smallest (largest)
        old score, and members that joined the side since, can be among the first (last) `ends`, and only they are
        scored again. Every class is scored again when that is no longer a small share."""
        members = np.flatnonzero(self.side == s)
        if blocked:
            members = members[~np.isin(members, np.fromiter(blocked, dtype=np.int64))]
        mus = [self.total[t] / self.n[t] for t in (TRAIN, TEST)]
        stale = self._stale[s]
        if ends is not None and stale is not None and 4 * ends < len(members):
            scores, was, then = stale
            drift = sum(float(np.linalg.norm(mus[t] - then[t])) for t in (TRAIN, TEST))
            drift += 1e-9 * math.sqrt(float(self.sq_norms.max()) + max(float(m @ m) for m in mus))  # rounding
            known = members[was[members]]
            ordered = np.sort(scores[known])
            if len(ordered) >= 2 * ends:
                lo, hi = ordered[ends - 1] + drift, ordered[-ends] - drift  # bounds of the ends' new scores
                redo = ~was[members] | (scores[members] <= lo + drift) | (scores[members] >= hi - drift)
                rows = members[redo]
                if len(rows) <= len(members) // 4:
                    exact = self._scores(rows, s)
                    order = np.argsort(exact, kind="stable")
                    cut, top = int((exact <= lo).sum()), int((exact >= hi).sum())  # every other member: in (lo, hi)
                    if cut >= ends and top >= ends and cut + top <= len(rows) and lo < hi:
                        middle = members[~redo]
                        return np.concatenate([rows[order[:cut]], rows[order[cut:len(rows) - top]],
                                               middle[np.argsort(scores[middle], kind="stable")],
                                               rows[order[len(rows) - top:]]])
        scores = np.full(len(self.side), np.nan)
        scores[self.side == s] = self._scores(None, s)[self.side == s]
        self._stale[s] = (scores, self.side == s, mus)
        return members[np.argsort(scores[members], kind="stable")]


def _walk(stats: PartitionStats, *, harder: bool, floors: tuple[int, int], cfg: LadderCfg, b0: int,
          start_fid: float) -> list[Move]:
    """One greedy direction; returns the accepted moves (FIDs strictly rising when `harder`, else falling)."""
    moves: list[Move] = []
    recent: deque[set[int]] = deque(maxlen=max(cfg.tabu, 1))
    fid, b = start_fid, b0
    min_gain = cfg.min_gain * max(abs(start_fid), 1e-12)
    with progress("make-splits: " + ("harder" if harder else "easier") + " walk", cfg.max_steps, "steps") as bar:
        while len(moves) < cfg.max_steps:
            blocked = set().union(*recent) if cfg.tabu else set()
            ends = b0 + cfg.patience  # the walk reads no further into either end of a ranking
            tr, te = stats.ranking(TRAIN, blocked, ends), stats.ranking(TEST, blocked, ends)
            if not harder:
                tr, te = tr[::-1], te[::-1]
            found = None
            # single moves also try the next candidates down the rankings before the walk gives up
            offsets = range(cfg.patience) if b == 1 else range(1)
            for o, kind in ((o, kind) for o in offsets for kind in (("swap", "remove") if harder else ("swap",))):
                if kind == "swap":
                    nb = min(b, len(tr) - o, len(te) - o)
                    to = (TEST, TRAIN)
                else:
                    nb = min(b, len(tr) - o, len(te) - o, stats.n[TRAIN] - floors[0], stats.n[TEST] - floors[1])
                    to = (REMOVED, REMOVED)
                if nb < 1:
                    continue
                idx = np.concatenate([tr[o:o + nb], te[o:o + nb]])
                target = np.repeat(np.array(to, dtype=np.int8), nb)
                f = stats.fid(idx, target)
                gain = (f - fid) if harder else (fid - f)
                if gain > min_gain:
                    found = Move(idx, target, f)
                    break
            if found is None:
                if b == 1:
                    break
                b = max(1, b // 2)
                continue
            stats.apply(found.idx, found.to)
            moves.append(found)
            recent.append({int(i) for i in found.idx})
            fid, b = found.fid, min(b0, 2 * b)
            bar.update(1)
    return moves


@dataclass(frozen=True)
class Trajectory:
    """Both walks from the conventional partition. State i (0..len(easier)+len(harder)) counts from the easiest end;
    state len(easier) is the conventional partition."""

    start: np.ndarray
    start_fid: float
    easier: list[Move]
    harder: list[Move]
    floors: tuple[int, int]
    swaps_per_step: int

    def fids(self) -> np.ndarray:
        """FID of every state, strictly increasing."""
        return np.array([m.fid for m in self.easier[::-1]] + [self.start_fid] + [m.fid for m in self.harder])

    def sides(self, state: int) -> np.ndarray:
        """Side (TRAIN/TEST/REMOVED) of every class in `state`, replayed from the conventional partition."""
        conv = len(self.easier)
        side = self.start.copy()
        for m in self.easier[: conv - state] if state < conv else self.harder[: state - conv]:
            side[m.idx] = m.to
        return side


def walk_ladder(means: np.ndarray, start: np.ndarray, cfg: LadderCfg, *, fast: bool = True) -> Trajectory:
    """Run the easier and the harder walk from partition `start` over class means (rows; classes marked REMOVED in
    `start` never take part). `fast=False` runs the plain `PartitionStats` (the reference `FastPartitionStats` is
    tested against)."""
    centred = means - means[start != REMOVED].mean(axis=0)  # FID is translation invariant; centring keeps sums exact
    floors = (max(2, math.ceil(cfg.floor_fraction * int((start == TRAIN).sum()))),
              max(2, math.ceil(cfg.floor_fraction * int((start == TEST).sum()))))
    b0 = cfg.swaps_per_step or max(1, round(int((start != REMOVED).sum()) / 100))
    stats = (FastPartitionStats if fast else PartitionStats)(centred, start)
    fid0 = stats.fid()
    easier = _walk(stats.copy(), harder=False, floors=floors, cfg=cfg, b0=b0, start_fid=fid0)
    harder = _walk(stats, harder=True, floors=floors, cfg=cfg, b0=b0, start_fid=fid0)
    return Trajectory(start.copy(), fid0, easier, harder, floors, b0)


def _pick(fids: np.ndarray, conv: int, levels: int) -> list[int]:
    """Indices of `levels` states of a strictly increasing FID trajectory, spread evenly in FID, ends and `conv`
    included, strictly increasing."""
    n = len(fids)
    if n < levels:
        raise OodmlError(f"the class-swap walk reached only {n} distinct splits, fewer than --levels {levels}; "
                         "lower --levels or use more classes")
    targets = np.linspace(fids[0], fids[-1], levels)
    lo, hi = max(0, levels - (n - conv)), min(levels - 1, conv)  # slots that leave room on both sides
    if 0 < conv < n - 1 and levels > 2:  # keep both ends of the trajectory
        lo, hi = max(lo, 1), min(hi, levels - 2)
    slot = int(np.clip(np.argmin(np.abs(targets - fids[conv])), lo, hi))
    idx = [int(np.clip(np.argmin(np.abs(fids - t)), i, n - levels + i)) for i, t in enumerate(targets)]
    idx[0], idx[-1], idx[slot] = 0, n - 1, conv
    for i in range(1, levels):  # forward: strictly increasing
        idx[i] = max(idx[i], idx[i - 1] + 1) if i != slot else idx[i]
    for i in range(levels - 2, -1, -1):  # backward: fits below the next
        idx[i] = min(idx[i], idx[i + 1] - 1) if i != slot else idx[i]
    return idx


def _conventional_sides(fs: FeatureSet, present: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """Side per class from the features file's `class_split`, or a seeded random half split when it is absent or
    leaves a side with fewer than 2 classes (then the description starts with "random" and no level is marked
    conventional: the walks start from it, and `extra.start_level` says which level it is)."""
    side = np.full(len(fs.class_names), REMOVED, dtype=np.int8)
    if fs.class_split is not None:
        cs = np.asarray(fs.class_split)
        side[present & (cs == "train")] = TRAIN
        side[present & (cs == "test")] = TEST
        if (side == TRAIN).sum() >= 2 and (side == TEST).sum() >= 2:
            return side, "class_split of the features file"
        side[:] = REMOVED
        why = "the features file's class_split leaves a side with fewer than 2 classes"
    else:
        why = "the features file has no class_split"
    order = np.flatnonzero(present)[seeding.rng(fs.dataset, "conventional", seed).permutation(int(present.sum()))]
    half = (len(order) + 1) // 2
    side[np.sort(order[:half])], side[np.sort(order[half:])] = TRAIN, TEST
    return side, f"random half split (seed {seed}): {why}"


def _names(fs: FeatureSet, side: np.ndarray, s: int) -> list[str]:
    return sorted(str(c) for c in fs.class_names[side == s])


@one_blas_thread()  # the walk's choices and the level FIDs must not depend on OMP_NUM_THREADS
def build_ladder(fs: FeatureSet, cfg: LadderCfg | None = None, *,
                 classes_from: dict[str, Any] | None = None, fast: bool = True) -> SplitSpec:
    """Build the FID ladder of a features file (see the module docstring).

    Args:
        fs: features (class means are taken over its images).
        cfg: the ladder's knobs (`LadderCfg()`, the ooDML procedure, when None).
        classes_from: description of where the classes came from, recorded in the split file.
        fast: search with `FastPartitionStats` (False: the plain `PartitionStats`, for comparisons).

    Returns:
        The validated SplitSpec, levels 1..L by strictly increasing FID.
    """
    cfg = cfg or LadderCfg()
    seed = cfg.seed
    dataset = fs.dataset or "unknown"
    sizes = np.bincount(fs.labels, minlength=len(fs.class_names))
    for k in cfg.ks:  # before the walk: a k no class (or only one) has a query for fails at every level
        if int((sizes > k).sum()) < 2:
            raise OodmlError(f"--k {k} leaves {int((sizes > k).sum())} class(es) with a query (a class needs k + 1 "
                             f"images; the largest has {int(sizes.max(initial=0))}); lower --k")
    raw = fs.class_means()
    present = np.isfinite(raw).all(axis=1)
    conv_side, conv_how = _conventional_sides(fs, present, seed)
    log(f"make-splits: {int(present.sum())} classes, {raw.shape[1]}-d; conventional split: {conv_how}")
    traj = walk_ladder(np.where(present[:, None], raw, 0.0), conv_side, cfg, fast=fast)
    fids, conv = traj.fids(), len(traj.easier)
    log(f"make-splits: {len(traj.easier)} easier and {len(traj.harder)} harder steps, "
        f"FID {fids[0]:.4g} .. {fids[-1]:.4g}")

    chosen = _pick(fids, conv, cfg.levels)
    class_ids = _class_to_ids(fs)
    out: list[Level] = []
    for number, state in enumerate(chosen, start=1):
        side = traj.sides(state)
        train, test = _names(fs, side, TRAIN), _names(fs, side, TEST)
        removed = sorted(str(c) for c in fs.class_names[side == REMOVED])
        if fast and min((side == TRAIN).sum(), (side == TEST).sum()) > raw.shape[1]:
            fid = float(fids[state])  # the covariance route's search FIDs are as exact as a recomputation (1e-13)
        else:
            fid = frechet_distance(raw[side == TRAIN], raw[side == TEST])
        g = seeding.rng(dataset, "val", seed, number)
        n_val = int(math.floor(cfg.val_fraction * len(train) + 0.5))
        val = sorted(train[i] for i in g.choice(len(train), n_val, replace=False))
        level = Level(level=number, fid=fid, train_classes=train, test_classes=test, val_classes=val,
                      removed_classes=removed, conventional=state == conv and not conv_how.startswith("random"))
        for k in cfg.ks:
            eps, excluded = sample_episodes({c: class_ids[c] for c in test}, k, cfg.episodes,
                                            key=(dataset, number, seed), ways=cfg.ways)
            if len(test) - len(excluded) < 2:
                raise OodmlError(f"--k {k} leaves {len(test) - len(excluded)} test class(es) of level {number} with "
                                 f"a query (a class needs k + 1 images; {len(excluded)} of {len(test)} have fewer); "
                                 "lower --k")
            level.episodes[str(k)] = eps
            if excluded:
                level.episode_excluded[str(k)] = excluded
        out.append(level)
    for a, b in zip(out, out[1:]):
        if not b.fid > a.fid:
            raise OodmlError(f"levels {a.level} and {b.level} have the same FID ({a.fid}); lower --levels")

    from oodml import __version__

    gen = asdict(cfg)
    gen.update(ks=list(cfg.ks), swaps_per_step=traj.swaps_per_step,
               floors={"train": traj.floors[0], "test": traj.floors[1]}, steps_easier=len(traj.easier),
               steps_harder=len(traj.harder), trajectory_fid=[float(fids[0]), float(fids[-1])])
    extra: dict[str, Any] = {
        "classes_from": dict(classes_from or {}) | {"n_classes": int(present.sum()), "n_images": int(len(fs.labels))},
        "conventional_split": conv_how,
        "start_level": chosen.index(conv) + 1,
        "generator": gen,
        "ways": cfg.ways,
    }
    return SplitSpec(dataset=dataset, backbone=fs.backbone, feature_hash=str(fs.meta.get("feature_hash") or fs.hash),
                     seed=seed, source=f"oodml {__version__} make-splits", levels=out, extra=extra)


def _class_to_ids(fs: FeatureSet) -> dict[str, list[str]]:
    """class name -> its image ids (the features file's `paths`)."""
    order = np.argsort(fs.labels, kind="stable")
    bounds = np.searchsorted(fs.labels[order], np.arange(len(fs.class_names) + 1))
    return {str(c): [str(p) for p in fs.paths[order[bounds[i]:bounds[i + 1]]]] for i, c in enumerate(fs.class_names)}


def plot_ladder(spec: SplitSpec, path: str | Path) -> Path:
    """Plot FID per level with train/test class counts; the conventional level is starred. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lv = spec.levels
    x = np.array([v.level for v in lv])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax2 = ax.twinx()
    ax2.bar(x - 0.2, [len(v.train_classes) for v in lv], 0.4, color="tab:blue", alpha=0.3, label="train classes")
    ax2.bar(x + 0.2, [len(v.test_classes) for v in lv], 0.4, color="tab:orange", alpha=0.3, label="test classes")
    ax2.set_ylabel("classes")
    ax.plot(x, [v.fid for v in lv], "o-", color="black", label="FID", zorder=3)
    conv = [v for v in lv if v.conventional]
    start = spec.extra.get("start_level")
    if conv:
        ax.plot([conv[0].level], [conv[0].fid], "*", color="red", markersize=16, label="conventional", zorder=4)
    elif isinstance(start, int) and 1 <= start <= len(lv):
        ax.plot([start], [lv[start - 1].fid], "*", color="gray", markersize=16, label="start (random half)", zorder=4)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlabel("level")
    ax.set_ylabel("FID of class means")
    ax.set_xticks(x)
    ax.set_ylim(bottom=0)
    n_classes = spec.extra.get("classes_from", {}).get("n_classes")
    what = f"{spec.backbone}, {n_classes} classes" if n_classes else spec.backbone
    fig.suptitle(f"{spec.dataset} ({what}): {len(lv)} levels", fontsize=11)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, metadata={"Software": None})
    plt.close(fig)
    return p


def _check_trained(trained: bool, backbone: str, allow: bool) -> None:
    """Refuse a ladder on features of random weights unless `allow` (then one warning line)."""
    if trained:
        return
    if not allow:
        raise OodmlError(f"backbone {backbone} has random weights: an FID ladder of its features measures no "
                         "semantic class shift; use a trained backbone (--backbone efficientnet_lite0, "
                         "--backbone-weights FILE), or confirm with --allow-random-weights")
    log(f"warning: backbone {backbone} has random weights; the split file records pretrained: false")


def make_splits_command(*, dataset: str | None, backbone: str, data_root: str | Path | None,
                        features: str | Path | None, levels: int, ks: tuple[int, ...], episodes: int,
                        ways: int | None, seed: int, out: str | Path | None,
                        dataset_options: Mapping[str, Any] | None = None, runtime: str = "auto",
                        weights: str | Path | None = None, allow_random_weights: bool = False) -> Path:
    """`oodml make-splits`: build the ladder from a features file or from the dataset's (cached) features, computed
    on `runtime` when absent (`auto`, `onnx`, `torch`) with the backbone's weights or the local file `weights`;
    write the split file and its plot (`<out>.png`). Returns the split file path. Features of a backbone with random
    weights are refused unless `allow_random_weights` (their FIDs say little about class shift)."""
    cfg = LadderCfg(levels=levels, ks=tuple(ks), episodes=episodes, seed=seed, ways=ways)  # bounds before any work
    if features is not None:
        fs = FeatureSet.load(features)
        if not fs.dataset and not dataset:
            raise OodmlError(f"features file {str(features)!r} names no dataset in meta; pass DATASET as well")
        if dataset and fs.dataset and dataset != fs.dataset:
            raise OodmlError(f"features file {str(features)!r} is for dataset {fs.dataset!r}, not {dataset!r}; "
                             "drop DATASET or pass the matching file")
        if not fs.dataset:
            fs.meta["dataset"] = dataset
        _check_trained(fs.meta.get("pretrained") is not False, str(fs.meta.get("backbone", "?")),
                       allow_random_weights)
        classes_from: dict[str, Any] = {"features_file": Path(features).name}
    else:
        if not dataset:
            raise OodmlError("make-splits needs a DATASET or --features FILE.npz")
        from oodml.features.backbones import has_trained_weights
        from oodml.features.extract import load_or_compute_features

        _check_trained(has_trained_weights(backbone, weights), backbone, allow_random_weights)
        fs = load_or_compute_features(dataset, backbone, data_root, options=dataset_options, runtime=runtime,
                                      weights=weights)
        classes_from = {"dataset": dataset, "data_root": str(data_root) if data_root else "default data root"}
        if dataset_options:
            classes_from["dataset_options"] = dict(dataset_options)
    names = [str(c) for c in fs.class_names]
    classes_from |= {"first_class": min(names), "last_class": max(names)}
    classes_from |= {k: fs.meta[k] for k in ("dataset_hash", "transform", "runtime", "weights_sha256") if k in fs.meta}
    if fs.meta.get("pretrained") is False:
        classes_from["pretrained"] = False
    spec = build_ladder(fs, cfg, classes_from=classes_from)
    path = Path(out) if out is not None else Path("splits") / f"{spec.dataset}.json"
    spec.save(path)
    plot_ladder(spec, path.with_suffix(".png"))
    log(f"make-splits: wrote {path} and {path.with_suffix('.png')}")
    return path
