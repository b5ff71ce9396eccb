"""Semantic directions from the embeddings of antonym poles.

A direction points from the negative pole to the positive one: for the scale
cruel–kind, ``direction = f(kind vectors) - f(cruel vectors)``, so words that lie
towards *kind* project positively. Every function here keeps that sign convention
(positive minus negative).

All functions are pure ``jnp`` and traceable. When their inputs are concrete arrays
they also check for errors a user can cause (non-finite vectors, empty poles, a zero
direction) and raise ``InputError``; under ``jit`` those checks are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.errors import InputError

Array = jax.Array


def is_concrete(*arrays) -> bool:
  """True when none of ``arrays`` is a tracer, i.e. their values can be checked."""
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


@jax.jit
def _all_finite(x: Array) -> Array:
  return jnp.all(jnp.isfinite(x))


def check_finite(x, what: str) -> None:
  """Raises ``InputError`` naming the first row of ``x`` with a NaN or inf.

  Args:
    x: Concrete array, ``[rows, ...]`` or a vector.
    what: Name of the array for the message, e.g. ``"positive pole vectors"``.
  """
  if isinstance(x, jax.Array) and bool(_all_finite(x)):
    return  # checked on the device(s), without gathering a sharded array
  finite = np.isfinite(np.asarray(x))
  if finite.all():
    return
  if finite.ndim < 2:
    raise InputError(f"The {what} contain NaN or inf; check the embeddings they came from.")
  bad = np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(axis=1))
  raise InputError(f"The {what} contain NaN or inf in row {bad[0]} ({bad.size} bad rows in all);"
                   " check the embeddings they came from.")


@jax.jit
def _rows_nonzero(x: Array) -> Array:
  """Whether every row of ``x [..., D]`` is finite and has an element other than zero."""
  return jnp.all(jnp.any(x != 0, axis=-1) & jnp.all(jnp.isfinite(x), axis=-1))


def check_nonzero_rows(x, what: str) -> None:
  """Raises ``InputError`` naming the first row of concrete ``x [rows, D]`` with zero norm.

  A device array is checked where it lives (no copy to the host, no gathering of a
  sharded array); only when that check fails are the norms taken on the host, in float64,
  to name the row. A finite row has a float64 norm above zero exactly when one of its
  elements is not zero, so the two checks agree.
  """
  if isinstance(x, jax.Array) and np.size(x) and bool(_rows_nonzero(x)):
    return
  norms = np.linalg.norm(np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1]), axis=-1)
  bad = np.flatnonzero(~(norms > 0))
  if bad.size:
    raise InputError(f"Row {bad[0]} of the {what} has zero norm, so it defines no direction;"
                     " check that its two poles differ.")


def _pole(x, what: str) -> Array:
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2:
    raise InputError(f"The {what} must be a [words, d_model] matrix, got shape {tuple(x.shape)}.")
  if x.shape[0] == 0:
    raise InputError(f"The {what} are empty; each pole needs at least one word.")
  if is_concrete(x):
    check_finite(x, what)
  return x


def safe_unit(x: Array, axis: int = -1) -> Array:
  """``x / ||x||`` along ``axis``, mapping zero vectors to zero (no NaN); traceable."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def normalise(x, axis: int = -1) -> Array:
  """Unit-norm vectors along ``axis``.

  Args:
    x: ``[..., D]`` vectors (float32).
    axis: The axis holding the vector components.

  Returns:
    ``x / ||x||``, same shape, float32.

  Raises:
    InputError: For concrete input with NaN/inf or a zero-norm vector.
  """
  x = jnp.asarray(x, jnp.float32)
  if is_concrete(x):
    check_finite(x, "vectors to normalise")
    check_nonzero_rows(jnp.moveaxis(x, axis, -1), "vectors to normalise")
  return safe_unit(x, axis)


def pole_mean_difference(pos, neg, normalize_words: bool = False) -> Array:
  """The default direction: ``mean(pos) - mean(neg)``.

  Args:
    pos: ``[P, D]`` vectors of the positive pole's words.
    neg: ``[N, D]`` vectors of the negative pole's words (``N`` may differ from ``P``).
    normalize_words: Scale every word vector to unit norm before averaging, so that
      words with large embedding norms do not dominate their pole.

  Returns:
    ``[D]`` float32 direction, not normalised (projection normalises it).

  Raises:
    InputError: For an empty pole, NaN/inf, or identical pole means.
  """
  pos, neg = _pole(pos, "positive pole vectors"), _pole(neg, "negative pole vectors")
  if normalize_words:
    pos, neg = safe_unit(pos), safe_unit(neg)
  direction = jnp.mean(pos, axis=0) - jnp.mean(neg, axis=0)
  if is_concrete(direction):
    check_nonzero_rows(direction[None], "pole-mean directions")
  return direction


