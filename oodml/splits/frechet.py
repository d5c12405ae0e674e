"""Exact Fréchet distance between the Gaussians of two sets of class means (docs/formats.md), no eps and no sqrtm.

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
    from scipy.linalg.blas import dsyrk

    cov = dsyrk(1.0 / (n - 1), centred, trans=1, lower=1)  # half the flops of centredᵀ centred
    cov += np.tril(cov, -1).T
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
    """Fréchet distance between Gaussians fitted to two sets of class means (rows), as docs/formats.md defines it.

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


# --- Tr (Σ_a Σ_b)^½ for the ladder search when both sides have more classes than dimensions --------------------------
#
# Both routes below give the value of `trace_sqrt_product` on covariance-form moments to float64 rounding (about
# 1e-13 relative), by other arithmetic:
# - `trace_sqrt_cov`: LAPACK's symmetric congruence (`dsygst`, Lᵀ Σ_b L in one call, half the flops of two
#   triangular products) and the eigenvalues of its lower triangle;
# - `JointDiag` + `trace_sqrt_update`: the eigen-decomposition of a base pair (W Wᵀ = Σ_a, Wᵀ Σ_b W = Λ) and the
#   change of Σ √λ when the pair moves by a low-rank update, from a Stieltjes integral evaluated through Woodbury
#   identities on k × k matrices (k = the update's rank): O(N D k²) for N quadrature nodes instead of O(D³).


def trace_sqrt_cov(cov_a: np.ndarray, cov_b: np.ndarray, *, overwrite: bool = False) -> float:
    """Tr (Σ_a Σ_b)^½ of two D × D covariances (only their lower triangles are read; with `overwrite`, a
    column-major Σ_b is used as workspace), Σ_a positive definite: the eigenvalues of Lᵀ Σ_b L (L the Cholesky factor
    of Σ_a) from `dsygst`. Falls back to `_congruence` when Σ_a is not positive definite."""
    from scipy.linalg.lapack import dpotrf, dsygst

    low, info = dpotrf(cov_a, lower=1, clean=0)
    if info != 0:
        full_a, full_b = np.tril(cov_a) + np.tril(cov_a, -1).T, np.tril(cov_b) + np.tril(cov_b, -1).T
        inner = _congruence(full_a, full_b)
        return _sqrt_sum(np.linalg.eigvalsh((inner + inner.T) / 2))
    inner, info = dsygst(cov_b, low, itype=2, lower=1, overwrite_a=int(overwrite))
    if info != 0:  # pragma: no cover - dsygst fails only on bad arguments
        raise OodmlError(f"LAPACK dsygst failed (info {info})")
    return _sqrt_sum(np.linalg.eigvalsh(inner, UPLO="L"))


@dataclass(frozen=True)
class JointDiag:
    """A factor W of Σ_a that diagonalises Σ_b: W Wᵀ = Σ_a, Wᵀ Σ_b W = diag(lam), W = L Q (L the Cholesky factor of
    Σ_a, Q the eigenvectors of Lᵀ Σ_b L). Σ √lam = Tr (Σ_a Σ_b)^½."""

    low: np.ndarray
    vec: np.ndarray
    lam: np.ndarray
    sqrt_sum: float

    @classmethod
    def of(cls, cov_a: np.ndarray, cov_b: np.ndarray) -> JointDiag | None:
        """The decomposition of a pair of covariances (lower triangles read); None when Σ_a is not positive
        definite or Lᵀ Σ_b L is not (then the low-rank route does not apply)."""
        from scipy.linalg.lapack import dsygst

        try:
            low = np.linalg.cholesky(cov_a)
        except np.linalg.LinAlgError:
            return None
        inner, info = dsygst(np.asfortranarray(cov_b), low, itype=2, lower=1)
        if info != 0:  # pragma: no cover
            return None
        lam, vec = np.linalg.eigh(inner, UPLO="L")
        if lam[0] <= lam[-1] * len(lam) * np.finfo(np.float64).eps * 1e3:
            return None
        return cls(low, vec, lam, float(np.sqrt(lam).sum()))

    def whiten(self, u: np.ndarray) -> np.ndarray:
        """W⁻¹ u (columns)."""
        from scipy.linalg import solve_triangular

        return self.vec.T @ solve_triangular(self.low, u, lower=True)  # type: ignore[no-any-return]

    def project(self, u: np.ndarray) -> np.ndarray:
        """Wᵀ u (columns)."""
        return self.vec.T @ (self.low.T @ u)  # type: ignore[no-any-return]


