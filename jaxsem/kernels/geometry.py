"""Geometry of a set of axes against the correlations of the human columns they stand for.

For ``S`` scales, each with a human rating column and a model direction, two ``[S, S]``
matrices: the human inter-scale correlation (Pearson r over the words both columns rate,
pairwise complete) and the axes' cosines. Their relation is the correlation (and slope) of
the two matrices' upper triangles over the ``S (S - 1) / 2`` pairs. The pairs share scales,
so they are not independent: the null permutes the scale labels of one matrix, rows and
columns together (the Mantel test), which keeps each matrix's own dependence intact.

Bootstrap draws reweight the words by their multiplicity in the draw (``bootstrap_counts``):
a word drawn twice counts twice in every sum, which equals recomputing the pairwise-complete
r on the drawn words and costs one ``[B, N] @ [N, 4 C^2]`` product for ``B`` draws. The
axes' cosines are redrawn by resampling each scale's pole words within their pole
(``hierarchical.resample_pole_weights``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.errors import InputError
from jaxsem.kernels import hierarchical

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
ALTERNATIVES = ("greater", "two-sided")


# ----------------------------------------------------------------------------- correlation matrices


@jax.jit
def _weighted_pairwise(x: Array, ok: Array, w: Array) -> tuple[Array, Array]:
  """``[B, C, C]`` pairwise-complete r and the ``[B, C, C]`` weighted counts behind them."""
  x0 = jnp.where(ok, x, 0.0)
  m = ok.astype(jnp.float32)
  c = x.shape[1]
  # Per word, the products of every column pair: counts, sums, squares and cross products.
  outer = lambda a, b: (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], c * c)
  parts = jnp.concatenate([outer(m, m), outer(x0, m), outer(x0 * x0, m), outer(x0, x0)], axis=1)
  sums = jnp.matmul(w, parts, precision=_HI).reshape(w.shape[0], 4, c, c)
  n, s, q, xy = sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3]
  safe_n = jnp.where(n > 0, n, 1.0)
  s_t = jnp.swapaxes(s, 1, 2)
  cov = xy - s * s_t / safe_n
  var_a = jnp.maximum(q - s * s / safe_n, 0.0)
  var_b = jnp.swapaxes(var_a, 1, 2)
  # Tiny variances relative to the sum of squares are float rounding of a constant column.
  tol = 1e-6 * jnp.maximum(q, jnp.swapaxes(q, 1, 2)) + 1e-30
  good = (n > 1.5) & (var_a > tol) & (var_b > tol)
  r = jnp.where(good, cov * jax.lax.rsqrt(jnp.where(good, var_a * var_b, 1.0)), jnp.nan)
  r = jnp.clip(r, -1.0, 1.0)
  eye = jnp.eye(c, dtype=bool)
  return jnp.where(eye & ~jnp.isnan(r), 1.0, r), n


def _centred(x) -> tuple[Array, Array]:
  """Columns shifted by their mean (r is shift-free; float32 sums lose less) and the finite mask."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise InputError(f"Ratings must be a [N, C] array, got shape {x.shape}.")
  ok = np.isfinite(x)
  count = ok.sum(axis=0)
  mean = np.where(count > 0, np.where(ok, x, 0.0).sum(axis=0) / np.maximum(count, 1), 0.0)
  return jnp.asarray(np.where(ok, x - mean, 0.0), jnp.float32), jnp.asarray(ok)


def pairwise_corr(x) -> tuple[np.ndarray, np.ndarray]:
  """Pearson r of every pair of columns over the rows where both are finite.

  Args:
    x: ``[N, C]`` values, NaN where a row lacks a column.

  Returns:
    ``([C, C] r, [C, C] n)``: r (NaN where fewer than two shared rows or a constant column; the
    diagonal 1 where defined) and the number of rows both columns have.
  """
  x0, ok = _centred(x)
  r, n = _weighted_pairwise(x0, ok, jnp.ones((1, x0.shape[0]), jnp.float32))
  return np.asarray(r[0], np.float64), np.rint(np.asarray(n[0])).astype(np.int64)


