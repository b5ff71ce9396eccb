"""Reading GGUF metadata: the fields every llama-like family shares.

Llama 3.1 RoPE scaling is stored as a ``rope_freqs.weight`` tensor of per-frequency
divisors instead of metadata; its parameters are recovered by fitting (see
:func:`llama3_scaling_from_freqs`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from jaxsem.errors import InputError
from jaxsem.models.config import RopeScaling


class Meta:
  """Typed access to ``{arch}.*`` metadata with errors that name the file.

  Attributes:
    m: the whole metadata mapping.
    path: the file, for messages.
    arch: ``general.architecture``.
    tensors: tensor name -> info (anything with ``.shape``), or None when unknown.
  """

  def __init__(self, metadata: Mapping[str, Any], path: str, arch: str, tensors: Mapping[str, Any] | None):
    self.m, self.path, self.arch, self.tensors = metadata, path, arch, tensors

  def get(self, key: str, default: Any = None) -> Any:
    value = self.m.get(key.format(arch=self.arch), default)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size:
      if np.all(value == value[0]):  # per-layer arrays with one value
        return value[0].item()
      raise InputError(f"{self.path}: metadata {key.format(arch=self.arch)!r} varies per layer"
                       f" ({value.tolist()}), which jaxsem does not support.")
    return value

  def num(self, key: str, default: Any = None, cast: Callable[[Any], Any] = int) -> Any:
    """A positive number; ``default`` if absent, an error if absent without default."""
    value = self.get(key, default)
    name = key.format(arch=self.arch)
    if value is None:
      raise InputError(f"{self.path}: metadata key {name!r} is missing; the file is not a complete"
                       f" {self.arch} GGUF.")
    try:
      out = None if isinstance(value, (bool, np.bool_)) else cast(value)
      if cast is int and out != value:  # 2.5 or "2" is refused, not truncated or parsed
        out = None
    except (TypeError, ValueError, OverflowError):
      out = None
    if out is None or not out > 0:
      raise InputError(f"{self.path}: metadata {name!r} is {value!r}, not a positive number;"
                       " the file is corrupt.")
    return out

  def optional(self, key: str, cast: Callable[[Any], Any] = float) -> Any:
    return None if self.get(key) is None else self.num(key, cast=cast)

  def has_tensor(self, name: str) -> bool:
    return self.tensors is not None and name in self.tensors


def tidy(x: float) -> float:
  """Float32 metadata (1e-5 stored as 9.99999975e-06) back to its 7-digit decimal value."""
  return float(f"{float(x):.7g}")


def _token_ids(metadata: Mapping[str, Any]) -> dict[str, Any]:
  def tok(key):
    value = metadata.get(f"tokenizer.ggml.{key}")
    return None if value is None else int(value)
  eos = [t for t in (tok("eos_token_id"), tok("eot_token_id"), tok("eom_token_id")) if t is not None]
  return dict(bos_token_id=tok("bos_token_id"), eos_token_ids=tuple(dict.fromkeys(eos)),
              pad_token_id=tok("padding_token_id"))


def _rope_scaling(meta: Meta, theta: float, head_dim: int,
                  rope_freqs: np.ndarray | None) -> RopeScaling | None:
  kind = meta.get("{arch}.rope.scaling.type")
  if kind not in (None, "none"):
    if kind != "linear":
      raise InputError(f"{meta.path}: RoPE scaling type {kind!r} is not supported (only linear and"
                       " llama3); use a model without it.")
    return RopeScaling("linear", meta.num("{arch}.rope.scaling.factor", cast=float))
  if rope_freqs is None:
    return None
  orig = meta.num("{arch}.rope.scaling.original_context_length", 8192)
  return llama3_scaling_from_freqs(np.asarray(rope_freqs, np.float64), theta, head_dim, orig, meta.path)


def llama3_factors(scaling: RopeScaling, theta: float, head_dim: int) -> np.ndarray:
  """Per-frequency divisors of Llama 3.1 RoPE, float64 ``[head_dim // 2]``."""
  inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * math.pi / inv_freq
  lo, hi, f = scaling.low_freq_factor, scaling.high_freq_factor, scaling.factor
  smooth = (scaling.original_max_position / wavelen - lo) / (hi - lo)
  mid = 1 / ((1 - smooth) / f + smooth)
  out = np.where(wavelen > scaling.original_max_position / lo, f, mid)
  return np.where(wavelen < scaling.original_max_position / hi, 1.0, out)


def llama3_scaling_from_freqs(freqs: np.ndarray, theta: float, head_dim: int, orig: int,
                              path: str = "<file>") -> RopeScaling | None:
  """Recovers ``RopeScaling("llama3", ...)`` from a ``rope_freqs`` tensor.

  Factors are 1 for short wavelengths, ``factor`` for long ones, and in between
  ``1 / ((1 - s) / factor + s)`` with ``s = orig / ((hi - lo) * wavelen) - lo / (hi - lo)``.
  Only ``orig / (hi - lo)`` and ``lo / (hi - lo)`` are identifiable, so ``orig`` is taken
  from metadata (default 8192) and ``lo``, ``hi`` fitted; any consistent triple gives
  the same frequencies.

  Args:
    freqs: float ``[head_dim // 2]`` divisors from the file.
    theta: RoPE base; head_dim: rotary width; orig: original context length.
    path: file name for error messages.

  Returns:
    The scaling, or None when every factor is 1.
  """
  if freqs.shape != (head_dim // 2,):
    raise InputError(f"{path}: tensor 'rope_freqs.weight' has shape {freqs.shape}, expected"
                     f" {(head_dim // 2,)}.")
  factor = float(freqs.max())
  if np.allclose(freqs, 1.0, rtol=0, atol=1e-6):
    return None
  inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * math.pi / inv_freq
  mid = (freqs > 1 + 1e-6) & (freqs < factor * (1 - 1e-6))
  candidates = [RopeScaling("llama3", tidy(factor), 1.0, 4.0, orig)]
  if mid.sum() >= 2:
    s = (1 / freqs[mid] - 1 / factor) / (1 - 1 / factor)
    a, b = np.polyfit(1 / wavelen[mid], s, 1)
    span = orig / a
    candidates.append(RopeScaling("llama3", tidy(factor), tidy(-b * span), tidy(-b * span + span), orig))
  for cand in candidates:
    if np.allclose(llama3_factors(cand, theta, head_dim), freqs, rtol=1e-4, atol=1e-6):
      return cand
  raise InputError(f"{path}: tensor 'rope_freqs.weight' does not match Llama 3 RoPE scaling;"
                   " this kind of RoPE scaling is not supported.")


def base_fields(meta: Meta, rope_freqs: np.ndarray | None, eps_default: float = 1e-5) -> dict[str, Any]:
  """ModelConfig fields every architecture stores the same way (sizes, RoPE, epsilon, tokens)."""
  d_model = meta.num("{arch}.embedding_length")
  n_heads = meta.num("{arch}.attention.head_count")
  head_dim = meta.num("{arch}.attention.key_length", d_model // n_heads)
  value_dim = meta.num("{arch}.attention.value_length", head_dim)
  if value_dim != head_dim:
    raise InputError(f"{meta.path}: key width {head_dim} differs from value width {value_dim},"
                     " which jaxsem does not support.")
  rope_dim = meta.num("{arch}.rope.dimension_count", head_dim)
  if rope_dim != head_dim:
    raise InputError(f"{meta.path}: RoPE covers {rope_dim} of {head_dim} head dimensions; partial"
                     " rotary embeddings are not supported.")
  if meta.has_tensor("token_embd.weight"):
    vocab = meta.tensors["token_embd.weight"].shape[0]
  else:
    tokens = meta.m.get("tokenizer.ggml.tokens")
    vocab = meta.num("{arch}.vocab_size", None if tokens is None else len(tokens))
  theta = tidy(meta.num("{arch}.rope.freq_base", 10000.0, float))
  return dict(
      vocab_size=int(vocab), d_model=d_model, n_layers=meta.num("{arch}.block_count"),
      n_heads=n_heads, n_kv_heads=meta.num("{arch}.attention.head_count_kv", n_heads),
      head_dim=head_dim, d_ff=meta.num("{arch}.feed_forward_length"),
      max_position=meta.num("{arch}.context_length", 8192),
      tie_embeddings=meta.tensors is None or "output.weight" not in meta.tensors,
      norm_eps=tidy(meta.num("{arch}.attention.layer_norm_rms_epsilon", eps_default, float)),
      rope_theta=theta, rope_scaling=_rope_scaling(meta, theta, head_dim, rope_freqs),
      **_token_ids(meta.m))
