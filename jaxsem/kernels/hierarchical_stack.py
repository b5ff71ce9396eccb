"""The hierarchical bootstrap of many scales of one norm column at once (``align``'s path).

``hierarchical.distribution`` draws one scale; here the pole projections of ``S`` scales are
zero-padded to a common number of pole words ``K`` (a multiple of ``k_bucket``) and stacked,
so every scale of a column runs in one program, and scale sets and sites whose pole counts
fall in the same bucket reuse it. The padded pole words carry zero scores, Gram entries and
weights, and ``hierarchical._scores`` sums the pole words in order, so padding leaves every
score bit-identical. The words-only draws (the same pole-mean weights in every draw) rank
each scale's scores once and count how often a draw picks each word, with no sort per draw.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.errors import InputError
from jaxsem.kernels import stats
from jaxsem.kernels.hierarchical import (RatingDraws, _block, _draw_r, _order_key, _r,
                                         _runs, _scores, _unit_centred, leave_one_out_weights, rating_draws)

Array = jax.Array


class PoleStack(NamedTuple):
  """The pole projections of ``S`` scales, zero-padded to a common number of pole words.

  Zero scores, Gram entries and weights on the padded pole words leave every score unchanged
  (they add exact zeros), so a scale's draws are those of its own ``PoleProjections``.

  Attributes:
    scores: ``[S, N, K]`` word scores on each scale's pole words, zero beyond its own.
    gram: ``[S, K, K]`` the pole words' inner products, zero beyond each scale's own.
    n_positive: ``[S]`` positive pole words of each scale (numpy int).
    n_negative: ``[S]`` negative pole words of each scale (numpy int).
  """

  scores: Array
  gram: Array
  n_positive: np.ndarray
  n_negative: np.ndarray


def stack_pole_projections(projs, k_bucket: int = 8) -> PoleStack:
  """Stacks ``S`` scales' ``PoleProjections`` of the same words, ``K`` padded to a multiple of ``k_bucket``.

  Padding to a bucket lets scale sets of different pole counts share one compiled program.

  Args:
    projs: ``S >= 1`` ``PoleProjections`` of the same ``N`` words.
    k_bucket: the padded pole-word count is the least multiple of it that fits every scale.

  Returns:
    ``PoleStack``.

  Raises:
    InputError: no scales, a bad bucket, or projections of different words.
  """
  projs = list(projs)
  if not projs:
    raise InputError("Stacking pole projections needs at least one scale, got none.")
  if k_bucket < 1:
    raise InputError(f"The pole-word bucket must be a positive count, got k_bucket={k_bucket}.")
  n = projs[0].scores.shape[0]
  if any(p.scores.shape[0] != n for p in projs):
    raise InputError(f"Pole projections to stack must cover the same words, got word counts"
                     f" {[p.scores.shape[0] for p in projs]}.")
  k = -(-max(p.scores.shape[1] for p in projs) // k_bucket) * k_bucket
  pad = [k - p.scores.shape[1] for p in projs]
  # Assembled on the host ([S, N, K] is small): one eager pad per scale shape compiled a program each.
  scores = jnp.asarray(np.stack([np.pad(np.asarray(p.scores), ((0, 0), (0, e))) for p, e in zip(projs, pad)]))
  gram = jnp.asarray(np.stack([np.pad(np.asarray(p.gram), ((0, e), (0, e))) for p, e in zip(projs, pad)]))
  n_pos = np.array([p.n_positive for p in projs], np.int64)
  return PoleStack(scores=scores, gram=gram, n_positive=n_pos,
                   n_negative=np.array([p.scores.shape[1] for p in projs], np.int64) - n_pos)


def pad_weights(weights, k: int) -> Array:
  """Zero-pads pole weights ``[..., K_s]`` to ``[..., k]`` (the padded pole words weigh nothing)."""
  weights = np.asarray(weights, np.float32)  # small, built on the host
  if weights.shape[-1] > k:
    raise InputError(f"Pole weights over {weights.shape[-1]} pole words do not fit a stack of {k}.")
  return jnp.asarray(np.pad(weights, [(0, 0)] * (weights.ndim - 1) + [(0, k - weights.shape[-1])]))


@jax.jit
def _distribution_stack(scores: Array, gram: Array, draws: RatingDraws,
                        weights: Array) -> tuple[Array, Array]:
  def one(args):
    idx, w, y_p, y_s, y_const = args  # w: [S, K], this draw's weights of every scale
    return jax.vmap(lambda sc, g, ws: _draw_r(sc, g, idx, ws, y_p, y_s, y_const))(scores, gram, w)

  s, n = scores.shape[:2]
  block = _block(weights.shape[1], 4 * n * s)
  pearson, spearman = jax.lax.map(
      one, (draws.word_indices, jnp.swapaxes(weights, 0, 1), draws.pearson, draws.spearman, draws.constant),
      batch_size=block)
  return pearson.T, spearman.T


def distribution_stack(stack: PoleStack, draws: RatingDraws, weights) -> tuple[Array, Array]:
  """``distribution`` of every stacked scale on the same draws, in one program.

  Scale ``s``'s draws equal ``distribution(projs[s], draws, weights[s, :, :K_s])``; one
  program serves every scale set whose padded ``K`` and sizes agree.

  Args:
    stack: ``stack_pole_projections`` of the ``N`` rated words.
    draws: ``rating_draws(y, word_indices)`` of the same words.
    weights: ``[S, B, K]`` pole weights of each scale, zero on its padded pole words
      (``pad_weights``).

  Returns:
    ``([S, B] pearson, [S, B] spearman)``, NaN where a draw's scores or ratings are constant
    or its direction is zero.

  Raises:
    InputError: mismatched shapes.
  """
  s, n, k = stack.scores.shape
  b = draws.word_indices.shape[0]
  if draws.word_indices.shape[1] != n:
    raise InputError(f"The rating draws cover {draws.word_indices.shape[1]} words but the projections"
                     f" {n}; pass the same words.")
  if np.shape(weights) != (s, b, k):
    raise InputError(f"Pole weights must have shape [{s}, {b}, {k}], got {np.shape(weights)}.")
  return _distribution_stack(stack.scores, stack.gram, draws, jnp.asarray(weights, jnp.float32))


@jax.jit
def _fixed_distribution_stack(scores: Array, gram: Array, draws: RatingDraws,
                              weights: Array) -> tuple[Array, Array]:
  x = jax.vmap(_scores)(scores, gram, weights)  # [S, N]: every draw scores the words alike
  n = x.shape[1]
  # Each scale's words sorted once. A draw's ranks then follow from how often it picks each
  # word: the words below a run of equal scores, and the picks within the run, give its mean
  # rank, the same value a sort of the draw's scores gives, without a sort per draw.
  key = jax.vmap(_order_key)(jnp.where(jnp.isfinite(x), x, 0.0))
  order = jnp.argsort(key, axis=1)
  first, last = jax.vmap(_runs)(jnp.take_along_axis(key, order, axis=1))
  position = jax.vmap(lambda o: jnp.zeros((n,), jnp.int32).at[o].set(jnp.arange(n, dtype=jnp.int32)))(order)

  def one(args):
    idx, y_p, y_s, y_const = args
    picks = jnp.zeros((n,), jnp.int32).at[idx].add(1)

    def per_scale(xs, o, f, la, pos):
      xb = xs[idx]
      finite = jnp.all(jnp.isfinite(xb))
      xb = jnp.where(finite, xb, 0.0)
      bad = y_const | ~finite | (jnp.max(xb) == jnp.min(xb))
      c = picks[o]  # picks of each word, in score order
      upto = jnp.cumsum(c)
      # The picks of the run holding sorted position i take ranks upto[f] - c[f] + 1 .. upto[la].
      ranks = ((upto[f] - c[f] + upto[la] - 1).astype(jnp.float32) / 2 + 1)[pos[idx]]
      return _r(_unit_centred(xb), y_p, bad), _r(_unit_centred(ranks), y_s, bad)

    return jax.vmap(per_scale)(x, order, first, last, position)

  block = _block(draws.word_indices.shape[0], 8 * n * x.shape[0])
  pearson, spearman = jax.lax.map(one, (draws.word_indices, draws.pearson, draws.spearman, draws.constant),
                                  batch_size=block)
  return pearson.T, spearman.T


def fixed_distribution_stack(stack: PoleStack, draws: RatingDraws, weights) -> tuple[Array, Array]:
  """``distribution_stack`` where every draw of a scale uses the same pole weights (words only).

  Equal to ``distribution_stack(stack, draws, weights[:, None].repeat(B, 1))``, but each
  scale's scores are sorted once, not once per draw: a draw's ranks follow from how often it
  picks each word.

  Args:
    stack: ``stack_pole_projections`` of the ``N`` rated words.
    draws: ``rating_draws(y, word_indices)`` of the same words.
    weights: ``[S, K]`` pole weights of each scale, e.g. padded ``pole_mean_weights``.

  Returns:
    ``([S, B] pearson, [S, B] spearman)``, NaN as ``distribution``.

  Raises:
    InputError: mismatched shapes.
  """
  s, n, k = stack.scores.shape
  if draws.word_indices.shape[1] != n:
    raise InputError(f"The rating draws cover {draws.word_indices.shape[1]} words but the projections"
                     f" {n}; pass the same words.")
  if np.shape(weights) != (s, k):
    raise InputError(f"Fixed pole weights must have shape [{s}, {k}], got {np.shape(weights)}.")
  return _fixed_distribution_stack(stack.scores, stack.gram, draws, jnp.asarray(weights, jnp.float32))


def leave_one_out_ranges(stack: PoleStack, y, stat: str = "pearson") -> list[list[float] | None]:
  """``leave_one_out_range`` of every stacked scale, in one program.

  Args:
    stack: ``stack_pole_projections`` of the ``N`` rated words.
    y: ``[N]`` ratings.
    stat: "pearson" or "spearman".

  Returns:
    One ``[min, max]`` (or None, when nothing can be dropped) per scale.
  """
  if stat not in stats.STATS:
    raise InputError(f"Unknown correlation statistic {stat!r}; use one of {stats.STATS}.")
  s, n, k = stack.scores.shape
  loo = [leave_one_out_weights(int(p), int(m))[0] for p, m in zip(stack.n_positive, stack.n_negative)]
  if not any(w.shape[0] for w in loo):
    return [None] * s
  # At most K_s <= K rows each: padding the rows to K keeps one program per stack shape.
  weights = np.stack([np.asarray(pad_weights(np.pad(np.asarray(w), ((0, k - w.shape[0]), (0, 0))), k))
                      for w in loo])
  idx = np.broadcast_to(np.arange(n, dtype=np.int32), (k, n))
  pearson, spearman = distribution_stack(stack, rating_draws(y, idx), weights)
  r = np.asarray(pearson if stat == "pearson" else spearman, np.float64)
  out = []
  for row, w in zip(r, loo):
    row = row[:w.shape[0]]
    out.append([float(np.nanmin(row)), float(np.nanmax(row))] if np.isfinite(row).any() else None)
  return out