@jax.jit(static_argnames=("n", "n_boot"))
def bootstrap_counts(key: Array, n: int, n_boot: int) -> Array:
  """``[B, n]`` multiplicities of ``n`` words drawn with replacement ``n`` times, per draw."""
  idx = jax.random.randint(key, (n_boot, n), 0, n)
  rows = jnp.broadcast_to(jnp.arange(n_boot)[:, None], idx.shape)
  return jnp.zeros((n_boot, n), jnp.float32).at[rows, idx].add(1.0)


def pairwise_corr_draws(x, counts) -> np.ndarray:
  """``pairwise_corr`` of each bootstrap draw of the rows.

  Args:
    x: ``[N, C]`` values, NaN where missing.
    counts: ``[B, N]`` each row's multiplicity in each draw (``bootstrap_counts``).

  Returns:
    ``[B, C, C]`` r per draw (NaN where undefined in that draw).
  """
  x0, ok = _centred(x)
  r, _ = _weighted_pairwise(x0, ok, jnp.asarray(counts, jnp.float32))
  return np.asarray(r, np.float64)


def cosine_matrix(vectors) -> np.ndarray:
  """``[S, S]`` cosines of ``[S, D]`` directions (a zero direction is an error).

  Raises:
    InputError: a zero or non-finite direction.
  """
  v = np.asarray(vectors, np.float64)
  norms = np.linalg.norm(v, axis=1)
  if v.ndim != 2 or not np.all(np.isfinite(v)) or np.any(norms == 0):
    raise InputError(f"Directions must be a finite [S, D] array with no zero row, got shape {v.shape}.")
  u = v / norms[:, None]
  c = np.clip(u @ u.T, -1.0, 1.0)
  np.fill_diagonal(c, 1.0)
  return c


@jax.jit
def _cosine_draws(dirs: Array) -> Array:
  u = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)  # [B, S, D]
  return jnp.clip(jnp.einsum("bsd,btd->bst", u, u, precision=_HI), -1.0, 1.0)


def pole_cosine_draws(key: Array, poles: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int) -> np.ndarray:
  """Cosines of directions whose pole words are resampled within each pole, per draw.

  Args:
    key: PRNG key; scale ``s`` draws with ``fold_in(key, s)``.
    poles: per scale, (``[P, D]`` positive, ``[M, D]`` negative) pole-word vectors whose means'
      difference is its direction.
    n_boot: draws ``B``.

  Returns:
    ``[B, S, S]`` cosine matrices (NaN in a draw whose direction is zero).
  """
  dirs = []
  for s, (pos, neg) in enumerate(poles):
    w = hierarchical.resample_pole_weights(jax.random.fold_in(key, s), len(pos), len(neg), n_boot)
    vecs = jnp.concatenate([jnp.asarray(pos, jnp.float32), jnp.asarray(neg, jnp.float32)])
    dirs.append(jnp.matmul(w, vecs, precision=_HI))
  return np.asarray(_cosine_draws(jnp.stack(dirs, axis=1)), np.float64)


# ----------------------------------------------------------------------------- the relation


def upper(m) -> np.ndarray:
  """The strict upper triangle of ``[..., S, S]`` as ``[..., S (S - 1) / 2]``, row by row."""
  m = np.asarray(m)
  i, j = np.triu_indices(m.shape[-1], k=1)
  return m[..., i, j]


def relation(y, x) -> dict[str, np.ndarray]:
  """Pearson r, slope and intercept of ``y`` on ``x`` over the pairs where both are finite.

  Args:
    y: ``[..., P]`` (e.g. human r per pair, one row per draw).
    x: ``[..., P]`` (e.g. axis cosine per pair).

  Returns:
    ``{"r", "slope", "intercept", "n"}``, each ``[...]`` (NaN where fewer than three pairs or a
    constant side).
  """
  y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
  ok = np.isfinite(y) & np.isfinite(x)
  n = ok.sum(axis=-1)
  safe = np.maximum(n, 1)
  my = np.where(ok, y, 0).sum(axis=-1) / safe
  mx = np.where(ok, x, 0).sum(axis=-1) / safe
  dy = np.where(ok, y - my[..., None], 0.0)
  dx = np.where(ok, x - mx[..., None], 0.0)
  sxx, syy, sxy = (dx * dx).sum(-1), (dy * dy).sum(-1), (dx * dy).sum(-1)
  good = (n >= 3) & (sxx > 1e-24) & (syy > 1e-24)
  with np.errstate(invalid="ignore", divide="ignore"):
    r = np.where(good, sxy / np.sqrt(np.where(good, sxx * syy, 1.0)), np.nan)
    slope = np.where(good, sxy / np.where(good, sxx, 1.0), np.nan)
  return {"r": r, "slope": slope, "intercept": np.where(good, my - slope * mx, np.nan), "n": n}


