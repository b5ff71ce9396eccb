"""Reducing the words x scales matrix: PCA, randomized SVD, varimax, congruence.

Sign convention (PCA components, randomized-SVD vectors, varimax factors): each
component is flipped so that its entry of largest magnitude over the scales is
positive (the first such entry on ties). Results are therefore deterministic and
comparable across models up to genuine differences.

Precision: computations run in float32 by default. ``pca`` and ``varimax`` accept
``dtype="float64"``, which runs them under ``jax.enable_x64`` and returns float64
numpy arrays (so no x64 values leak into later float32 JAX code); use it for
ill-conditioned matrices or when comparing to float64 references beyond ~1e-5.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.errors import InputError
from jaxsem.kernels.directions import check_finite, is_concrete

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def _fix_signs(cols: Array) -> Array:
  """``[k]`` signs making each column's largest-magnitude entry positive."""
  idx = jnp.argmax(jnp.abs(cols), axis=0)
  signs = jnp.sign(cols[idx, jnp.arange(cols.shape[1])])
  return jnp.where(signs == 0, 1.0, signs).astype(cols.dtype)


def _dtype(dtype) -> np.dtype:
  dtype = np.dtype(dtype)
  if dtype not in (np.float32, np.float64):
    raise InputError(f"Subspace kernels run in float32 or float64, not {dtype}.")
  return dtype


def _run(fn, dtype: np.dtype, *arrays, **static):
  """Calls jitted ``fn`` in ``dtype``; float64 under ``jax.enable_x64``."""
  if dtype == np.float64:
    with jax.enable_x64(True):
      out = fn(*(jnp.asarray(np.asarray(a, np.float64)) for a in arrays), **static)
      return jax.tree.map(np.asarray, out)
  return fn(*(jnp.asarray(a, jnp.float32) for a in arrays), **static)


class PCAResult(NamedTuple):
  """Principal components of a ``[N, S]`` matrix (``N`` words, ``S`` scales), ``r = min(N, S)``.

  Attributes:
    explained_variance_ratio: ``[k]`` share of the total variance per component.
    cumulative: ``[k]`` running sum of ``explained_variance_ratio``.
    components: ``[S, k]`` unit eigenvectors (columns), signs fixed as documented.
    loadings: ``[S, k]`` ``components * sqrt(eigenvalues)``. With ``standardize``
      these are the correlations of each scale with each component's scores;
      without, the covariances of each scale with the standardized scores.
    scores: ``[N, k]`` the centred (and scaled) data times ``components``.
    singular_values: ``[r]`` all singular values of the centred (scaled) data.
    eigenvalues: ``[r]`` all component variances, ``singular_values**2 / (N - 1)``.
    mean: ``[S]`` column means removed.
    scale: ``[S]`` column standard deviations (``ddof=1``) divided out, or ones.
  """

  explained_variance_ratio: Array
  cumulative: Array
  components: Array
  loadings: Array
  scores: Array
  singular_values: Array
  eigenvalues: Array
  mean: Array
  scale: Array


@jax.jit(static_argnames=("standardize", "k", "method"))
def _pca_core(x: Array, standardize: bool, k: int, method: str) -> PCAResult:
  n = x.shape[0]
  mean = jnp.mean(x, axis=0)
  xc = x - mean
  scale = jnp.sqrt(jnp.sum(jnp.square(xc), axis=0) / (n - 1)) if standardize else jnp.ones_like(mean)
  z = xc / scale
  if method == "svd":
    u, s, vt = jnp.linalg.svd(z, full_matrices=False)
    v = vt.T[:, :k]
    signs = _fix_signs(v)
    scores = u[:, :k] * (s[:k] * signs)
  else:
    w, v = jnp.linalg.eigh(jnp.matmul(z.T, z, precision=_HI))
    r = min(x.shape)
    s = jnp.sqrt(jnp.clip(w[::-1][:r], 0.0))
    v = v[:, ::-1][:, :k]
    signs = _fix_signs(v)
    scores = jnp.matmul(z, v * signs, precision=_HI)
  v = v * signs
  eig = jnp.square(s) / (n - 1)
  ratio = jnp.square(s) / jnp.sum(jnp.square(s))
  return PCAResult(ratio[:k], jnp.cumsum(ratio)[:k], v, v * jnp.sqrt(eig[:k]), scores, s, eig, mean, scale)


