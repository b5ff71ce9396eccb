"""The hidden sweep's device programs: the context runner and the jitted per-block computations.

``_Runner`` splits the ``{token}`` context into a prefix (run once, kept as a prefix cache) and a
suffix, and places blocks of vocabulary tokens over the mesh's data axis. ``statistics_block``
(pass 1) and ``projection_block`` (pass 2) run one forward per block and return only the per-site
moments ``[S, D, D]`` (and the ``[S, B, K]`` scores); ``site_states`` reads the states of every
asked site at one position; ``_place`` puts the directions, means and whitening on the mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsem import distributed
from jaxsem import sharding
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.errors import InputError
from jaxsem.models.forward import forward
from jaxsem.models.kv_cache import prefix_cache

SLOT = "{token}"
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- device programs


def _capture(sites: tuple[str, ...]) -> tuple[str, ...]:
  want = {"embed" if s == "embed" else "final" if s == "final" else "resid_post" for s in sites}
  return tuple(s for s in ("embed", "resid_post", "final") if s in want)


def site_states(params: dict, config, ids: jax.Array, mask: jax.Array, prefix, sites: tuple[str, ...],
                position: int = 0) -> jax.Array:
  """States of ``sites`` at ``position`` of every row -> ``[n_sites, B, D]`` float32 (traceable)."""
  out = forward(params, config, ids, mask, logits_at="none", capture=_capture(sites), prefix=prefix)
  got = []
  for site in sites:
    if site.startswith("resid_post."):
      h = out.captured["resid_post"][int(site.split(".", 1)[1])]
    else:
      h = out.captured[site]
    got.append(h[:, position].astype(jnp.float32))
  return jnp.stack(got)


def _block_moments(w: jax.Array, valid: jax.Array,
                   out_sharding=None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(count, ``[S, D]`` mean, ``[S, D, D]`` centred sum of squares) of the valid rows of ``w [S, B, D]``;
  ``out_sharding`` places the ``[S, D, D]`` (a deep model's sites x D^2 does not fit one device)."""
  v = valid.astype(jnp.float32)[None, :, None]
  n = jnp.sum(valid.astype(jnp.float32))
  mean = jnp.sum(w * v, axis=1) / n
  c = (w - mean[:, None]) * v
  m2 = jnp.einsum("sbd,sbe->sde", c, c, precision=_HI)
  if out_sharding is not None:
    m2 = jax.lax.with_sharding_constraint(m2, out_sharding)
  return n, mean, m2


def moments_sharding(mesh) -> NamedSharding | None:
  """``[S, D, D]`` moments with their first ``D`` over the mesh axis of the directions (None: no mesh)."""
  if mesh is None:
    return None
  return NamedSharding(mesh, P(None, dict(sharding.LOGICAL_AXIS_RULES)["vocab"], None))


@functools.partial(jax.jit, static_argnames=("config", "sites", "out_sharding"))
def statistics_block(params, config, ids, mask, prefix, valid, *, sites, out_sharding=None):
  """Pass 1 on one block: count, per-site mean ``[S, D]`` and centred sum of squares ``[S, D, D]``."""
  return _block_moments(site_states(params, config, ids, mask, prefix, sites), valid, out_sharding)


@functools.partial(jax.jit, static_argnames=("config", "sites", "metric", "scores", "out_sharding"))
def projection_block(params, config, ids, mask, prefix, valid, mean, whiten, units, *, sites, metric,
                     scores=True, out_sharding=None):
  """Pass 2 on one block: scores ``[S, B, K]`` (or None) and the moments of the rows as ``metric`` sees them.

  Args:
    params, config, ids, mask, prefix: the forward pass's (``ids [B, T]`` the token and its context's tail).
    valid: ``[B]`` rows that count (the last block is padded).
    mean: ``[S, D]`` per-site centre; whiten: ``[S, D, D]`` or None.
    units: ``[S, K, D]`` unit directions per site.
    sites, metric: static.
    scores: compute the scores (False: the moments only).
    out_sharding: of the ``[S, D, D]`` moments (``moments_sharding``).
  """
  x = site_states(params, config, ids, mask, prefix, sites) - mean[:, None]
  if whiten is not None:
    x = jnp.einsum("sbd,sde->sbe", x, whiten, precision=_HI)
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  inv = jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  out = None
  if scores:
    out = jnp.einsum("sbd,skd->sbk", x, units, precision=_HI)
    if metric == "cosine":
      out = jnp.clip(out * inv, -1.0, 1.0)
  w = x * inv if metric == "cosine" else x
  return out, _block_moments(w, valid, out_sharding)


_states_jit = jax.jit(site_states, static_argnames=("config", "sites", "position"))


