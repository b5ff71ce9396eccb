"""Hierarchical bootstrap of a pole-mean direction's correlation with human ratings.

A scale's direction is ``d = mean(positive pole words) - mean(negative pole words)``;
its correlation with ratings ``y [N]`` depends on the rated words *and* on which pole
words were chosen. Resampling the words alone treats ``d`` as fixed and gives an
interval that is too narrow. Here every draw resamples, jointly:

* the words, with replacement (as ``stats.bootstrap_indices``), and
* each pole's words, with replacement *within the pole* (a positive word can only be
  replaced by a positive word),

and recomputes the correlation of the words' projections on the resampled direction.

The draws are cheap because a resampled direction is a weight vector over the ``K``
pole words: with ``W [K, D]`` the pole words (positive first) and ``c [K]`` the
weights (``count / pole size``, negative for the negative pole), ``d = W^T c``. With
``A = U @ W^T [N, K]`` (``U`` the word vectors, scaled to unit norm for the cosine
metric) computed once, the words' scores on ``d / |d|`` are
``A @ c / sqrt(c^T G c)`` with ``G = W W^T [K, K]``, the exact projection of
``projection.project(vectors, d, metric)`` without touching ``D`` again.

Every draw's Pearson and Spearman r come back (NaN where a resample leaves the scores
or the ratings constant); ``stats.percentile_ci`` turns them into an interval.
``distribution`` takes the ratings side of the draws (``rating_draws``) prepared once,
so every scale of a norm column shares it; the same word draws with the plain
pole-mean weights in every draw give the words-only bootstrap.
``leave_one_pole_word_out`` gives the complementary sensitivity check: r with each
pole word dropped in turn (poles of one word are never emptied).

Several scales run as one program in ``hierarchical_stack``, which zero-pads their pole words
to a common bucket (a padded pole word adds exact zeros, so every score is unchanged).

Caveats. With ``P`` words the bootstrap variance of a pole mean is ``(P - 1) / P`` of
the unbiased one, and a percentile interval does not widen for the few degrees of
freedom of a handful of words, so with ~6 words per pole the interval runs a little
short of its nominal level (about 91% for 95% in the planted coverage test). Pole-word
scatter in directions the ratings ignore only ever lowers r, a bias no interval
centred on the estimate covers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.errors import InputError
from jaxsem.kernels import stats
from jaxsem.kernels.directions import check_finite, safe_unit
from jaxsem.kernels.projection import METRICS

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST
# Elements of the per-draw [N] temporaries (about four per draw) evaluated at once (64 MiB of float32).
_DRAW_BLOCK = 1 << 24


class PoleProjections(NamedTuple):
  """The words projected on every pole word, and the pole words' Gram matrix.

  Attributes:
    scores: ``[N, K]`` word scores on each pole word (unit word vectors for "cosine").
    gram: ``[K, K]`` inner products of the pole words.
    n_positive: number of positive pole words (the first ``n_positive`` of ``K``).
  """

  scores: Array
  gram: Array
  n_positive: int


class HierarchicalBootstrap(NamedTuple):
  """Draws of a hierarchical bootstrap.

  Attributes:
    pearson: ``[B]`` Pearson r per draw (NaN where undefined).
    spearman: ``[B]`` Spearman r per draw (NaN where undefined).
    word_indices: ``[B, N]`` the words of each draw.
    weights: ``[B, K]`` the pole-word weights of each draw's direction.
  """

  pearson: Array
  spearman: Array
  word_indices: Array
  weights: Array


def _check_poles(positive, negative) -> None:
  for name, pole in (("positive", positive), ("negative", negative)):
    if np.ndim(pole) != 2 or np.shape(pole)[0] < 1:
      raise InputError(f"The {name} pole must be a [P, D] array with at least one word, got shape"
                       f" {np.shape(pole)}.")
  if np.shape(positive)[1] != np.shape(negative)[1]:
    raise InputError(f"The positive pole has {np.shape(positive)[1]} dimensions but the negative has"
                     f" {np.shape(negative)[1]}; both must come from the same space.")


@jax.jit(static_argnames=("metric",))
def _pole_projections(vectors: Array, poles: Array, metric: str) -> tuple[Array, Array]:
  words = vectors.astype(jnp.float32)
  poles = poles.astype(jnp.float32)
  if metric == "cosine":
    words = safe_unit(words)
  return (jnp.matmul(words, poles.T, precision=_HI), jnp.matmul(poles, poles.T, precision=_HI))


def pole_projections(vectors, positive, negative, metric: str = "cosine") -> PoleProjections:
  """Projects the words on every pole word once.

  Args:
    vectors: ``[N, D]`` word vectors.
    positive: ``[P, D]`` positive pole words' vectors.
    negative: ``[M, D]`` negative pole words' vectors.
    metric: "cosine" (word vectors scaled to unit norm, a zero vector scores 0) or "dot".

  Returns:
    ``PoleProjections`` with ``K = P + M`` pole words, positive first.

  Raises:
    InputError: unknown metric, bad shapes, NaN/inf.
  """
  if metric not in METRICS:
    raise InputError(f"Unknown projection metric {metric!r}; use one of {METRICS}.")
  _check_poles(positive, negative)
  if np.ndim(vectors) != 2 or np.shape(vectors)[1] != np.shape(positive)[1]:
    raise InputError(f"Word vectors must be [N, {np.shape(positive)[1]}] to match the poles, got shape"
                     f" {np.shape(vectors)}.")
  poles = jnp.asarray(np.concatenate([np.asarray(positive, np.float32), np.asarray(negative, np.float32)]))
  for what, a in (("word vectors", vectors), ("pole vectors", poles)):
    check_finite(a, what)
  scores, gram = _pole_projections(jnp.asarray(vectors), poles, metric)
  return PoleProjections(scores=scores, gram=gram, n_positive=int(np.shape(positive)[0]))


def pole_mean_weights(n_positive: int, n_negative: int) -> Array:
  """Weights of the plain pole-mean direction: ``1/P`` per positive word, ``-1/M`` per negative.

  Returns:
    ``[P + M]`` float32 weights.
  """
  # Built on the host: a constant this small is not worth a compiled program per pole size.
  return jnp.asarray(np.concatenate([np.full((n_positive,), 1.0 / n_positive, np.float32),
                                     np.full((n_negative,), -1.0 / n_negative, np.float32)]))


_POLE_WIDTH = 8  # pole sizes are drawn in programs of this many columns (a multiple), one per width


@functools.partial(jax.jit, static_argnames=("n_boot", "width"))
def _weights(key: Array, n_positive: Array, n_negative: Array, n_boot: int, width: int) -> Array:
  """``[B, 2 * width]`` resampled weights of poles padded to ``width`` words (zeros beyond each pole)."""
  def counts(k, size):  # size words drawn with replacement from the first ``size`` of ``width``
    draws = jax.random.randint(k, (n_boot, width), 0, size)
    drawn = jnp.arange(width) < size  # only the first ``size`` draws of a row count
    hits = jax.nn.one_hot(draws, width, dtype=jnp.float32) * drawn[None, :, None]
    return jnp.sum(hits, axis=1) / size.astype(jnp.float32)

  k_pos, k_neg = jax.random.split(key)
  return jnp.concatenate([counts(k_pos, n_positive), -counts(k_neg, n_negative)], axis=1)


def resample_pole_weights(key: Array, n_positive: int, n_negative: int, n_boot: int) -> Array:
  """Weights of ``n_boot`` directions whose poles are resampled with replacement within each pole.

  Draw ``b`` picks ``P`` positive words from the ``P`` and ``M`` negative words from the
  ``M``; a word picked twice counts twice in its pole's mean.

  Args:
    key: ``jax.random`` key.
    n_positive: ``P``.
    n_negative: ``M``.
    n_boot: number of draws ``B``.

  Returns:
    ``[B, P + M]`` float32 weights (positive pole's sum to 1, negative pole's to -1).
  """
  # One compiled program per (pole width bucket, n_boot), not per pole size: a scale set with many
  # pole sizes compiled one small program per size, which took seconds before the first draw.
  width = _POLE_WIDTH * -(-max(n_positive, n_negative) // _POLE_WIDTH)
  w = np.asarray(_weights(key, jnp.int32(n_positive), jnp.int32(n_negative), n_boot, width))
  return jnp.asarray(np.concatenate([w[:, :n_positive], w[:, width:width + n_negative]], axis=1))


def leave_one_out_weights(n_positive: int, n_negative: int) -> tuple[Array, list[int]]:
  """Weights of the pole-mean direction with each pole word dropped in turn.

  A pole of one word is never emptied: its word is not dropped.

  Returns:
    ``([L, P + M] weights, the L dropped pole-word positions)``; ``L`` may be 0.
  """
  base = np.asarray(pole_mean_weights(n_positive, n_negative))
  rows, dropped = [], []
  for start, size, sign in ((0, n_positive, 1.0), (n_positive, n_negative, -1.0)):
    if size < 2:
      continue
    for i in range(size):
      w = base.copy()
      w[start:start + size] = sign / (size - 1)
      w[start + i] = 0.0
      rows.append(w)
      dropped.append(start + i)
  weights = np.stack(rows) if rows else np.zeros((0, n_positive + n_negative), np.float32)
  return jnp.asarray(weights, jnp.float32), dropped


def _ordered_sum(terms: list[Array]) -> Array:
  total = terms[0]
  for t in terms[1:]:
    total = total + t
  return total


def _scores(proj: Array, gram: Array, w: Array) -> Array:
  """``[N]`` scores of the words on the unit direction with pole weights ``w [K]`` (NaN if zero).

  The sums over pole words run in order, one pole word at a time (``K`` is a handful): a padded
  pole word (zero score, Gram row and weight) then adds exact zeros at the end, so padded and
  unpadded projections give bit-identical scores, which a library matmul's blocking would not.
  """
  k = w.shape[0]
  raw = _ordered_sum([proj[..., j] * w[j] for j in range(k)])
  gw = _ordered_sum([gram[:, j] * w[j] for j in range(k)])
  sq = _ordered_sum([w[j] * gw[j] for j in range(k)])
  return jnp.where(sq > 0, raw * jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), jnp.nan)


def weighted_scores(proj: PoleProjections, weights: Array) -> Array:
  """Scores of every word on every weighted direction: ``[N, B]`` for weights ``[B, K]``.

  Equal to ``projection.project(vectors, weights @ W, metric)`` (NaN for a zero direction).
  """
  return jax.vmap(lambda w: _scores(proj.scores, proj.gram, w), out_axes=1)(jnp.asarray(weights, jnp.float32))


def _unit_centred(a: Array) -> Array:
  c = a - jnp.mean(a)
  c = c - jnp.mean(c)  # second pass: removes the rounding error of the first mean
  norm = jnp.sqrt(jnp.sum(jnp.square(c)))
  return c / jnp.where(norm > 0, norm, 1.0)


def _rank(x: Array) -> Array:
  """Average ranks of ``[N]`` values (1 = smallest, ties share their mean rank), as ``stats.rank``.

  The floats are mapped to int32 keys in the same order (-0.0 counted as 0.0) and sorted alone:
  on a CPU a one-operand integer sort is several times faster than a float or key-index sort.
  A value's rank is then ``(first + last) / 2 + 1`` over the positions of its run of equal
  keys, ``first`` found by binary search and ``last`` by a scan over the sorted keys.
  """
  key = _order_key(x)
  s = jnp.sort(key)
  _, last = _runs(s)
  first = jnp.searchsorted(s, key, side="left")
  return (first + last[first]).astype(jnp.float32) / 2 + 1


def _order_key(x: Array) -> Array:
  """int32 keys in the order of the float32 values ``x`` (-0.0 and 0.0 share a key)."""
  bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.zeros_like(x), x), jnp.int32)
  return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _runs(s: Array) -> tuple[Array, Array]:
  """First and last position of the run of equal values that each position of sorted ``s [N]`` is in."""
  n = s.shape[0]
  i = jnp.arange(n)
  differs = s[1:] != s[:-1]
  first = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.array([True]), differs]), i, 0))
  last = jax.lax.cummin(jnp.where(jnp.concatenate([differs, jnp.array([True])]), i, n), reverse=True)
  return first, last


class RatingDraws(NamedTuple):
  """The ratings side of every draw, computed once and shared by every direction.

  Attributes:
    word_indices: ``[B, N]`` the words of each draw.
    pearson: ``[B, N]`` each draw's ratings, centred and scaled to unit norm.
    spearman: ``[B, N]`` the same for their ranks within the draw.
    constant: ``[B]`` whether a draw's ratings are constant (no correlation).
  """

  word_indices: Array
  pearson: Array
  spearman: Array
  constant: Array


@jax.jit
def _rating_draws(y: Array, word_indices: Array) -> RatingDraws:
  yb = y.astype(jnp.float32)[word_indices]  # [B, N]
  return RatingDraws(word_indices=word_indices, pearson=jax.vmap(_unit_centred)(yb),
                     spearman=jax.vmap(lambda r: _unit_centred(_rank(r)))(yb),
                     constant=jnp.max(yb, axis=1) == jnp.min(yb, axis=1))


def rating_draws(y, word_indices) -> RatingDraws:
  """Prepares the ratings of every draw (``y[word_indices[b]]``) for ``distribution``.

  Args:
    y: ``[N]`` ratings (finite).
    word_indices: ``[B, N]`` word indices, e.g. ``stats.bootstrap_indices``.

  Returns:
    ``RatingDraws``.

  Raises:
    InputError: non-finite ratings or indices of the wrong shape.
  """
  n = np.shape(y)[0] if np.ndim(y) == 1 else -1
  if n < 3:
    raise InputError(f"Ratings must be a vector of at least 3 words, got shape {np.shape(y)}.")
  if np.ndim(word_indices) != 2 or np.shape(word_indices)[1] != n:
    raise InputError(f"Word indices must have shape [B, {n}], got {np.shape(word_indices)}.")
  if not np.isfinite(np.asarray(y)).all():
    raise InputError("The ratings contain NaN or inf; drop words without a rating first.")
  return _rating_draws(jnp.asarray(y), jnp.asarray(word_indices, jnp.int32))


def _r(x_unit: Array, y_unit: Array, bad: Array) -> Array:
  return jnp.where(bad, jnp.nan, jnp.clip(jnp.dot(x_unit, y_unit, precision=_HI), -1.0, 1.0))


def _draw_r(scores: Array, gram: Array, idx: Array, w: Array, y_p: Array, y_s: Array,
            y_const: Array) -> tuple[Array, Array]:
  """Pearson and Spearman r of one draw: words ``idx [N]`` scored on the direction with weights ``w``."""
  x = _scores(scores, gram, w)[idx]
  finite = jnp.all(jnp.isfinite(x))
  x = jnp.where(finite, x, 0.0)  # keeps the ranking free of NaN; the draw is NaN anyway
  bad = y_const | ~finite | (jnp.max(x) == jnp.min(x))
  return _r(_unit_centred(x), y_p, bad), _r(_unit_centred(_rank(x)), y_s, bad)


def _block(n_draws: int, per_draw: int) -> int:
  """Draws evaluated at once so that about ``_DRAW_BLOCK`` temporary elements are live.

  A divisor of ``n_draws`` when one is at least half the limit: ``lax.map`` then compiles no
  second program for a remainder.
  """
  cap = max(1, min(n_draws, _DRAW_BLOCK // max(1, per_draw)))
  divisor = next(b for b in range(cap, 0, -1) if n_draws % b == 0)
  return divisor if 2 * divisor >= cap else cap


@jax.jit
def _distribution(scores: Array, gram: Array, draws: RatingDraws, weights: Array) -> tuple[Array, Array]:
  def one(args):
    idx, w, y_p, y_s, y_const = args
    return _draw_r(scores, gram, idx, w, y_p, y_s, y_const)

  block = _block(weights.shape[0], 4 * draws.word_indices.shape[1])
  return jax.lax.map(one, (draws.word_indices, weights, draws.pearson, draws.spearman, draws.constant),
                     batch_size=block)


def distribution(proj: PoleProjections, draws: RatingDraws, weights) -> tuple[Array, Array]:
  """Pearson and Spearman r of each draw, given its words and pole weights.

  Draw ``b`` scores every word on the direction with weights ``weights[b]``, then
  correlates ``scores[word_indices[b]]`` with ``y[word_indices[b]]`` (Spearman re-ranks
  within the draw, ties sharing their mean rank).

  Args:
    proj: ``pole_projections`` of the ``N`` rated words.
    draws: ``rating_draws(y, word_indices)`` of the same words (shareable between scales).
    weights: ``[B, K]`` pole weights, e.g. ``resample_pole_weights``; a row of
      ``pole_mean_weights`` in every draw gives the words-only bootstrap.

  Returns:
    ``([B] pearson, [B] spearman)``, NaN where a draw's scores or ratings are constant
    or its direction is zero.

  Raises:
    InputError: mismatched shapes.
  """
  n, k = proj.scores.shape
  b = draws.word_indices.shape[0]
  if draws.word_indices.shape[1] != n:
    raise InputError(f"The rating draws cover {draws.word_indices.shape[1]} words but the projections"
                     f" {n}; pass the same words.")
  if np.shape(weights) != (b, k):
    raise InputError(f"Pole weights must have shape [{b}, {k}], got {np.shape(weights)}.")
  return _distribution(proj.scores, proj.gram, draws, jnp.asarray(weights, jnp.float32))


def hierarchical_bootstrap(vectors, y, positive, negative, key: Array, n_boot: int = 1000,
                           metric: str = "cosine") -> HierarchicalBootstrap:
  """Bootstrap over words and pole words (within each pole), jointly in each draw.

  Args:
    vectors: ``[N, D]`` vectors of the rated words.
    y: ``[N]`` their ratings.
    positive: ``[P, D]`` positive pole words' vectors (in the same space).
    negative: ``[M, D]`` negative pole words' vectors.
    key: ``jax.random`` key; the words use ``split(key)[0]`` and the poles ``split(key)[1]``.
    n_boot: number of draws ``B``.
    metric: "cosine" or "dot" (as ``projection.project``).

  Returns:
    ``HierarchicalBootstrap``; ``stats.percentile_ci(result.pearson)`` is the interval.

  Raises:
    InputError: bad shapes, NaN/inf, an unknown metric or ``n_boot < 1``.
  """
  if n_boot < 1:
    raise InputError(f"The bootstrap needs at least one resample, got n_boot={n_boot}.")
  proj = pole_projections(vectors, positive, negative, metric)
  k_words, k_poles = jax.random.split(key)
  idx = stats.bootstrap_indices(k_words, proj.scores.shape[0], n_boot)
  weights = resample_pole_weights(k_poles, proj.n_positive, proj.scores.shape[1] - proj.n_positive, n_boot)
  pearson, spearman = distribution(proj, rating_draws(y, idx), weights)
  return HierarchicalBootstrap(pearson=pearson, spearman=spearman, word_indices=idx, weights=weights)


def leave_one_pole_word_out(proj: PoleProjections, y, stat: str = "pearson") -> tuple[Array, list[int]]:
  """The correlation with each pole word dropped in turn (poles of one word keep it).

  Args:
    proj: ``pole_projections`` of the ``N`` rated words.
    y: ``[N]`` ratings.
    stat: "pearson" or "spearman".

  Returns:
    ``([L] r, the L dropped pole-word positions)``; ``L`` is 0 when no pole has 2+ words.
  """
  if stat not in stats.STATS:
    raise InputError(f"Unknown correlation statistic {stat!r}; use one of {stats.STATS}.")
  n, k = proj.scores.shape
  weights, dropped = leave_one_out_weights(proj.n_positive, k - proj.n_positive)
  if not dropped:
    return jnp.zeros((0,), jnp.float32), dropped
  idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (len(dropped), n))
  pearson, spearman = distribution(proj, rating_draws(y, idx), weights)
  return (pearson if stat == "pearson" else spearman), dropped


def leave_one_out_range(proj: PoleProjections, y, stat: str = "pearson") -> list[float] | None:
  """``[min, max]`` of ``leave_one_pole_word_out`` (NaNs ignored), or None when nothing can be dropped."""
  r, dropped = leave_one_pole_word_out(proj, y, stat)
  r = np.asarray(r, np.float64)
  if not dropped or not np.isfinite(r).any():
    return None
  return [float(np.nanmin(r)), float(np.nanmax(r))]
