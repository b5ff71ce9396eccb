"""Keys and values of a prefix shared by a batch, computed once.

Steering grids run many prompts that share their opening text (an instruction, a
template) and differ only after it. ``prefix_cache`` runs the shared prefix once and
keeps every layer's attention keys and values; ``forward(..., prefix=cache)`` then runs
only the suffixes, whose queries attend to the cached prefix and to their own earlier
tokens. The result equals running the concatenated prompts, at the suffix positions::

    cache = prefix_cache(params, config, prefix_ids)            # [P] ids, once
    out = forward(params, config, suffix_ids, suffix_mask, prefix=cache)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxsem.models import interventions as iv_lib
from jaxsem.models.config import ModelConfig
from jaxsem.models.forward import forward


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefixCache:
  """Attention keys and values of one prefix, shared by every row of a batch.

  Attributes:
    k: ``[L, P, n_kv_heads, head_dim]`` keys of every layer (after qk-norm and RoPE at
      positions ``0..P-1``), in the params' dtype.
    v: ``[L, P, n_kv_heads, head_dim]`` values of every layer.
    length: ``P``, the number of prefix tokens (static under jit).
  """

  k: jax.Array
  v: jax.Array
  length: int = dataclasses.field(metadata=dict(static=True))


def prefix_cache(params: dict, config: ModelConfig, prefix_ids: jax.Array,
                 interventions: Sequence[iv_lib.Intervention] = ()) -> PrefixCache:
  """Runs ``prefix_ids`` once and keeps the keys and values of every layer.

  Args:
    params: params pytree (layout in ``jaxsem.models.config``).
    config: the architecture (static under jit).
    prefix_ids: ``[P]`` token ids of the shared prefix (no padding; ``P >= 1``).
    interventions: optional interventions on the prefix (masks ``[1, P]``).

  Returns:
    The ``PrefixCache`` to pass as ``forward(..., prefix=...)``.
  """
  ids = jnp.asarray(prefix_ids, jnp.int32)
  if ids.ndim != 1 or ids.shape[0] == 0:
    raise ValueError(f"prefix_ids must be a non-empty [P] array of token ids, got shape {ids.shape}")
  ids = ids[None]
  out = forward(params, config, ids, jnp.ones_like(ids), logits_at="none", capture=("keys", "values"),
                interventions=interventions)
  return PrefixCache(k=out.captured["keys"][:, 0], v=out.captured["values"][:, 0], length=ids.shape[1])
