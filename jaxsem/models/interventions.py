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
    orth_add    h + a m orthogonalize(v, basis)   (add only what v has outside span(basis))

With ``strength == 0`` "add" and "orth_add" are the identity exactly. With no
interventions the forward pass contains no intervention code at all. Strengths are in
the vector's own units; ``site_norms.site_norm`` gives a site's typical residual norm,
so a strength can be a multiple of it (with a unit vector).

Direction arithmetic is plain ``jnp`` (``-v``, ``2 * v``, ``v + w``); ``combine`` takes a
weighted sum of several directions and ``orthogonalize`` removes a subspace.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

OPS = ("add", "ablate", "ablate_add", "orth_add")


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
    basis: ``[K, D]`` rows spanning the subspace "orth_add" keeps the vector out of
      (any rows: not necessarily orthonormal or independent); None for other ops.
  """

  mask: jax.Array
  vector: jax.Array
  strength: jax.Array
  site: str = dataclasses.field(default="embed", metadata=dict(static=True))
  op: str = dataclasses.field(default="add", metadata=dict(static=True))
  basis: jax.Array | None = None


def positions_to_mask(positions: jax.Array, seq_len: int) -> jax.Array:
  """``[B, P]`` int positions (``-1`` = unused slot) -> ``[B, T]`` float32 mask."""
  positions = jnp.asarray(positions)
  if positions.ndim == 1:
    positions = positions[:, None]
  hits = positions[:, :, None] == jnp.arange(seq_len)[None, None, :]
  return jnp.any(hits & (positions[:, :, None] >= 0), axis=1).astype(jnp.float32)


def make(site: str, positions, vector, strength=1.0, op: str = "add", *, seq_len: int,
         basis=None) -> Intervention:
  """Builds an Intervention from token positions ``[B, P]`` (or ``[B]``).

  ``basis`` ``[K, D]`` is required by "orth_add" and refused by the other ops.
  """
  if op not in OPS:
    raise ValueError(f"unknown intervention op {op!r}; expected one of {OPS}")
  if (op == "orth_add") != (basis is not None):
    raise ValueError(f"intervention op {op!r}: pass basis=[K, D] with op 'orth_add' and only with it")
  parse_site(site)
  return Intervention(
      mask=positions_to_mask(positions, seq_len),
      vector=jnp.asarray(vector, jnp.float32),
      strength=jnp.asarray(strength, jnp.float32),
      site=site,
      op=op,
      basis=None if basis is None else jnp.asarray(basis, jnp.float32),
  )


def parse_site(site: str) -> tuple[str, int]:
  """``"resid_post.3"`` -> ``("resid_post", 3)``; ``"embed"`` -> ``("resid_pre", 0)``."""
  if site == "embed":
    return "resid_pre", 0
  kind, _, layer = site.partition(".")
  if kind not in ("resid_pre", "resid_post") or not layer.isdigit():
    raise ValueError(f"unknown site {site!r}; expected 'embed', 'resid_pre.<layer>' or 'resid_post.<layer>'")
  return kind, int(layer)


def orthogonalize(vector: jax.Array, basis: jax.Array) -> jax.Array:
  """Removes from ``vector`` ``[..., D]`` its component in the span of ``basis`` ``[K, D]``.

  The least-squares projection onto the row space, through an SVD of ``basis``: rows
  need not be orthonormal, and linearly dependent (or zero) rows are handled by
  dropping singular directions below ``max(K, D) * eps * s_max`` (numpy's rank cutoff).

  Returns:
    float32 ``[..., D]`` orthogonal to every row of ``basis``.
  """
  v = jnp.asarray(vector, jnp.float32)
  b = jnp.asarray(basis, jnp.float32)
  if b.ndim != 2 or b.shape[-1] != v.shape[-1]:
    raise ValueError(f"basis must be [K, D] with D={v.shape[-1]} (the vector's width), got {b.shape}")
  _, s, vt = jnp.linalg.svd(b, full_matrices=False)  # vt [min(K, D), D], orthonormal rows
  cutoff = jnp.max(s, initial=0.0) * max(b.shape) * jnp.finfo(jnp.float32).eps
  coords = (v @ vt.T) * (s > cutoff)
  return v - coords @ vt


def combine(vectors: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted sum of directions: ``vectors`` ``[K, D]``, ``weights`` ``[K]`` -> ``[D]``."""
  return jnp.einsum("k,kd->d", jnp.asarray(weights, jnp.float32), jnp.asarray(vectors, jnp.float32))


def apply(h: jax.Array, iv: Intervention) -> jax.Array:
  """Applies one intervention to ``h`` ``[B, T, D]``; returns the new ``h``."""
  dtype = h.dtype
  h32 = h.astype(jnp.float32)
  m = iv.mask.astype(jnp.float32)[..., None]  # [B, T, 1]
  v = iv.vector.astype(jnp.float32)
  if iv.op == "orth_add":
    if iv.basis is None:
      raise ValueError("intervention op 'orth_add' needs a basis [K, D]; build it with make(..., basis=...)")
    v = orthogonalize(v, iv.basis)
  v = v[:, None, :] if v.ndim == 2 else v[None, None, :]  # [B|1, 1, D]
  if iv.op in ("ablate", "ablate_add"):
    u = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    h32 = h32 - m * jnp.sum(h32 * u, axis=-1, keepdims=True) * u
  if iv.op in ("add", "ablate_add", "orth_add"):
    a = jnp.asarray(iv.strength, jnp.float32)
    a = a[:, None, None] if a.ndim == 1 else a
    h32 = h32 + a * m * v
  return h32.astype(dtype)