def pca(x, standardize: bool = True, k: int | None = None, *, method: str = "svd",
        dtype=np.float32) -> PCAResult:
  """Principal component analysis of the words x scales matrix.

  Args:
    x: ``[N, S]`` matrix, rows are observations (words), columns variables (scales).
    standardize: Divide each column by its standard deviation after centring, i.e.
      PCA of the correlation matrix (the usual choice for rating scales).
    k: Components to keep; ``None`` keeps all ``min(N, S)`` (without a rank check).
    method: ``"svd"`` (``jnp.linalg.svd`` of the data) or ``"gram"`` (eigendecomposition
      of the ``[S, S]`` cross-product, for very tall row-sharded ``x``; squares the
      condition number, so small components are less accurate).
    dtype: ``float32`` or ``float64`` (see the module docstring).

  Returns:
    ``PCAResult``.

  Raises:
    InputError: For NaN/inf, fewer than two rows, a constant column with
      ``standardize``, or ``k`` outside ``1..rank`` of the centred matrix.
  """
  dtype = _dtype(dtype)
  if method not in ("svd", "gram"):
    raise InputError(f"Unknown PCA method {method!r}; use 'svd' or 'gram'.")
  if len(np.shape(x)) != 2 or np.shape(x)[0] < 2:
    raise InputError(f"PCA needs a [words, scales] matrix with at least two rows, got shape {np.shape(x)}.")
  n, s = np.shape(x)
  r = min(n, s)
  if k is not None and not 1 <= k <= r:
    raise InputError(f"Cannot keep k={k} components of a {n} x {s} matrix; k must lie in 1..{r}.")
  check_finite(x, "words x scales matrix")
  if standardize:
    xj = jnp.asarray(x)
    bad = np.flatnonzero(~(np.asarray(jnp.max(xj, axis=0) - jnp.min(xj, axis=0)) > 0))
    if bad.size:
      raise InputError(f"Column {bad[0]} of the words x scales matrix is constant, so it cannot be"
                       " standardized; drop that scale or use standardize=False.")
  result = _run(_pca_core, dtype, x, standardize=standardize, k=r if k is None else k, method=method)
  if k is not None:
    sv = np.asarray(result.singular_values)
    # numpy's matrix_rank tolerance for the SVD; for the Gram route the eigenvalues (the
    # squared singular values) carry the round-off of an [S, S] eigendecomposition.
    eps = np.finfo(dtype).eps
    tol = sv[0] * (eps * max(n, s) if method == "svd" else np.sqrt(eps * s))
    rank = int(np.sum(sv > tol))
    if k > rank:
      raise InputError(f"Cannot keep k={k} components: the centred {n} x {s} matrix has rank {rank}.")
  return result


@jax.jit(static_argnames=("k", "oversample", "n_iter"))
def _rsvd_core(x: Array, key: Array, k: int, oversample: int, n_iter: int) -> tuple[Array, Array, Array]:
  n, s = x.shape
  ell = min(k + oversample, n, s)
  q, _ = jnp.linalg.qr(jnp.matmul(x, jax.random.normal(key, (s, ell), x.dtype), precision=_HI))

  def power(_, q):
    w, _ = jnp.linalg.qr(jnp.matmul(x.T, q, precision=_HI))
    q, _ = jnp.linalg.qr(jnp.matmul(x, w, precision=_HI))
    return q

  q = jax.lax.fori_loop(0, n_iter, power, q)
  ub, sv, vt = jnp.linalg.svd(jnp.matmul(q.T, x, precision=_HI), full_matrices=False)
  u, sv, vt = jnp.matmul(q, ub[:, :k], precision=_HI), sv[:k], vt[:k]
  signs = _fix_signs(vt.T)
  return u * signs, sv, vt * signs[:, None]


