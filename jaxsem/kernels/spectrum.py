"""PCA spectrum of a projection matrix, computed from the moments of its rows.

A projection matrix ``P [N, S]`` of ``N`` vectors on ``S`` directions is a product
``P = W U^T``: ``U [S, D]`` the unit directions and ``W [N, D]`` the vectors as the
metric sees them (unit rows for ``"cosine"``, zero rows staying zero; raw rows for
``"dot"``). Its column covariance is therefore exactly

    Cov(P) = U Cov(W) U^T          ([S, S], rank <= D)

so the PCA spectrum of ``P`` (standardized or not) follows from the ``[D, D]``
covariance of ``W``, one pass over the rows that costs ``2 N D^2`` flops, instead of
``2 N S^2`` for the Gram matrix of ``P`` itself: for a whole vocabulary on thousands
of directions the vocabulary is read once and every direction set (the antonym
directions and each random baseline) reuses the same moments. This is the same PCA,
not an approximation; tests check it against ``subspace.pca`` of the materialised
matrix.

The eigenvalues of ``A C A^T`` (``A`` the possibly rescaled unit directions, ``C``
the covariance) are the squared singular values of ``M = A L`` (``L L^T = C``, an
``[S, D]`` matrix), i.e. the eigenvalues of the smaller of ``M^T M`` and ``M M^T``,
taken in float64 on the host; ``L`` is computed once per ``Moments``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.errors import InputError
from jaxsem.kernels import subspace
from jaxsem.kernels.directions import check_finite, check_nonzero_rows

_HI = jax.lax.Precision.HIGHEST
METRICS = ("cosine", "dot")


@dataclasses.dataclass(frozen=True, eq=False)
class Moments:
  """First and second moments of the rows of ``W``.

  Attributes:
    n: number of rows.
    mean: ``[D]`` float32 row mean.
    cov: ``[D, D]`` float32 covariance about the mean, divided by ``n - 1`` (as PCA's).
    metric: the metric the rows were prepared for.
    cov64: the same covariance in float64 when the caller has it (``root`` is taken from it).
  """

  n: int
  mean: jax.Array
  cov: jax.Array
  metric: str
  cov64: np.ndarray | None = None

  @functools.cached_property
  def root(self) -> np.ndarray:
    """``[D, D]`` float64 ``L`` with ``L L^T = cov``: a host eigendecomposition, taken once, on the
    first spectrum, and shared by every direction set projected after it."""
    return _sqrt_psd(np.asarray(self.cov if self.cov64 is None else self.cov64))


@functools.partial(jax.jit, static_argnames=("metric", "n_rows"))
def _moments(vectors: jax.Array, metric: str, n_rows: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  valid = (jnp.arange(vectors.shape[0]) < n_rows)[:, None]
  w = vectors.astype(jnp.float32)
  if metric == "cosine":
    sq = jnp.sum(jnp.square(w), axis=-1, keepdims=True)
    w = w * jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  w = jnp.where(valid, w, 0.0)
  mean = jnp.sum(w, axis=0) / n_rows
  centred = jnp.where(valid, w - mean, 0.0)
  cov = jnp.einsum("nd,ne->de", centred, centred, precision=_HI) / (n_rows - 1)
  return mean, cov, jnp.all(jnp.isfinite(w))


def row_moments(vectors, metric: str = "cosine", n_rows: int | None = None) -> Moments:
  """Mean and covariance of the rows of ``vectors`` as ``metric`` sees them.

  Args:
    vectors: ``[N', D]`` host or device array; a row-sharded array stays sharded
      (XLA reduces the per-device partial sums).
    metric: ``"cosine"`` (rows scaled to unit norm; zero rows stay zero, as their
      projections score 0) or ``"dot"``.
    n_rows: only the first ``n_rows`` rows count (the rest are padding); default all.

  Returns:
    Moments.

  Raises:
    InputError: For an unknown metric, fewer than two rows, or NaN/inf in the rows.
  """
  if metric not in METRICS:
    raise InputError(f"Unknown projection metric {metric!r}; use one of {METRICS}.")
  if len(np.shape(vectors)) != 2:
    raise InputError(f"Moments need vectors [N, D], got shape {np.shape(vectors)}.")
  n = np.shape(vectors)[0] if n_rows is None else int(n_rows)
  if n < 2:
    raise InputError(f"Moments need at least two rows, got {n}.")
  mean, cov, finite = _moments(jnp.asarray(vectors), metric, n)
  if not bool(finite):
    check_finite(np.asarray(vectors)[:n], "vectors")
  return Moments(n=n, mean=mean, cov=cov, metric=metric)


class Spectrum(NamedTuple):
  """PCA spectrum of ``P = W U^T``.

  Attributes:
    eigenvalues: ``[min(S, D)]`` float64 component variances, descending.
    explained_variance_ratio: ``[min(S, D)]`` shares of the total variance.
    cumulative: running sum of ``explained_variance_ratio``.
    participation_ratio: ``(sum lambda)^2 / sum lambda^2``.
    n_components: ``{fraction: fewest components reaching it}`` for 0.5/0.8/0.9.
    standardized: PCA of the correlation (True) or covariance (False) matrix.
    n_directions: ``S``.
  """

  eigenvalues: np.ndarray
  explained_variance_ratio: np.ndarray
  cumulative: np.ndarray
  participation_ratio: float
  n_components: dict[float, int | None]
  standardized: bool
  n_directions: int


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
  """A ``[D, D]`` matrix ``L`` with ``L L^T = cov`` (round-off negative eigenvalues -> 0)."""
  c = np.asarray(cov, np.float64)
  lam, vec = np.linalg.eigh((c + c.T) / 2)
  return vec * np.sqrt(np.clip(lam, 0.0, None))


def projection_spectrum(moments: Moments, directions, standardize: bool = True,
                        fractions: Sequence[float] = (0.5, 0.8, 0.9)) -> Spectrum:
  """The PCA spectrum of the projection of the rows behind ``moments`` on ``directions``.

  Args:
    moments: ``row_moments`` of the vectors (its metric decides cosine vs dot).
    directions: ``[S, D]`` directions (any nonzero norms; scaled to unit length).
    standardize: PCA of the standardized matrix (correlations), as ``subspace.pca``.
    fractions: variance shares to count components for.

  Returns:
    Spectrum.

  Raises:
    InputError: For NaN/inf or zero directions, mismatched dimensions, or (with
      ``standardize``) a direction whose projections do not vary over the rows.
  """
  check_finite(directions, "directions")
  check_nonzero_rows(directions, "directions")
  u = np.asarray(directions, np.float64)
  root = moments.root
  if u.ndim != 2 or u.shape[1] != root.shape[0]:
    raise InputError(f"Directions of shape {u.shape} do not match vectors of dimension {root.shape[0]}.")
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  m = u @ root  # [S, D]; Cov(P) = m m^T
  if standardize:
    sd = np.linalg.norm(m, axis=1)
    flat = np.flatnonzero(sd <= 1e-12 * max(float(sd.max()), np.finfo(np.float64).tiny))
    if flat.size:
      raise InputError(f"The projections on direction {flat[0]} do not vary over the vectors, so they"
                       " cannot be standardized; drop that direction or use standardize=False.")
    m = m / sd[:, None]
  lam = np.linalg.eigvalsh(m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T)[::-1]
  lam = np.clip(lam, 0.0, None)
  total = float(np.sum(np.square(m)))  # trace of Cov(P) (S when standardized)
  ratio = lam / total
  cum = np.cumsum(ratio)
  pr = float(np.square(lam.sum()) / np.sum(np.square(lam))) if lam.sum() > 0 else 0.0
  return Spectrum(eigenvalues=lam, explained_variance_ratio=ratio, cumulative=cum, participation_ratio=pr,
                  n_components=subspace.n_components_for(cum, fractions), standardized=standardize,
                  n_directions=u.shape[0])

