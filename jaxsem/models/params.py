"""The params layout in code: shapes per leaf, and random params for tests and planning."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsem.models import families
from jaxsem.models.config import ModelConfig


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Leaf path (``"embed"``, ``"blocks/q"`` ...) -> shape, from the family's leaf table."""
  return {leaf.path: leaf.shape(config) for leaf in families.leaves(config)}


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