def randomized_svd(x, k: int, oversample: int = 10, n_iter: int = 4,
                   key: Array | None = None) -> tuple[Array, Array, Array]:
  """Top-``k`` SVD by a randomized range finder (Halko, Martinsson & Tropp, 2011).

  Sketches the range of ``x`` with ``k + oversample`` Gaussian test vectors, sharpens
  it with ``n_iter`` QR-stabilised power iterations, and takes the exact SVD of the
  small projected matrix. Costs a few passes of ``x`` matmuls, so it suits a large
  (row-sharded) matrix whose top components are all that is needed. Nothing is
  centred: pass ``x - mean`` for PCA.

  Args:
    x: ``[N, S]`` float32 matrix.
    k: Number of singular triplets.
    oversample: Extra test vectors beyond ``k``.
    n_iter: Power iterations (more for slowly decaying spectra).
    key: PRNG key; default ``jax.random.key(0)`` (deterministic).

  Returns:
    ``(u [N, k], s [k], vt [k, S])``, ``s`` descending, signs fixed on ``vt`` rows.

  Raises:
    InputError: For NaN/inf or ``k`` outside ``1..min(N, S)``.
  """
  if len(np.shape(x)) != 2 or not 1 <= k <= min(np.shape(x)):
    raise InputError(f"Cannot take k={k} singular vectors of a matrix of shape {np.shape(x)}; "
                     f"k must lie in 1..min(N, S).")
  if oversample < 0 or n_iter < 0:
    raise InputError(f"oversample={oversample} and n_iter={n_iter} must not be negative.")
  if is_concrete(x):
    check_finite(x, "matrix to decompose")
  key = jax.random.key(0) if key is None else key
  return _rsvd_core(jnp.asarray(x, jnp.float32), key, k=k, oversample=oversample, n_iter=n_iter)


@jax.jit(static_argnames=("max_iter", "normalize"))
def _varimax_core(phi: Array, gamma: Array, tol: Array, max_iter: int,
                  normalize: bool) -> tuple[Array, Array]:
  p, k = phi.shape
  h = jnp.sqrt(jnp.sum(jnp.square(phi), axis=1, keepdims=True))
  a = phi / jnp.where(h > 0, h, 1.0) if normalize else phi

  def body(state):
    i, rot, _ = state
    lam = jnp.matmul(a, rot, precision=_HI)
    target = lam ** 3 - (gamma / p) * lam * jnp.sum(jnp.square(lam), axis=0)
    u, _, vt = jnp.linalg.svd(jnp.matmul(a.T, target, precision=_HI))
    new = jnp.matmul(u, vt, precision=_HI)
    return i + 1, new, jnp.max(jnp.abs(new - rot))

  def cond(state):
    i, _, change = state
    return (i < max_iter) & (change > tol)

  inf = jnp.array(jnp.inf, phi.dtype)
  _, rot, _ = jax.lax.while_loop(cond, body, (0, jnp.eye(k, dtype=phi.dtype), inf))
  rotated = jnp.matmul(phi, rot, precision=_HI)
  signs = _fix_signs(rotated)
  return rotated * signs, rot * signs


def varimax(loadings, gamma: float = 1.0, max_iter: int = 500, tol: float = 1e-6, *,
            normalize: bool = True, dtype=np.float32) -> tuple[Array, Array]:
  """Orthogonal rotation maximising the (ortho)max criterion (Kaiser, 1958).

  The SVD-based iteration: ``R <- U V^T`` where ``U S V^T`` is the SVD of
  ``A^T (L^3 - gamma/p * L diag(L^T L))``, ``L = A R``, stopping when no entry of
  ``R`` changes by more than ``tol``. (The usual stop on the criterion ``sum(S)``
  growing by less than ``1 + tol`` stalls in float32 while ``R`` still moves by
  ~1e-4; the rotation change is resolved down to float32 rounding.) ``gamma = 1`` is
  varimax, ``0`` quartimax. Factors keep their order; their signs follow the module
  convention.

  Args:
    loadings: ``[S, k]`` unrotated loadings (e.g. ``PCAResult.loadings``).
    gamma: Orthomax parameter.
    max_iter: Iteration cap.
    tol: Largest change of a rotation entry at convergence.
    normalize: Kaiser normalisation: rotate the rows scaled to unit communality and
      scale them back (the default in R's ``varimax``).
    dtype: ``float32`` or ``float64``.

  Returns:
    ``(rotated [S, k], rotation [k, k])`` with ``rotated == loadings @ rotation``.

  Raises:
    InputError: For NaN/inf or a non-2-D input.
  """
  dtype = _dtype(dtype)
  if len(np.shape(loadings)) != 2 or np.shape(loadings)[1] < 1:
    raise InputError(f"Varimax needs a [scales, factors] loading matrix, got shape {np.shape(loadings)}.")
  check_finite(loadings, "loadings")
  return _run(_varimax_core, dtype, loadings, gamma, tol, max_iter=max_iter, normalize=normalize)