@jax.jit
def _permuted_r(a_upper: Array, b: Array, perms: Array) -> Array:
  """r of ``a``'s upper triangle with that of ``b`` relabelled by each permutation, NaN-aware."""
  s = b.shape[0]
  i, j = jnp.triu_indices(s, k=1)
  bp = b[perms[:, :, None], perms[:, None, :]][:, i, j]  # [n_perm, P]
  a = jnp.broadcast_to(a_upper, bp.shape)
  ok = jnp.isfinite(a) & jnp.isfinite(bp)
  n = jnp.maximum(ok.sum(-1, keepdims=True), 1)
  am = jnp.where(ok, a, 0).sum(-1, keepdims=True) / n
  bm = jnp.where(ok, bp, 0).sum(-1, keepdims=True) / n
  da, db = jnp.where(ok, a - am, 0), jnp.where(ok, bp - bm, 0)
  den = jnp.sqrt((da * da).sum(-1) * (db * db).sum(-1))
  return jnp.where(den > 0, (da * db).sum(-1) / jnp.where(den > 0, den, 1.0), jnp.nan)


def mantel(a, b, key: Array, n_perm: int, alternative: str = "greater") -> dict[str, object]:
  """Mantel test of two symmetric ``[S, S]`` matrices: r over the upper triangle against relabellings.

  Each permutation relabels the scales of ``b``, rows and columns together, and recomputes r
  with ``a`` over the pairs finite in both. ``p = (1 + #{null as extreme}) / (1 + n_perm)``.

  Args:
    a: ``[S, S]`` symmetric matrix (e.g. human inter-scale r).
    b: ``[S, S]`` symmetric matrix (e.g. axis cosines).
    key: PRNG key of the permutations.
    n_perm: permutations.
    alternative: "greater" (r above the null: the relation the claim predicts) or "two-sided" (|r|).

  Returns:
    ``{"r", "p_value", "n_perm", "alternative", "null"}`` (``null``: ``[n_perm]`` r).

  Raises:
    InputError: fewer than 3 scales, non-square or mismatched matrices, bad ``n_perm``/``alternative``.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
    raise InputError(f"Mantel needs two [S, S] matrices of one shape, got {a.shape} and {b.shape}.")
  if a.shape[0] < 3:
    raise InputError(f"Mantel needs at least 3 scales (3 pairs), got {a.shape[0]}.")
  if n_perm < 1:
    raise InputError(f"n_perm={n_perm} is below 1; give at least 1 permutation.")
  if alternative not in ALTERNATIVES:
    raise InputError(f"alternative={alternative!r} is not known; use one of {', '.join(ALTERNATIVES)}.")
  s = a.shape[0]
  observed = float(relation(upper(a), upper(b))["r"])
  perms = jax.vmap(lambda k: jax.random.permutation(k, s))(jax.random.split(key, n_perm))
  null = np.asarray(_permuted_r(jnp.asarray(upper(a), jnp.float32), jnp.asarray(b, jnp.float32), perms),
                    np.float64)
  if not np.isfinite(observed):
    p = float("nan")
  else:
    tol = 1e-6  # float32 rounding of the identity permutation must count as "as extreme"
    stat, obs = (null, observed) if alternative == "greater" else (np.abs(null), abs(observed))
    p = float((1 + np.sum(stat[np.isfinite(stat)] >= obs - tol)) / (1 + n_perm))
  return {"r": observed, "p_value": p, "n_perm": int(n_perm), "alternative": alternative, "null": null}
