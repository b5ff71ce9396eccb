"""Typical residual norm at an intervention site, the unit for steering strengths.

A strength of 4 means little on its own: residual norms differ by orders of magnitude
between models, sites and layers. ``site_norm`` measures the site's typical norm on a
batch, so a unit vector added with ``strength = k * site_norm(...)`` moves the residual
by ``k`` typical norms wherever it is applied.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsem.models import interventions as iv_lib
from jaxsem.models.config import ModelConfig
from jaxsem.models.forward import forward_jit


def site_norm(params: dict, config: ModelConfig, token_ids: jax.Array, attention_mask: jax.Array,
              site: str) -> jax.Array:
  """Median L2 norm of the residual at ``site`` over the real tokens of a batch.

  The median, not the mean: a few tokens (the first token, attention sinks) can carry
  norms many times the others, and a mean would follow them.

  Args:
    params: params pytree (layout in ``jaxsem.models.config``).
    config: the architecture (static under jit).
    token_ids: ``[B, T]`` int32 token ids.
    attention_mask: ``[B, T]`` 1 for real tokens, 0 for padding (at least one real token).
    site: "embed", "resid_pre.{l}", "resid_post.{l}" (intervention sites) or "final".

  Returns:
    float32 scalar; NaN when the mask has no real token.
  """
  if site != "final":
    iv_lib.parse_site(site)  # one clear error for an unknown site
  out = forward_jit(params, config, token_ids, attention_mask, logits_at="none", capture=(site,))
  norms = jnp.linalg.norm(out.captured[site].astype(jnp.float32), axis=-1)  # [B, T]
  return jnp.nanmedian(jnp.where(jnp.asarray(attention_mask) > 0, norms, jnp.nan))