def tucker_congruence(a, b) -> Array:
  """Tucker's congruence ``sum(a b) / sqrt(sum(a^2) sum(b^2))`` of two ``[S]`` loading vectors."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.shape != b.shape or a.ndim != 1:
    raise InputError(f"Congruence compares two loading vectors of equal length, got shapes {a.shape}"
                     f" and {b.shape}.")
  return tucker_congruence_matrix(a[:, None], b[:, None])[0, 0]


def tucker_congruence_matrix(a, b) -> Array:
  """Congruence of every column of ``a [S, k1]`` with every column of ``b [S, k2]``: ``[k1, k2]``.

  Raises:
    InputError: For mismatched rows, or (concrete input) NaN/inf or an all-zero column.
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
    raise InputError(f"Congruence needs loadings over the same scales, got shapes {a.shape} and {b.shape}.")
  if is_concrete(a, b):
    for m, name in ((a, "first"), (b, "second")):
      check_finite(m, f"{name} loadings")
      if not (np.linalg.norm(np.asarray(m), axis=0) > 0).all():
        raise InputError(f"The {name} loadings have an all-zero column, whose congruence is undefined.")
  na = jnp.sqrt(jnp.sum(jnp.square(a), axis=0))
  nb = jnp.sqrt(jnp.sum(jnp.square(b), axis=0))
  return jnp.matmul(a.T, b, precision=_HI) / (na[:, None] * nb[None, :])


def match_components(congruence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pairs each row factor with a distinct column factor, maximising total ``|congruence|``.

  Exhaustive for up to 8 columns, greedy beyond.

  Args:
    congruence: ``[k1, k2]`` with ``k1 <= k2`` (e.g. ``tucker_congruence_matrix``).

  Returns:
    ``(columns [k1], signs [k1], values [k1])``: row ``i`` matches column
    ``columns[i]`` with congruence ``values[i] = signs[i] * |.|``.
  """
  c = np.asarray(congruence, np.float64)
  k1, k2 = c.shape
  if k1 > k2:
    raise InputError(f"Cannot match {k1} factors to only {k2}; put the smaller set first.")
  mag = np.abs(c)
  if k2 <= 8:
    best = max(itertools.permutations(range(k2), k1), key=lambda p: mag[np.arange(k1), list(p)].sum())
    cols = np.array(best, dtype=np.int64)
  else:
    cols = np.full(k1, -1, np.int64)
    work = mag.copy()
    for _ in range(k1):
      i, j = np.unravel_index(np.argmax(work), work.shape)
      cols[i] = j
      work[i, :] = -1
      work[:, j] = -1
  values = c[np.arange(k1), cols]
  return cols, np.where(values < 0, -1, 1), values


def participation_ratio(eigvals) -> Array:
  """Effective dimensionality ``(sum lambda)^2 / sum(lambda^2)`` over the last axis."""
  lam = jnp.asarray(eigvals, jnp.float32)
  return jnp.square(jnp.sum(lam, axis=-1)) / jnp.sum(jnp.square(lam), axis=-1)


def n_components_for(cumulative, fractions: Sequence[float] = (0.5, 0.8, 0.9)) -> dict[float, int | None]:
  """Fewest components whose cumulative explained variance reaches each fraction.

  Args:
    cumulative: ``[k]`` non-decreasing cumulative explained-variance ratios.
    fractions: Targets in ``(0, 1]``.

  Returns:
    ``{fraction: n}``, ``n`` 1-based, or ``None`` if the ``k`` components given fall
    short (a 1e-6 slack absorbs float32 rounding of a total of 1).
  """
  cum = np.asarray(cumulative, np.float64)
  out: dict[float, int | None] = {}
  for f in fractions:
    hits = np.flatnonzero(cum >= f - 1e-6)
    out[f] = int(hits[0]) + 1 if hits.size else None
  return out
