"""Exact Fréchet distance between the Gaussians of two sets of class means (SPEC §3), without eps and without sqrtm.

FID = ‖μ_a − μ_b‖² + Tr Σ_a + Tr Σ_b − 2 Tr (Σ_a Σ_b)^½, with Σ = cov(means, ddof=1).

Each covariance is handled through a factor F with Σ = F Fᵀ. With n ≤ D rows the centred, scaled means
(Fᵀ = (M − μ) / √(n − 1)) are such a factor, and Tr (Σ_a Σ_b)^½ is the nuclear norm ‖F_aᵀ F_b‖_*: the singular values
of an n_a × n_b matrix (the non-zero eigenvalues of Σ_a Σ_b are those of (F_aᵀ F_b)(F_aᵀ F_b)ᵀ). When one side has
more rows than dimensions, its covariance (D × D) is used instead: Tr = Σ √eig(F_aᵀ Σ_b F_a), a symmetric
eigenproblem; when both do, F_a is the Cholesky factor of Σ_a (from a symmetric eigendecomposition if Σ_a is
singular). No D × D matrix square root is formed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from oodml.errors import OodmlError


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run BLAS/LAPACK on one thread inside the block: a multi-threaded GEMM sums in a thread-count-dependent order,
    which moves the FID in its last digits, and the split file's bytes with it (`OMP_NUM_THREADS` must not change a
    split file)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True)
class Moments:
    """First and second moments of one set of class means.

    Attributes:
        n: number of class means.
        mean: (D,) sample mean.
        trace: Tr Σ.
        factor: (D, n) matrix F with F Fᵀ = Σ, given when n ≤ D (else None).
        cov: (D, D) covariance, given when n > D (else None).
    """

    n: int
    mean: np.ndarray
    trace: float
    factor: np.ndarray | None = None
    cov: np.ndarray | None = None


def moments_of(means: np.ndarray) -> Moments:
    """Moments of the rows of `means` (n × D, n ≥ 2), in the cheaper of the factor or covariance form."""
    m = np.asarray(means, dtype=np.float64)
    n, d = m.shape
    mu = m.mean(axis=0)
    centred = m - mu
    if n <= d:
        factor = centred.T / np.sqrt(n - 1)
        return Moments(n, mu, float(np.einsum("ij,ij->", factor, factor)), factor=factor)
    cov = centred.T @ centred / (n - 1)
    return Moments(n, mu, float(np.trace(cov)), cov=cov)


def moments_from_sums(n: int, total: np.ndarray, gram: np.ndarray) -> Moments:
    """Covariance-form moments from running sums: `total` = Σ mᵢ (D,), `gram` = Σ mᵢ mᵢᵀ (D × D).

    Used by the ladder generator, which updates the sums when classes move instead of recomputing them. The means
    should be roughly centred (the generator subtracts the grand mean) so that `gram − n μ μᵀ` loses no precision.
    """
    mu = total / n
    cov = (gram - np.outer(total, mu)) / (n - 1)
    cov = (cov + cov.T) / 2
    return Moments(n, mu, float(np.trace(cov)), cov=cov)


def _sqrt_sum(eigenvalues: np.ndarray) -> float:
    """Σ √λ over the eigenvalues of a PSD matrix; eigenvalues at rounding level (|λ| ≤ n ε max|λ|, the rank
    tolerance of `np.linalg.matrix_rank`) count as 0.

    A rank-deficient matrix (fewer class means than dimensions on one side) has exact zero eigenvalues that come out
    of `eigvalsh` as ±1e-16 max|λ|; their square roots (1e-8 √max|λ|) would put noise into the 8th digit of the FID
    that changes with the BLAS kernels and thread count, and with it the split file's bytes.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.size == 0:
        return 0.0
    tol = float(np.abs(lam).max()) * lam.size * np.finfo(np.float64).eps
    return float(np.sqrt(np.where(lam > tol, lam, 0.0)).sum())