def trace_sqrt_update(base: JointDiag, p: np.ndarray, c_a: np.ndarray, y: np.ndarray, c_b: np.ndarray,
                      *, stretch: float = 2.5, step: float = 0.12) -> float | None:
    """Σ √t over the eigenvalues t of (I + P C_a Pᵀ)(Λ + Y C_b Yᵀ), the whitened pair after a low-rank update of
    `base` (P = W⁻¹ U_a, Y = Wᵀ U_b, C symmetric, the updated covariances positive semi-definite); None when the
    quadrature's own error check fails.

    With X = [Y, P] and Z = [Y C_b, (Λ P + Y C_b Yᵀ P) C_a] the product is Λ + X Zᵀ, and

        Σ √t − Σ √λ = (1/π) ∫₀^∞ s^{-1/2} φ(s) ds,  φ(s) = s Tr[(I + Zᵀ Λ_s⁻¹ X)⁻¹ Zᵀ Λ_s⁻² X],  Λ_s = Λ + s I

    (√x = (1/π) ∫ x / (x + s) s^{-1/2} ds and Woodbury's identity for Tr (Λ_s + X Zᵀ)⁻¹); all nodes' k × k matrices
    come from two GEMMs. τ s / (s + σ)² (τ = Tr X Zᵀ, whose integral is known) is subtracted so that both tails decay
    like e^{-1.5|u|} in u = log s; the integrand is analytic in the strip |Im u| < π, and the trapezoid rule in v,
    u = log σ + `stretch` sinh v, converges geometrically in 1/`step` with double-exponentially decaying tails (about
    55 nodes for 1e-16 where 145 equally spaced ones in u were needed). The sum on every other node is the error
    check (its error is about the square root of the full sum's).
    """
    lam = base.lam
    bp = lam[:, None] * p + y @ (c_b @ (y.T @ p))
    x = np.concatenate([y, p], axis=1)
    z = np.concatenate([y @ c_b, bp @ c_a.T], axis=1)
    k = x.shape[1]
    tau = float(np.einsum("ij,ij->", x, z))
    sigma = float(np.sqrt(lam[0] * lam[-1]))
    reach = 0.5 * float(np.log(lam[-1] / lam[0])) + 26.0  # past the spectrum, the tails are below 1e-17
    half = int(np.ceil(np.arcsinh(reach / stretch) / step))
    v = step * np.arange(-half, half + 1)
    s = sigma * np.exp(stretch * np.sinh(v))
    weight = step * stretch * np.cosh(v)
    n_nodes = len(s)
    inv = 1.0 / (lam[None, :] + s[:, None])  # (nodes, D)
    outer = (z[:, :, None] * x[:, None, :]).reshape(len(lam), k * k)  # row j: z_j x_jᵀ
    k1 = (inv @ outer).reshape(n_nodes, k, k)  # Zᵀ Λ_s⁻¹ X at every node, as one GEMM
    k2 = ((inv * inv) @ outer).reshape(n_nodes, k, k)
    k1[:, np.arange(k), np.arange(k)] += 1.0
    values = s * np.trace(np.linalg.solve(k1, k2), axis1=1, axis2=2)
    g = weight * np.sqrt(s) * (values - tau * s / (s + sigma) ** 2)
    fine = g.sum() / np.pi
    coarse = 2 * g[::2].sum() / np.pi
    scale = base.sqrt_sum
    if not np.isfinite(fine) or abs(fine - coarse) > 1e-7 * scale or max(abs(g[0]), abs(g[-1])) > 1e-16 * scale:
        return None
    return base.sqrt_sum + tau / (2 * np.sqrt(sigma)) + fine
