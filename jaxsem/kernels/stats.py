"""Correlations with human ratings, their bootstrap CIs and null distributions.

A semantic direction's scores ``x [N]`` (one per word) are compared with a human norm
``y [N]`` (e.g. Warriner et al. 2013 valence) by Pearson or Spearman correlation:

* ``pearson`` / ``spearman`` for one score vector, ``pearson_columns`` /
  ``spearman_columns`` for many (``X [N, S]``, one column per direction). Spearman
  uses average ranks for ties, like ``scipy.stats.spearmanr``.
* ``bootstrap_ci``: percentile CI from resampling *words* with replacement.
  ``bootstrap_indices`` draws the resamples and ``bootstrap_distribution`` evaluates
  a statistic on given resamples, so a CI can be recomputed elsewhere from the same
  indices. Resamples in which ``x`` or ``y`` is constant have no correlation (NaN) and
  are left out of the percentiles.
* ``null_distribution`` / ``null_summary``: the same correlation for ``M`` null
  directions (random directions or random word pairs, projected by the caller) and
  the observed value's place in that distribution.
* ``empirical_p``: the same permutation-style p from a count of extreme null draws.
* ``holm``: Holm step-down adjusted p-values across one family of tests.
* ``fisher_z_ci``: the analytic CI, a quick cross-check of the bootstrap.

Every function except ``empirical_p`` and ``holm`` (host-side numpy) is jit-able.
Called with concrete arrays, the public functions first check their input and raise
``InputError`` for NaN/inf, fewer than 3 words, mismatched lengths or a constant vector;
under ``jit`` the checks are skipped and a constant vector gives NaN. Words without a
rating must be dropped by the caller.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.errors import InputError

Array = jax.Array
STATS = ("pearson", "spearman")
ALTERNATIVES = ("two-sided", "greater", "less")
# Elements of one gathered [chunk, n_boot, N] block in the bootstrap (64 MiB of float32).
_BOOT_BLOCK = 1 << 24


def _is_concrete(*arrays) -> bool:
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _check_stat(stat: str) -> None:
  if stat not in STATS:
    raise InputError(f"Unknown correlation statistic {stat!r}; use one of {STATS}.")


def check_pair(x, y, columns: bool = False) -> None:
  """Raises ``InputError`` unless ``x`` and ``y`` can be correlated.

  Args:
    x: ``[N]`` scores, or ``[N, S]`` when ``columns``.
    y: ``[N]`` ratings.
    columns: whether ``x`` holds one score vector per column.
  """
  want = 2 if columns else 1
  if np.ndim(x) != want or np.ndim(y) != 1:
    raise InputError(f"Correlation needs scores of shape {'[N, S]' if columns else '[N]'} and ratings of"
                     f" shape [N], got {np.shape(x)} and {np.shape(y)}.")
  n = np.shape(y)[0]
  if np.shape(x)[0] != n:
    raise InputError(f"Scores have {np.shape(x)[0]} words but ratings have {n}; pass the same words"
                     " in the same order.")
  if n < 3:
    raise InputError(f"A correlation needs at least 3 words with both a score and a rating, got {n}.")
  for name, a in (("scores", np.asarray(x)), ("ratings", np.asarray(y))):
    finite = np.isfinite(a)
    if not finite.all():
      row = int(np.flatnonzero(~finite.reshape(n, -1).all(axis=1))[0])
      raise InputError(f"The {name} contain NaN or inf at word {row}; drop words without a value first.")
    const = (a.max(axis=0) == a.min(axis=0)).reshape(-1)
    if const.any():
      where = f" (column {int(np.flatnonzero(const)[0])})" if a.ndim == 2 else ""
      raise InputError(f"The {name}{where} are constant over all {n} words, so the correlation is undefined.")


def rank(x: Array) -> Array:
  """Average ranks along axis 0 (1 = smallest), ties sharing their mean rank.

  Args:
    x: ``[N, ...]`` values.

  Returns:
    ``[N, ...]`` float32 ranks, as ``scipy.stats.rankdata(x, axis=0)``.
  """
  return _rank(jnp.asarray(x, jnp.float32))


@jax.jit
def _rank(x: Array) -> Array:
  flat = x.reshape(x.shape[0], -1)

  def one(col):
    s = jnp.sort(col)
    left = jnp.searchsorted(s, col, side="left")
    right = jnp.searchsorted(s, col, side="right")
    return (left + right + 1).astype(jnp.float32) / 2

  return jax.vmap(one, in_axes=1, out_axes=1)(flat).reshape(x.shape)


def _unit_centred(a: Array) -> Array:
  """Centres ``[N, ...]`` along axis 0 and scales each vector to unit norm (0 if constant)."""
  c = a - jnp.mean(a, axis=0)
  c = c - jnp.mean(c, axis=0)  # second pass: removes the rounding error of the first mean
  norm = jnp.sqrt(jnp.sum(jnp.square(c), axis=0))
  return c / jnp.where(norm > 0, norm, 1.0)


def _constant(a: Array) -> Array:
  return jnp.max(a, axis=0) == jnp.min(a, axis=0)


@jax.jit
def _pearson_columns(x: Array, y: Array) -> Array:
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  r = jnp.matmul(_unit_centred(y), _unit_centred(x), precision=jax.lax.Precision.HIGHEST)
  r = jnp.clip(r, -1.0, 1.0)
  return jnp.where(_constant(x) | _constant(y), jnp.nan, r)


def _corr(x: Array, y: Array, stat: str) -> Array:
  """``stat`` of ``y [N]`` with ``x [N]`` or each column of ``x [N, S]``; no checks."""
  if stat == "spearman":
    x, y = rank(x), rank(y)
  if x.ndim == 1:
    return _pearson_columns(x[:, None], y)[0]
  return _pearson_columns(x, y)


def pearson(x: Array, y: Array) -> Array:
  """Pearson correlation of two vectors.

  Args:
    x: ``[N]`` scores.
    y: ``[N]`` ratings.

  Returns:
    Scalar r in ``[-1, 1]`` (NaN under ``jit`` if either vector is constant).

  Raises:
    InputError: for NaN/inf, fewer than 3 words, mismatched lengths or constant input.
  """
  if _is_concrete(x, y):
    check_pair(x, y)
  return _corr(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), "pearson")


def spearman(x: Array, y: Array) -> Array:
  """Spearman rank correlation (average ranks for ties) of two vectors.

  Args:
    x: ``[N]`` scores.
    y: ``[N]`` ratings.

  Returns:
    Scalar rho in ``[-1, 1]``, as ``scipy.stats.spearmanr(x, y).statistic``.

  Raises:
    InputError: for NaN/inf, fewer than 3 words, mismatched lengths or constant input.
  """
  if _is_concrete(x, y):
    check_pair(x, y)
  return _corr(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), "spearman")


def pearson_columns(x: Array, y: Array) -> Array:
  """Pearson correlation of ``y`` with every column of ``x``.

  Args:
    x: ``[N, S]`` scores, one column per direction.
    y: ``[N]`` ratings.

  Returns:
    ``[S]`` correlations.

  Raises:
    InputError: for NaN/inf, fewer than 3 words, mismatched lengths or a constant column.
  """
  if _is_concrete(x, y):
    check_pair(x, y, columns=True)
  return _corr(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), "pearson")


def spearman_columns(x: Array, y: Array) -> Array:
  """Spearman correlation of ``y`` with every column of ``x``.

  Args:
    x: ``[N, S]`` scores, one column per direction.
    y: ``[N]`` ratings.

  Returns:
    ``[S]`` correlations.

  Raises:
    InputError: for NaN/inf, fewer than 3 words, mismatched lengths or a constant column.
  """
  if _is_concrete(x, y):
    check_pair(x, y, columns=True)
  return _corr(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), "spearman")


def bootstrap_indices(key: Array, n: int, n_boot: int) -> Array:
  """Word indices of ``n_boot`` resamples of ``n`` words, drawn with replacement.

  Args:
    key: ``jax.random`` key.
    n: number of words.
    n_boot: number of resamples.

  Returns:
    ``[n_boot, n]`` int32 indices; row ``b`` is resample ``b``.
  """
  return jax.random.randint(key, (n_boot, n), 0, n, dtype=jnp.int32)


@jax.jit(static_argnames=("stat",))
def _bootstrap_distribution(x: Array, y: Array, indices: Array, stat: str) -> Array:
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  vector = x.ndim == 1
  x = x[:, None] if vector else x
  yb = y[indices]  # [B, N]
  if stat == "spearman":
    yb = jax.vmap(rank)(yb)
  yb_unit = jax.vmap(_unit_centred)(yb)
  y_const = jax.vmap(_constant)(yb)

  def column(col):  # [N] -> [B]
    xb = col[indices]
    if stat == "spearman":
      xb = jax.vmap(rank)(xb)
    r = jnp.clip(jnp.sum(jax.vmap(_unit_centred)(xb) * yb_unit, axis=1), -1.0, 1.0)
    return jnp.where(jax.vmap(_constant)(xb) | y_const, jnp.nan, r)

  block = max(1, min(x.shape[1], _BOOT_BLOCK // max(1, indices.size)))
  dist = jax.lax.map(column, x.T, batch_size=block).T  # [B, S]
  return dist[:, 0] if vector else dist


def bootstrap_distribution(x: Array, y: Array, indices: Array, stat: str = "pearson") -> Array:
  """The correlation on each given resample of the words.

  Resample ``b`` is ``x[indices[b]]`` against ``y[indices[b]]`` (Spearman re-ranks
  within the resample). A resample where either side is constant gives NaN.

  Args:
    x: ``[N]`` scores or ``[N, S]`` (one column per direction).
    y: ``[N]`` ratings.
    indices: ``[B, N]`` word indices, e.g. from ``bootstrap_indices``.
    stat: ``"pearson"`` or ``"spearman"``.

  Returns:
    ``[B]`` (or ``[B, S]``) bootstrap correlations.

  Raises:
    InputError: for an unknown ``stat`` or bad ``x``/``y`` (see ``pearson``).
  """
  _check_stat(stat)
  if _is_concrete(x, y):
    check_pair(x, y, columns=np.ndim(x) == 2)
  if np.ndim(indices) != 2 or np.shape(indices)[1] != np.shape(y)[0]:
    raise InputError(f"Bootstrap indices must have shape [B, {np.shape(y)[0]}], got {np.shape(indices)}.")
  return _bootstrap_distribution(x, y, jnp.asarray(indices, jnp.int32), stat)


def _check_level(level: float) -> None:
  if not 0.0 < level < 1.0:
    raise InputError(f"Confidence level must lie strictly between 0 and 1, got {level}.")


def percentile_ci(dist: Array, level: float = 0.95) -> Array:
  """Equal-tailed percentile interval of a bootstrap distribution, ignoring NaNs.

  Args:
    dist: ``[B]`` or ``[B, S]`` bootstrap statistics.
    level: coverage, e.g. 0.95 for the 2.5th and 97.5th percentiles (linear
      interpolation, as ``numpy.nanpercentile``).

  Returns:
    ``[2]`` (or ``[S, 2]``) ``(low, high)``.
  """
  _check_level(level)
  return _percentile_ci(jnp.asarray(dist), jnp.float32(50.0 * (1.0 - level)))


@jax.jit
def _percentile_ci(dist: Array, tail: Array) -> Array:
  q = jnp.nanpercentile(dist, jnp.stack([tail, 100.0 - tail]), axis=0)  # [2, ...]
  return jnp.moveaxis(q, 0, -1)


def bootstrap_ci(x: Array, y: Array, key: Array, stat: str = "pearson", n_boot: int = 1000,
                 level: float = 0.95) -> Array:
  """Percentile bootstrap CI of the correlation, resampling words with replacement.

  Equivalent to ``percentile_ci(bootstrap_distribution(x, y,
  bootstrap_indices(key, N, n_boot), stat), level)``; every column of ``x`` uses the
  same resamples.

  Args:
    x: ``[N]`` scores or ``[N, S]`` (one column per direction).
    y: ``[N]`` ratings.
    key: ``jax.random`` key for the resamples.
    stat: ``"pearson"`` or ``"spearman"``.
    n_boot: number of resamples.
    level: coverage of the interval.

  Returns:
    ``[2]`` ``(low, high)`` for ``x [N]``; ``[S, 2]`` for ``x [N, S]``.

  Raises:
    InputError: for bad input (see ``pearson``), ``n_boot < 1`` or a level outside (0, 1).
  """
  _check_level(level)
  if n_boot < 1:
    raise InputError(f"The bootstrap needs at least one resample, got n_boot={n_boot}.")
  indices = bootstrap_indices(key, np.shape(y)[0], n_boot)
  return percentile_ci(bootstrap_distribution(x, y, indices, stat), level)


def null_distribution(scores_null: Array, y: Array, stat: str = "pearson") -> Array:
  """Correlations of the ratings with ``M`` null directions' scores.

  Args:
    scores_null: ``[N, M]`` scores of the words on ``M`` null directions (random
      directions, or directions from random word pairs), projected by the caller the
      same way as the observed direction.
    y: ``[N]`` ratings.
    stat: ``"pearson"`` or ``"spearman"``.

  Returns:
    ``[M]`` null correlations.
  """
  _check_stat(stat)
  if _is_concrete(scores_null, y):
    check_pair(scores_null, y, columns=True)
  return _corr(jnp.asarray(scores_null, jnp.float32), jnp.asarray(y, jnp.float32), stat)


@jax.jit(static_argnames=("alternative",))
def _null_summary(observed: Array, null: Array, alternative: str) -> dict[str, Array]:
  observed = jnp.asarray(observed, jnp.float32)
  null = jnp.asarray(null, jnp.float32)
  obs = observed[..., None]
  if alternative == "two-sided":
    hits = jnp.abs(null) >= jnp.abs(obs)
  elif alternative == "greater":
    hits = null >= obs
  else:
    hits = null <= obs
  m = null.shape[-1]
  n_hits = jnp.sum(hits, axis=-1)
  return {"p95": jnp.percentile(jnp.abs(null), 95.0, axis=-1),
          "p_value": (1.0 + n_hits) / (1.0 + m), "p_at_floor": n_hits == 0}


def null_summary(observed: Array, null: Array, alternative: str = "two-sided") -> dict[str, Array]:
  """Where an observed correlation falls in its null distribution.

  ``p_value`` is the empirical permutation-style p with the observed value counted
  once among the nulls, so it is never 0 and at least ``1 / (M + 1)``:

  * ``"two-sided"`` (default): ``(1 + #{|null| >= |observed|}) / (1 + M)``. Use it when
    the sign of the direction relative to the ratings is not fixed in advance (a null
    direction is as likely to point either way).
  * ``"greater"``: ``(1 + #{null >= observed}) / (1 + M)``, one-sided, for a direction
    oriented beforehand so that a positive correlation is predicted.
  * ``"less"``: ``(1 + #{null <= observed}) / (1 + M)``.

  ``p95`` is the 95th percentile of ``|null|`` (linear interpolation), the magnitude
  a correlation must exceed to beat 95% of null directions regardless of sign, for any
  ``alternative``.

  ``p_at_floor`` is true where no null value was as extreme as the observed one: the
  p-value is then its floor ``1 / (M + 1)`` and only says that the true p is at most
  about that (report it as ``p <= 1 / (M + 1)``, not as an estimate). ``n_null`` is ``M``.

  Args:
    observed: scalar, or ``[...]`` one per direction.
    null: ``[M]`` shared by all observed values, or ``[..., M]`` one row per observed
      value.
    alternative: ``"two-sided"``, ``"greater"`` or ``"less"``.

  Returns:
    ``{"p95": [...], "p_value": [...], "p_at_floor": [...] bool, "n_null": M}``; ``p95``
    has the shape of ``null`` without its last axis, ``n_null`` is a Python int.

  Raises:
    InputError: for an unknown ``alternative``, an empty or non-finite null.
  """
  if alternative not in ALTERNATIVES:
    raise InputError(f"Unknown alternative {alternative!r}; use one of {ALTERNATIVES}.")
  if np.ndim(null) < 1 or np.shape(null)[-1] < 1:
    raise InputError(f"The null distribution must have at least one value on its last axis, got shape"
                     f" {np.shape(null)}.")
  if _is_concrete(observed, null) and not (np.isfinite(np.asarray(null)).all()
                                           and np.isfinite(np.asarray(observed)).all()):
    raise InputError("The observed or null correlations contain NaN or inf; check for constant scores.")
  return {**_null_summary(observed, null, alternative), "n_null": int(np.shape(null)[-1])}


def empirical_p(n_as_extreme, n_null: int) -> dict[str, Any]:
  """Permutation-style p-value from a count, with its floor flagged.

  For nulls counted by the caller (e.g. a shuffled-label or random-set null):
  ``p = (1 + n_as_extreme) / (1 + n_null)``, the observed value counted once among the
  nulls, as in ``null_summary``.

  Args:
    n_as_extreme: scalar or ``[...]`` number of null draws at least as extreme as the
      observed value.
    n_null: number of null draws ``M``.

  Returns:
    ``{"p_value", "p_at_floor", "n_null"}``: Python float/bool for a scalar count,
    float64/bool arrays otherwise; ``p_at_floor`` is true where the count is 0.

  Raises:
    InputError: for ``n_null < 1`` or a count outside ``[0, n_null]``.
  """
  if int(n_null) < 1:
    raise InputError(f"A permutation p-value needs at least one null draw, got n_null={n_null}.")
  k = np.asarray(n_as_extreme)
  if k.size and (np.any(k < 0) or np.any(k > n_null) or np.any(k != np.round(k))):
    raise InputError(f"The count of null draws as extreme as the observed value must be a whole number in"
                     f" [0, {n_null}], got {n_as_extreme}.")
  p = (1.0 + k.astype(np.float64)) / (1.0 + int(n_null))
  floor = k == 0
  if k.ndim == 0:
    return {"p_value": float(p), "p_at_floor": bool(floor), "n_null": int(n_null)}
  return {"p_value": p, "p_at_floor": floor, "n_null": int(n_null)}


def holm(pvalues) -> np.ndarray:
  """Holm (1979) step-down adjusted p-values for one family of tests.

  With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the
  adjusted value of the i-th is ``max_{j <= i} min(1, (m - j + 1) p_(j))``: monotone in
  the raw p-values, never below them, capped at 1. Rejecting where the adjusted value
  is at most ``alpha`` controls the family-wise error rate at ``alpha`` under any
  dependence between the tests. Missing tests (None or NaN) stay NaN and do not count
  towards ``m``. A host-side numpy function (not jit-able).

  Args:
    pvalues: ``[...]`` p-values in ``[0, 1]``; None or NaN for a test not run.

  Returns:
    ``[...]`` float64 adjusted p-values, NaN where the input was missing.

  Raises:
    InputError: for a p-value outside ``[0, 1]`` or infinite.
  """
  raw = np.asarray(pvalues, dtype=object)
  p = np.array([np.nan if v is None else v for v in raw.reshape(-1)], dtype=np.float64).reshape(raw.shape)
  ok = ~np.isnan(p)
  q = p[ok]
  bad = ~((q >= 0) & (q <= 1))
  if bad.any():
    raise InputError(f"Holm's adjustment needs p-values in [0, 1], got {q[bad][0]}.")
  m = q.size
  order = np.argsort(q, kind="stable")
  steps = np.minimum(1.0, (m - np.arange(m)) * q[order])
  adjusted = np.empty(m)
  adjusted[order] = np.maximum.accumulate(steps)
  out = np.full(p.shape, np.nan)
  out[ok] = adjusted
  return out


def fisher_z_ci(r: Array, n: int, level: float = 0.95, stat: str = "pearson") -> Array:
  """Analytic CI of a correlation from the Fisher z-transform.

  ``tanh(atanh(r) -/+ z_crit * se)`` with ``se = 1 / sqrt(n - 3)`` for Pearson and the
  Fieller et al. (1957) ``se = sqrt(1.06 / (n - 3))`` for Spearman. Assumes bivariate
  normality (Pearson); a cross-check for ``bootstrap_ci``, not a replacement.

  Args:
    r: scalar or ``[S]`` correlations.
    n: number of words they were computed from.
    level: coverage of the interval.
    stat: ``"pearson"`` or ``"spearman"``.

  Returns:
    ``[..., 2]`` ``(low, high)``.

  Raises:
    InputError: for ``n < 4``, an unknown ``stat`` or a level outside (0, 1).
  """
  _check_stat(stat)
  _check_level(level)
  if n < 4:
    raise InputError(f"The Fisher z interval needs at least 4 words, got {n}.")
  se = math.sqrt((1.06 if stat == "spearman" else 1.0) / (n - 3))
  crit = float(jax.scipy.special.ndtri(0.5 + level / 2))
  z = jnp.arctanh(jnp.clip(jnp.asarray(r, jnp.float32), -1.0 + 1e-7, 1.0 - 1e-7))
  return jnp.stack([jnp.tanh(z - crit * se), jnp.tanh(z + crit * se)], axis=-1)