def _place(model, units: np.ndarray, transforms, d: int):
  """Directions ``[S, K', D]`` (K padded to and split over the model axis), means and whitening, placed."""
  s, k, _ = units.shape
  mesh = model.mesh
  mean = np.stack([np.zeros(d, np.float32) if t is None else np.asarray(t.mean) for t in transforms])
  whiten = None
  eye = np.eye(d, dtype=np.float32)
  if any(t is not None and not np.array_equal(np.asarray(t.W), eye) for t in transforms):
    whiten = np.stack([np.eye(d, dtype=np.float32) if t is None else np.asarray(t.W) for t in transforms])
  if mesh is None:
    return jnp.asarray(units, jnp.float32), jnp.asarray(mean), None if whiten is None else jnp.asarray(whiten)
  axis = dict(sharding.LOGICAL_AXIS_RULES)["vocab"]
  k_pad = k + -k % mesh.shape[axis]
  padded = np.concatenate([units, np.repeat(units[:, :1], k_pad - k, axis=1)], axis=1).astype(np.float32)
  rep = NamedSharding(mesh, P())
  return (jax.device_put(padded, NamedSharding(mesh, P(None, axis, None))), jax.device_put(mean, rep),
          None if whiten is None else jax.device_put(whiten, rep))


def _project(model, runner, mean, whiten, units, metric, scores, ids, mask, valid):
  return projection_block(model.params, model.config, ids, mask, runner.prefix, valid, mean, whiten, units,
                          sites=runner.sites, metric=metric, scores=scores,
                          out_sharding=moments_sharding(model.mesh))


# ----------------------------------------------------------------------------- the runner


def context_parts(tokenizer, context: str) -> tuple[list[int], list[int]]:
  """Token ids before and after the ``{token}`` slot of ``context`` (leading special tokens included).

  Raises:
    InputError: a context without exactly one ``{token}`` slot.
  """
  if not isinstance(context, str) or context.count(SLOT) != 1 or "{word}" in context:
    raise InputError(f"--context={context!r} must contain the slot {{token}} exactly once, "
                     "e.g. --context='{token}' or --context='The word {token}'.")
  return spaces_lib._template_parts(tokenizer, context.replace(SLOT, "{word}"))  # noqa: SLF001


class _Runner:
  """Blocks of vocabulary tokens in the context, placed over the mesh's data axis."""

  def __init__(self, model, context: str, sites: tuple[str, ...], chunk: int):
    self.model, self.sites, self.chunk = model, sites, int(chunk)
    prefix_ids, self.suffix = context_parts(model.tokenizer, context)
    self.prefix_len = len(prefix_ids)
    self.prefix = None
    if prefix_ids:
      cache = jax.jit(prefix_cache, static_argnames=("config",))
      self.prefix = cache(model.params, model.config, jnp.asarray(prefix_ids, jnp.int32))
    data = model._data_size()  # noqa: SLF001
    if self.chunk % data:
      raise InputError(f"--hidden_chunk_rows={self.chunk} must be a multiple of {data}, the mesh's data "
                       "axis.")

  def put(self, x: np.ndarray) -> jax.Array:
    return self.model._put(x)  # noqa: SLF001

  def block(self, tokens: np.ndarray) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ids [chunk, T], mask, valid [chunk])`` on the mesh for ``tokens`` (padded with the first)."""
    k = len(tokens)
    padded = np.concatenate([tokens, np.full(self.chunk - k, tokens[0], tokens.dtype)])
    ids = np.concatenate([padded[:, None], np.broadcast_to(np.asarray(self.suffix, np.int64),
                                                           (self.chunk, len(self.suffix)))], axis=1)
    return (self.put(ids.astype(np.int32)), self.put(np.ones(ids.shape, np.int32)),
            self.put((np.arange(self.chunk) < k)))

  def states(self, tokens: np.ndarray) -> np.ndarray:
    """``[n_sites, len(tokens), D]`` float32 raw states (host)."""
    return self.word_states([(int(t),) for t in tokens])

  def word_states(self, seqs, progress=None) -> np.ndarray:
    """``[n_sites, len(seqs), D]`` float32 raw states at the last token of each token-id sequence in the
    context (sequences of one length run together, in blocks of ``chunk``); ``progress(done)`` after
    each block."""
    d = self.model.config.d_model
    out = np.zeros((len(self.sites), len(seqs), d), np.float32)
    by_length: dict[int, list[int]] = {}
    done = 0
    for i, ids in enumerate(seqs):
      by_length.setdefault(len(ids), []).append(i)
    for length, rows in sorted(by_length.items()):
      for s in range(0, len(rows), self.chunk):
        part = rows[s:s + self.chunk]
        ids = np.asarray([list(seqs[i]) + list(self.suffix) for i in part], np.int32)
        ids = np.concatenate([ids, np.repeat(ids[:1], self.chunk - len(part), axis=0)])
        got = _states_jit(self.model.params, self.model.config, self.put(ids), self.put(np.ones_like(ids)),
                          self.prefix, sites=self.sites, position=length - 1)
        out[:, part] = distributed.to_host(got)[:, :len(part)]
        done += len(part)
        if progress is not None:
          progress(done)
    return out
