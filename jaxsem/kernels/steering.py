"""The steered forward pass and its readouts, as one pure jit-compiled function.

One call evaluates a batch of rows; each row is a prompt (a suffix after a shared,
cached prefix) with its own steering vector added at the word's positions at one site.
A grid of words x directions x strengths is flattened into such rows, so the whole
grid is a few calls of one compiled program, its batch sharded over the mesh's data
axis. Only the logits of the readout's pole tokens are computed, at the last position.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxsem.models import interventions as iv_lib
from jaxsem.models.config import ModelConfig
from jaxsem.models.forward import forward
from jaxsem.models.kv_cache import PrefixCache

_HI = jax.lax.Precision.HIGHEST


def _pole_lse(logits: jax.Array, index: jax.Array) -> jax.Array:
  """``logsumexp`` of ``logits [..., R]`` over each row of ``index [J, K]`` (-1 skipped) -> ``[..., J]``."""
  picked = jnp.take(logits, jnp.maximum(index, 0), axis=-1)  # [..., J, K]
  picked = jnp.where(index >= 0, picked, -jnp.inf)
  return jax.nn.logsumexp(picked, axis=-1)


def pole_logodds(logits: jax.Array, positive: jax.Array, negative: jax.Array) -> jax.Array:
  """Ratings ``[..., J]``: log-sum-exp of the positive poles' logits minus the negative's.

  Args:
    logits: ``[..., R]`` logits of the readout tokens.
    positive: ``[J, K]`` int indices into ``R`` of each scale's positive pole (-1 = none).
    negative: ``[J, K]`` same for the negative pole.
  """
  logits = logits.astype(jnp.float32)
  return _pole_lse(logits, positive) - _pole_lse(logits, negative)


@functools.partial(jax.jit, static_argnames=("config", "site", "read_site", "raw_logits"))
def steered_readout(params: dict, config: ModelConfig, prefix: PrefixCache, suffix_ids: jax.Array,
                    mask: jax.Array, word_mask: jax.Array, read_pos: jax.Array, word_last: jax.Array,
                    vectors: jax.Array, logit_rows: jax.Array, positive: jax.Array, negative: jax.Array,
                    read_dirs: jax.Array | None, *, site: str, read_site: str | None = None,
                    raw_logits: bool = False) -> tuple[jax.Array, jax.Array | None]:
  """Ratings of a batch of steered prompts.

  Args:
    params: params pytree.
    config: the architecture (static).
    prefix: the shared prompt prefix's cache.
    suffix_ids: ``[B, T]`` suffix token ids (the word, then the template's tail).
    mask: ``[B, T]`` 1 on real suffix tokens.
    word_mask: ``[B, T]`` 1 on the word's tokens (where the vector is added).
    read_pos: ``[B]`` suffix position whose next-token logits are read (the last token).
    word_last: ``[B]`` suffix position of the word's last token (representation readout).
    vectors: ``[B, D]`` steering vector of each row, strength included (zeros = unsteered).
    logit_rows: ``[R]`` token ids of the pole tokens.
    positive, negative: ``[J, K]`` pole indices into ``logit_rows``.
    read_dirs: ``[J, D]`` unit directions for the representation readout, or None.
    site: intervention site ("embed", "resid_pre.{l}", "resid_post.{l}").
    read_site: capture site of the representation readout, or None to skip it.
    raw_logits: return the ``[B, R]`` logits of ``logit_rows`` instead of the log-odds
      (for readouts that are not pole log-odds, e.g. expected ratings over digits).

  Returns:
    ``(logodds [B, J] or logits [B, R], representation [B, J] or None)``; the
    representation is the word's last-token state at ``read_site`` projected on ``read_dirs``.
  """
  iv = iv_lib.Intervention(mask=word_mask.astype(jnp.float32), vector=vectors,
                           strength=jnp.ones((), jnp.float32), site=site, op="add")
  capture = (read_site,) if read_site is not None else ()
  out = forward(params, config, suffix_ids, mask, logit_positions=read_pos, capture=capture,
                interventions=(iv,), prefix=prefix, logit_rows=logit_rows)
  ratings = out.logits.astype(jnp.float32) if raw_logits else pole_logodds(out.logits, positive, negative)
  rep = None
  if read_site is not None:
    h = jnp.take_along_axis(out.captured[read_site], word_last[:, None, None], axis=1)[:, 0]
    rep = jnp.einsum("bd,jd->bj", h.astype(jnp.float32), read_dirs, precision=_HI)
  return ratings, rep
