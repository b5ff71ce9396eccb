"""Model: config + params + tokenizer + provenance, with batched scoring and decoding.

The heavy lifting is the pure ``forward``; this class only tokenizes, pads to shape
buckets (so jit compiles a handful of programs, not one per prompt length), places
inputs on the mesh and converts results to numpy.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxsem import sharding as sharding_lib
from jaxsem.models.config import ModelConfig
from jaxsem.models.forward import ForwardOutput, forward_jit

_DECODE_BUCKET = 8  # decoding buffers grow in steps of 8 tokens


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, *, length: int | None = None,
              batch_multiple: int = 1, length_bucket: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token id lists into ``ids [B', T]`` and ``mask [B', T]`` (int32).

  ``T`` is ``length`` or the longest sequence rounded up to ``length_bucket``; ``B'``
  is ``len(seqs)`` rounded up to ``batch_multiple`` with empty (all-padding) rows.
  """
  longest = max((len(s) for s in seqs), default=1)
  t = _round_up(longest, length_bucket) if length is None else length
  b = _round_up(len(seqs), batch_multiple)
  ids = np.full((b, t), pad_id, np.int32)
  mask = np.zeros((b, t), np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)] = s
    mask[i, :len(s)] = 1
  return ids, mask


@dataclasses.dataclass
class Model:
  """A loaded language model.

  Attributes:
    config: architecture.
    params: params pytree (layout in ``jaxsem.models.config``), on ``mesh`` if given.
    tokenizer: ``jaxsem.io.tokenizer.Tokenizer`` matching the reference tokenizer.
    provenance: where the weights came from (file, quantization, which matrix is the
      input embedding / unembedding, tied or not, embedding scale, dtype, mesh).
    mesh: the device mesh params live on, or None for the default device.
    length_bucket: batches are padded to their longest prompt rounded up to this
      multiple. 1 (default) wastes no compute on padding; each new length compiles once
      (about half a second for the embedded models), so raise it when scoring prompts
      of very many different lengths.

  A prompt longer than ``config.max_position`` (the context the model was trained for)
  still runs, with one warning per model naming the lengths.
  """

  config: ModelConfig
  params: dict
  tokenizer: Any
  provenance: dict
  mesh: Mesh | None = None
  length_bucket: int = 1
  _context_warned: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)

  # ------------------------------------------------------------------ helpers

  @property
  def pad_id(self) -> int:
    pad = self.tokenizer.pad_id
    if pad is None:
      pad = self.config.pad_token_id
    return 0 if pad is None else int(pad)

  def _warn_past_context(self, tokens: int, what: str) -> None:
    """Warns once per model when ``tokens`` exceed the trained context length."""
    limit = self.config.max_position
    if tokens <= limit or self._context_warned:
      return
    self._context_warned = True
    warnings.warn(f"{self.provenance.get('name', 'model')}: {what} makes {tokens} tokens, more than the "
                  f"{limit} the model was trained for (max_position); outputs past that length are "
                  "unreliable.", stacklevel=3)

  def _data_size(self) -> int:
    return 1 if self.mesh is None else self.mesh.shape["data"]

  def encode(self, texts: Sequence[str], *, add_special_tokens: bool = True,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes and right-pads ``texts`` -> ``ids [B', T]``, ``mask [B', T]``."""
    seqs = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    return pad_batch(seqs, self.pad_id, length=length, batch_multiple=self._data_size(),
                     length_bucket=self.length_bucket)

  def _put(self, x: np.ndarray) -> jax.Array:
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.device_put(x, sharding_lib.batch_sharding(self.mesh, x.ndim))

  def forward(self, ids: np.ndarray, mask: np.ndarray, **kwargs) -> ForwardOutput:
    """Jitted ``forward`` with the batch placed over the mesh's data axis.

    A batch that does not divide the data axis is padded with empty rows, which are
    dropped from the outputs again. Per-row keyword arrays (``logit_positions``) are
    padded the same way.
    """
    ids, mask = np.asarray(ids), np.asarray(mask)
    if mask.size:
      self._warn_past_context(int(mask.sum(axis=-1).max()), "a batch row")
    b = ids.shape[0]
    extra = -b % self._data_size()
    if extra:
      ids = np.concatenate([ids, np.full((extra, ids.shape[1]), self.pad_id, ids.dtype)])
      mask = np.concatenate([mask, np.zeros((extra, mask.shape[1]), mask.dtype)])
      if kwargs.get("logit_positions") is not None:
        pos = np.asarray(kwargs["logit_positions"])
        kwargs["logit_positions"] = np.concatenate([pos, np.zeros((extra,) + pos.shape[1:], pos.dtype)])
    if "capture" in kwargs:
      kwargs["capture"] = tuple(kwargs["capture"])
    out = forward_jit(self.params, self.config, self._put(ids), self._put(mask), **kwargs)
    if not extra:
      return out
    logits = None if out.logits is None else out.logits[:b]
    captured = {k: (v[:, :b] if k in ("resid_pre", "resid_post") else v[:b]) for k, v in out.captured.items()}
    return ForwardOutput(logits=logits, captured=captured)

  # ------------------------------------------------------------------ public API

  def next_token_logits(self, texts: Sequence[str], *, batch_size: int = 32,
                        add_special_tokens: bool = True) -> np.ndarray:
    """Logits of the token after each text.

    Texts are tokenized as the reference tokenizer does by default (Gemma prepends
    ``<bos>``), batched with right padding, and only the last real position of each
    row goes through the vocabulary projection.

    Args:
      texts: prompts.
      batch_size: prompts per forward call.
      add_special_tokens: add the tokenizer's default special tokens.

    Returns:
      float32 numpy array ``[len(texts), vocab_size]``.
    """
    seqs = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    self._warn_past_context(max((len(s) for s in seqs), default=0), "the longest prompt")
    out = np.zeros((len(seqs), self.config.vocab_size), np.float32)
    # Batches of similar lengths waste less compute on padding.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      ids, mask = pad_batch([seqs[i] for i in rows], self.pad_id, batch_multiple=self._data_size(),
                            length_bucket=self.length_bucket)
      logits = self.forward(ids, mask, logits_at="last").logits
      out[rows] = np.asarray(logits)[:len(rows)]
    return out

  def generate(self, texts: Sequence[str] | str, max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations of ``texts`` (decoded new text only).

    Decodes in one fixed-size buffer so each step reuses one compiled program. Warns
    once per model when the longest prompt plus ``max_new_tokens`` exceeds the
    context the model was trained for (``config.max_position``).
    """
    if isinstance(texts, str):
      texts = [texts]
    seqs = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
    lengths = np.array([len(s) for s in seqs])
    self._warn_past_context(int(lengths.max()) + max_new_tokens,
                            f"a prompt of {int(lengths.max())} tokens plus max_new_tokens={max_new_tokens}")
    total = _round_up(int(lengths.max()) + max_new_tokens, _DECODE_BUCKET)
    ids, mask = pad_batch(seqs, self.pad_id, length=total, batch_multiple=self._data_size())
    n = len(seqs)
    done = np.zeros(n, bool)
    new_tokens: list[list[int]] = [[] for _ in range(n)]
    eos = set(self.config.eos_token_ids) | set(self.tokenizer.eos_ids or ())
    cur = np.zeros(ids.shape[0], np.int32)
    cur[:n] = lengths
    for _ in range(max_new_tokens):
      positions = np.maximum(cur - 1, 0)
      logits = np.asarray(self.forward(ids, mask, logit_positions=positions).logits)
      nxt = logits.argmax(axis=-1)
      for i in range(n):
        if done[i]:
          continue
        tok = int(nxt[i])
        if tok in eos:
          done[i] = True
          continue
        new_tokens[i].append(tok)
        ids[i, cur[i]] = tok
        mask[i, cur[i]] = 1
        cur[i] += 1
      if done.all():
        break
    return [self.tokenizer.decode(t) for t in new_tokens]

  def summary(self) -> str:
    """One paragraph describing what was loaded."""
    c, p = self.config, self.provenance
    mesh = "single device" if self.mesh is None else ",".join(f"{k}:{v}" for k, v in self.mesh.shape.items())
    return (f"{p.get('name', '?')}: {c.family}, {c.n_params / 1e6:.1f}M params, {c.n_layers} layers, "
            f"d_model={c.d_model}, heads={c.n_heads}/{c.n_kv_heads} (q/kv), vocab={c.vocab_size}, "
            f"tied={c.tie_embeddings}, embed_scale={c.embed_scale:.4g}; from {p.get('path')} "
            f"({p.get('format')}, {p.get('quantization')}); dtype={p.get('dtype')}; mesh={mesh}")
