"""The steered forward pass and its readouts, as one pure jit-compiled function.

One call evaluates a batch of rows; each row is a prompt (a suffix after a shared,
cached prefix) with its own steering vector added at the word's positions at one site.
A grid of words x directions x strengths is flattened into such rows, so the whole
grid is a few calls of one compiled program, its batch sharded over the mesh's data
axis. Only the logits of the readout's pole tokens are computed, at the last position.

What is read is one ``KernelReadout``: its arrays (the tokens whose logits are computed,
the pole indices, the read directions) are the program's inputs, its choices (the read
site, raw logits or pole log-odds) part of the compiled program, and its ``read`` turns
the forward pass's outputs into the kernel's.
"""

from __future__ import annotations

import dataclasses
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KernelReadout:
  """What the steered pass reads, as a pytree: device arrays as leaves, the choices static.

  Attributes:
    logit_rows: ``[R]`` token ids whose next-token logits are computed.
    positive: ``[J, K]`` int indices into ``logit_rows`` of each column's positive pole (-1 = none).
    negative: ``[J, K]`` same for the negative pole.
    read_dirs: ``[J', D]`` unit directions the representation is projected on, or None.
    read_site: capture site of the representation (static), or None to read none.
    raw_logits: return the ``[B, R]`` logits of ``logit_rows`` instead of the pole
      log-odds (static), for readouts that are not pole log-odds (e.g. expected ratings).
  """

  logit_rows: jax.Array
  positive: jax.Array
  negative: jax.Array
  read_dirs: jax.Array | None = None
  read_site: str | None = dataclasses.field(default=None, metadata=dict(static=True))
  raw_logits: bool = dataclasses.field(default=False, metadata=dict(static=True))

  @property
  def capture(self) -> tuple[str, ...]:
    """The sites whose states the forward pass must return."""
    return () if self.read_site is None else (self.read_site,)

  def read(self, logits: jax.Array, captured: dict[str, jax.Array],
           word_last: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """The forward pass's outputs -> the kernel's outputs.

    Args:
      logits: ``[B, R]`` next-token logits of ``logit_rows`` at the read position.
      captured: site -> ``[B, T, D]`` states (``capture``'s sites).
      word_last: ``[B]`` suffix position of the word's last token.

    Returns:
      ``(logodds [B, J] or logits [B, R] float32, representation [B, J'] or None)``; the
      representation is the word's last-token state at ``read_site`` on ``read_dirs``.
    """
    if self.raw_logits:
      first = logits.astype(jnp.float32)
    else:
      first = pole_logodds(logits, self.positive, self.negative)
    if self.read_site is None:
      return first, None
    if self.read_dirs is None:
      raise ValueError(f"A readout at {self.read_site!r} needs its read directions.")
    h = jnp.take_along_axis(captured[self.read_site], word_last[:, None, None], axis=1)[:, 0]
    return first, jnp.einsum("bd,jd->bj", h.astype(jnp.float32), self.read_dirs, precision=_HI)

  def pole_columns(self, n: int) -> KernelReadout:
    """The first ``n`` pole log-odds alone (no raw logits, no representation), e.g. to differentiate."""
    return KernelReadout(logit_rows=self.logit_rows, positive=self.positive[:n], negative=self.negative[:n])


@functools.partial(jax.jit, static_argnames=("config", "site"))
def steered_readout(params: dict, config: ModelConfig, prefix: PrefixCache, suffix_ids: jax.Array,
                    mask: jax.Array, word_mask: jax.Array, read_pos: jax.Array, word_last: jax.Array,
                    vectors: jax.Array, readout: KernelReadout, *,
                    site: str) -> tuple[jax.Array, jax.Array | None]:
  """Readout of a batch of steered prompts.

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
    readout: what is read (its static fields are part of the compiled program).
    site: intervention site ("embed", "resid_pre.{l}", "resid_post.{l}").

  Returns:
    ``readout.read``'s ``(logodds [B, J] or logits [B, R], representation [B, J'] or None)``.
  """
  iv = iv_lib.Intervention(mask=word_mask.astype(jnp.float32), vector=vectors,
                           strength=jnp.ones((), jnp.float32), site=site, op="add")
  out = forward(params, config, suffix_ids, mask, logit_positions=read_pos, capture=readout.capture,
                interventions=(iv,), prefix=prefix, logit_rows=readout.logit_rows)
  return readout.read(out.logits, out.captured, word_last)


@functools.partial(jax.jit, static_argnames=("config", "kind", "layers"))
def steered_readout_layers(params: dict, config: ModelConfig, prefix: PrefixCache, suffix_ids: jax.Array,
                           mask: jax.Array, word_mask: jax.Array, read_pos: jax.Array, word_last: jax.Array,
                           vectors: jax.Array, row_layers: jax.Array, readout: KernelReadout, *, kind: str,
                           layers: tuple[int, ...]) -> tuple[jax.Array, jax.Array | None]:
  """``steered_readout`` with each row steered at its own layer: one program for every layer asked.

  The layer is a batch axis: there is one ``add`` intervention per layer in ``layers``,
  and row ``b``'s word mask is kept only in the intervention of layer ``row_layers[b]``
  (a one-hot over the layers), so a row is steered at its layer and left exactly as it
  is at the others (its vector times a zero mask). Rows of every layer share the
  prefix cache (it does not depend on where the vector is added) and the batches.

  Args:
    params, config, prefix, suffix_ids, mask, word_mask, read_pos, word_last, vectors,
      readout: as in ``steered_readout``.
    row_layers: ``[B]`` int block of each row, one of ``layers``.
    kind: ``resid_pre`` or ``resid_post`` (static).
    layers: the blocks a row may be steered at (static; each costs one masked add per block).

  Returns:
    As ``steered_readout``: row ``b`` equals ``steered_readout(..., site=f"{kind}.{row_layers[b]}")``.
  """
  word_mask = word_mask.astype(jnp.float32)
  ivs = tuple(iv_lib.Intervention(mask=word_mask * (row_layers == layer).astype(jnp.float32)[:, None],
                                  vector=vectors, strength=jnp.ones((), jnp.float32), site=f"{kind}.{layer}",
                                  op="add")
              for layer in layers)
  out = forward(params, config, suffix_ids, mask, logit_positions=read_pos, capture=readout.capture,
                interventions=ivs, prefix=prefix, logit_rows=readout.logit_rows)
  return readout.read(out.logits, out.captured, word_last)
