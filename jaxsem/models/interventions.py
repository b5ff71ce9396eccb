"""Interventions on the residual stream, passed to the forward pass as plain data.

An intervention says *where* (a site and the token positions), *what* (a vector) and
*how much* (a strength); the forward pass applies it while it runs. Sites:

    "embed"            the embedding output (scaled token embeddings), before block 0
    "resid_pre.{l}"    the residual stream entering block l ("resid_pre.0" == "embed")
    "resid_post.{l}"   the residual stream leaving block l

Ops (``u = vector / |vector|``, ``m`` the position mask, ``a`` the strength)::

    add         h + a m v
    ablate      h - m (h.u) u                 (project the direction out)
    ablate_add  h - m (h.u) u + a m v         (replace the component along v)

With ``strength == 0`` "add" is the identity exactly. With no interventions the forward
pass contains no intervention code at all.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

OPS = ("add", "ablate", "ablate_add")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Intervention:
  """One intervention; a pytree whose ``site`` and ``op`` are static.

  Attributes:
    mask: ``[B, T]`` float weights of the positions to change (1 at the target token).
    vector: ``[D]`` or ``[B, D]`` direction (not normalised for "add").
    strength: ``[]`` or ``[B]`` multiplier of the vector.
    site: where to apply it, see the module docstring.
    op: one of ``OPS``.
  """

  mask: jax.Array
  vector: jax.Array
  strength: jax.Array
  site: str = dataclasses.field(default="embed", metadata=dict(static=True))
  op: str = dataclasses.field(default="add", metadata=dict(static=True))


def positions_to_mask(positions: jax.Array, seq_len: int) -> jax.Array:
  """``[B, P]`` int positions (``-1`` = unused slot) -> ``[B, T]`` float32 mask."""
  positions = jnp.asarray(positions)
  if positions.ndim == 1:
    positions = positions[:, None]
  hits = positions[:, :, None] == jnp.arange(seq_len)[None, None, :]
  return jnp.any(hits & (positions[:, :, None] >= 0), axis=1).astype(jnp.float32)


def make(site: str, positions, vector, strength=1.0, op: str = "add", *, seq_len: int) -> Intervention:
  """Builds an Intervention from token positions ``[B, P]`` (or ``[B]``)."""
  if op not in OPS:
    raise ValueError(f"unknown intervention op {op!r}; expected one of {OPS}")
  parse_site(site)
  return Intervention(
      mask=positions_to_mask(positions, seq_len),
      vector=jnp.asarray(vector, jnp.float32),
      strength=jnp.asarray(strength, jnp.float32),
      site=site,
      op=op,
  )


def parse_site(site: str) -> tuple[str, int]:
  """``"resid_post.3"`` -> ``("resid_post", 3)``; ``"embed"`` -> ``("resid_pre", 0)``."""
  if site == "embed":
    return "resid_pre", 0
  kind, _, layer = site.partition(".")
  if kind not in ("resid_pre", "resid_post") or not layer.isdigit():
    raise ValueError(f"unknown site {site!r}; expected 'embed', 'resid_pre.<layer>' or 'resid_post.<layer>'")
  return kind, int(layer)


def apply(h: jax.Array, iv: Intervention) -> jax.Array:
  """Applies one intervention to ``h`` ``[B, T, D]``; returns the new ``h``."""
  dtype = h.dtype
  h32 = h.astype(jnp.float32)
  m = iv.mask.astype(jnp.float32)[..., None]  # [B, T, 1]
  v = iv.vector.astype(jnp.float32)
  v = v[:, None, :] if v.ndim == 2 else v[None, None, :]  # [B|1, 1, D]
  if iv.op in ("ablate", "ablate_add"):
    u = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    h32 = h32 - m * jnp.sum(h32 * u, axis=-1, keepdims=True) * u
  if iv.op in ("add", "ablate_add"):
    a = jnp.asarray(iv.strength, jnp.float32)
    a = a[:, None, None] if a.ndim == 1 else a
    h32 = h32 + a * m * v
  return h32.astype(dtype)