def _congruence(cov_a: np.ndarray, cov_b: np.ndarray) -> np.ndarray:
    """Fᵀ Σ_b F for a factor F Fᵀ = Σ_a: the Cholesky factor when Σ_a is positive definite (two triangular
    products), else the eigen-directions of Σ_a above rounding level."""
    try:
        low = np.asfortranarray(np.linalg.cholesky(cov_a))
    except np.linalg.LinAlgError:
        lam, vec = np.linalg.eigh(cov_a)
        keep = lam > lam.max(initial=0.0) * cov_a.shape[0] * np.finfo(np.float64).eps
        fa = vec[:, keep] * np.sqrt(lam[keep])
        return fa.T @ cov_b @ fa
    from scipy.linalg.blas import dtrmm

    right = dtrmm(1.0, low, np.asfortranarray(cov_b), side=1, lower=1)  # Σ_b L
    return dtrmm(1.0, low, right, side=0, lower=1, trans_a=1)  # type: ignore[no-any-return]  # Lᵀ Σ_b L


def trace_sqrt_product(a: Moments, b: Moments, *, exact: bool = True) -> float:
    """Tr (Σ_a Σ_b)^½ by the cheapest route for the two moment forms.

    With `exact=False` (the ladder search, whose level FIDs are recomputed exactly afterwards), the nuclear norm of
    a large F_aᵀ F_b comes from the eigenvalues of its Gram matrix instead of an SVD: several times faster, but
    singular values near 0 lose half their digits (about 1e-7 relative on rank-deficient inputs).
    """
    if a.factor is None and b.factor is not None:
        a, b = b, a
    if a.factor is not None and b.factor is not None:
        cross = a.factor.T @ b.factor
        if exact or min(cross.shape) <= 256:
            return float(np.linalg.svd(cross, compute_uv=False).sum())
        gram = cross @ cross.T if cross.shape[0] <= cross.shape[1] else cross.T @ cross
        return _sqrt_sum(np.linalg.eigvalsh((gram + gram.T) / 2))
    if a.factor is not None:
        inner = a.factor.T @ b.cov @ a.factor
    else:
        inner = _congruence(a.cov, b.cov)  # type: ignore[arg-type]
    return _sqrt_sum(np.linalg.eigvalsh((inner + inner.T) / 2))


def frechet_from_moments(a: Moments, b: Moments, *, exact: bool = True) -> float:
    """Fréchet distance between the Gaussians N(a.mean, Σ_a) and N(b.mean, Σ_b), clamped at 0 (it is ≥ 0)."""
    diff = a.mean - b.mean
    value = float(diff @ diff) + a.trace + b.trace - 2.0 * trace_sqrt_product(a, b, exact=exact)
    return max(value, 0.0)


def _check(name: str, m: np.ndarray) -> np.ndarray:
    arr = np.asarray(m, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise OodmlError(f"{name} must be a 2-D array of at least 2 class means (rows); got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise OodmlError(f"{name} contains NaN or inf; drop classes without images before computing the FID")
    return arr


def _canonical_rows(m: np.ndarray) -> np.ndarray:
    """Rows in lexicographic order (so that a permuted copy compares equal)."""
    return m[np.lexsort(m.T[::-1])]


def frechet_distance(means_a: np.ndarray, means_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of class means (rows), SPEC §3.

    Sample mean and `np.cov(rowvar=False)` (ddof 1) per set; exact to float64 rounding, no eps. Identical sets (in
    any row order) give exactly 0.0, and swapping the arguments gives exactly the same value. BLAS runs on one
    thread, so the value does not depend on `OMP_NUM_THREADS` (it can differ in the last digits on another kind of
    CPU, whose BLAS kernels sum in another order).

    Args:
        means_a: (n_a, D) class means, n_a ≥ 2.
        means_b: (n_b, D) class means, n_b ≥ 2.

    Returns:
        The squared-Wasserstein-2 (Fréchet) distance, ≥ 0.
    """
    a, b = _check("means_a", means_a), _check("means_b", means_b)
    if a.shape[1] != b.shape[1]:
        raise OodmlError(f"class means have different dimensions ({a.shape[1]} vs {b.shape[1]}); use one backbone")
    if a.shape == b.shape and np.array_equal(np.sort(a[:, 0]), np.sort(b[:, 0])) \
            and np.array_equal(_canonical_rows(a), _canonical_rows(b)):
        return 0.0
    if (a.shape[0], a.tobytes()) > (b.shape[0], b.tobytes()):  # a fixed argument order makes the result symmetric
        a, b = b, a
    with one_blas_thread():
        return frechet_from_moments(moments_of(a), moments_of(b))