def mean_pair_difference(pos, neg, normalize_pairs: bool = False) -> Array:
  """Mean of row-aligned pair differences ``mean_i(pos[i] - neg[i])``.

  Without ``normalize_pairs`` this equals ``pole_mean_difference``; with it every
  pair difference is scaled to unit norm first, so each antonym pair counts equally.

  Args:
    pos: ``[K, D]`` positive words; row ``i`` is the antonym of ``neg[i]``.
    neg: ``[K, D]`` negative words.
    normalize_pairs: Unit-normalise each pair difference before averaging.

  Returns:
    ``[D]`` float32 direction, not normalised.

  Raises:
    InputError: If the pole sizes differ, for NaN/inf, or a zero pair difference
      (the two words of a pair have the same vector) when ``normalize_pairs``.
  """
  pos, neg = _pole(pos, "positive pole vectors"), _pole(neg, "negative pole vectors")
  if pos.shape != neg.shape:
    raise InputError(f"Pair differences need as many positive as negative words, got {pos.shape[0]}"
                     f" and {neg.shape[0]}; list the antonyms as aligned pairs.")
  diffs = pos - neg
  if normalize_pairs:
    if is_concrete(diffs):
      check_nonzero_rows(diffs, "pair differences")
    diffs = safe_unit(diffs)
  direction = jnp.mean(diffs, axis=0)
  if is_concrete(direction):
    check_nonzero_rows(direction[None], "pair-mean directions")
  return direction


class PoleExpansion(NamedTuple):
  """A pole grown by its nearest vocabulary neighbours.

  Attributes:
    vectors: ``[P + k, D]`` the pole's own vectors followed by the neighbours'.
    indices: ``[k]`` int32 vocabulary rows of the neighbours, nearest first.
    cosines: ``[k]`` their cosine similarity to the pole centroid.
  """

  vectors: Array
  indices: Array
  cosines: Array


def semaxis_expand(pole, vocab, k: int, exclude: Sequence[int] | Array | None = None) -> PoleExpansion:
  """SemAxis-style pole expansion (An et al., 2018).

  The pole centroid is the mean of its raw vectors; the ``k`` vocabulary rows with
  the highest cosine to it are appended to the pole. Rows in ``exclude`` and
  zero rows (e.g. vocabulary padding) are never chosen.

  Args:
    pole: ``[P, D]`` vectors of the pole's seed words.
    vocab: ``[V, D]`` candidate vectors (typically the whole embedding table; may be
      sharded over its rows).
    k: Number of neighbours to add.
    exclude: Vocabulary rows never to add: pass the seed words of *both* poles, so
      the pole neither repeats its own words nor absorbs the opposite pole's.

  Returns:
    ``PoleExpansion`` with the expanded vectors and the neighbours' rows/cosines.

  Raises:
    InputError: For NaN/inf, ``k < 0``, or ``k`` larger than the eligible vocabulary.
  """
  pole = _pole(pole, "pole vectors")
  vocab = jnp.asarray(vocab, jnp.float32)
  if vocab.ndim != 2 or vocab.shape[1] != pole.shape[1]:
    raise InputError(f"The vocabulary must be [V, {pole.shape[1]}] to match the pole,"
                     f" got {tuple(vocab.shape)}.")
  excluded = np.unique(np.asarray([] if exclude is None else exclude, np.int64))
  if excluded.size and (excluded.min() < 0 or excluded.max() >= vocab.shape[0]):
    raise InputError(f"Excluded rows must lie in [0, {vocab.shape[0]}),"
                     f" got {excluded.min()}..{excluded.max()}.")
  if not 0 <= k <= vocab.shape[0] - excluded.size:
    raise InputError(f"Cannot add k={k} neighbours from {vocab.shape[0] - excluded.size}"
                     " eligible vocabulary rows.")
  if is_concrete(vocab):
    check_finite(vocab, "vocabulary vectors")
  return _expand(pole, vocab, jnp.asarray(excluded, jnp.int32), k)


@jax.jit(static_argnames=("k",))
def _expand(pole: Array, vocab: Array, excluded: Array, k: int) -> PoleExpansion:
  centroid = safe_unit(jnp.mean(pole, axis=0))
  sq = jnp.sum(jnp.square(vocab), axis=-1)
  cos = (vocab @ centroid) * jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  cos = jnp.where(sq > 0, cos, -jnp.inf).at[excluded].set(-jnp.inf)
  cosines, indices = jax.lax.top_k(cos, k)
  return PoleExpansion(jnp.concatenate([pole, vocab[indices]], axis=0), indices.astype(jnp.int32), cosines)


def random_directions(key: Array, n: int, d: int) -> Array:
  """``[n, d]`` unit directions drawn uniformly on the sphere (isotropic null baseline)."""
  return safe_unit(jax.random.normal(key, (n, d), jnp.float32))


def direction_cosines(dirs) -> Array:
  """Cosine between every pair of directions.

  Args:
    dirs: ``[S, D]`` directions (any norm).

  Returns:
    ``[S, S]`` float32 cosines, ones on the diagonal.

  Raises:
    InputError: For concrete input with NaN/inf or a zero direction.
  """
  unit = normalise(dirs)
  return jnp.clip(jnp.matmul(unit, unit.T, precision=jax.lax.Precision.HIGHEST), -1.0, 1.0)
