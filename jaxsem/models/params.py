"""The params layout in code: shapes per leaf, and random params for tests and planning."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsem.models.config import ModelConfig


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Leaf path (``"embed"``, ``"blocks/q"`` ...) -> shape, as documented in config.py."""
  c = config
  L, D, H, K, Dh, F, V = (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff,
                          c.vocab_size)
  shapes = {
      "embed": (V, D),
      "final_norm": (D,),
      "blocks/attn_norm": (L, D),
      "blocks/q": (L, D, H, Dh),
      "blocks/k": (L, D, K, Dh),
      "blocks/v": (L, D, K, Dh),
      "blocks/o": (L, H, Dh, D),
      "blocks/mlp_norm": (L, D),
      "blocks/gate": (L, D, F),
      "blocks/up": (L, D, F),
      "blocks/down": (L, F, D),
  }
  if not c.tie_embeddings:
    shapes["unembed"] = (V, D)
  if c.qkv_bias:
    shapes.update({"blocks/q_bias": (L, H, Dh), "blocks/k_bias": (L, K, Dh), "blocks/v_bias": (L, K, Dh)})
  if c.qk_norm:
    shapes.update({"blocks/q_norm": (L, Dh), "blocks/k_norm": (L, Dh)})
  if c.post_norms:
    shapes.update({"blocks/post_attn_norm": (L, D), "blocks/post_mlp_norm": (L, D)})
  return shapes


def unflatten(flat: dict[str, object]) -> dict:
  """``{"blocks/q": x, "embed": y}`` -> ``{"blocks": {"q": x}, "embed": y}``."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
  """Inverse of ``unflatten``."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = value
  return out


def init_params(config: ModelConfig, key: jax.Array, dtype=jnp.float32, scale: float = 0.5) -> dict:
  """Random params (norm multipliers near 1, weights ~ N(0, scale^2 / fan_in)).

  For tests and toy models; ``jax.eval_shape(init_params, ...)`` gives abstract params
  of any size without allocating them.
  """
  shapes = param_shapes(config)
  keys = jax.random.split(key, len(shapes))
  flat = {}
  for k, (path, shape) in zip(keys, sorted(shapes.items())):
    if path.endswith("norm"):
      flat[path] = (1.0 + 0.1 * jax.random.normal(k, shape)).astype(dtype)
    elif path.endswith("bias"):
      flat[path] = (0.1 * jax.random.normal(k, shape)).astype(dtype)
    else:
      fan_in = shape[0] if path in ("embed", "unembed") else shape[1]
      fan_in = shape[1] * shape[2] if path == "blocks/o" else fan_in
      std = 1.0 if path in ("embed", "unembed") else scale / fan_in ** 0.5
      flat[path] = (std * jax.random.normal(k, shape)).astype(dtype)
  return unflatten(flat)
