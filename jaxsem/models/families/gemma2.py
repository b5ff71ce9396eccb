"""Gemma 2: GeGLU, post-norms, logit soft-capping, sliding windows on alternate layers.

Beside Gemma 3 it has no q/k norms, one RoPE base for every layer, and tanh soft-caps
on the attention scores (after the ``query_pre_attn_scalar ** -0.5`` scale, before the
mask) and on the output logits. Layer ``i`` attends through the sliding window when
``i`` is even (transformers' default ``layer_types``; llama.cpp's swa pattern 2).
Hugging Face ``gemma2`` stores norms as ``w`` for ``x * (1 + w)``: the ``+1`` is folded
in on load. GGUF ``gemma2`` already stores ``1 + w`` and keeps Q/K rows in rotate-half
order; it has no query scale, so llama.cpp's rule is used (``head_dim ** -0.5``, or
``(d_model / n_heads) ** -0.5`` for the 27B model).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from jaxsem.errors import InputError
from jaxsem.models.families import gguf_config
from jaxsem.models.families import hf_config
from jaxsem.models.families.family import Family

# transformers' Gemma2Config defaults, for keys a config.json leaves out.
_HF_DEFAULTS = {"vocab_size": 256_000, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                "max_position_embeddings": 8192, "query_pre_attn_scalar": 256, "sliding_window": 4096,
                "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}


def _positive(value: Any, key: str, path: str) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
    raise InputError(f"{path}: config.json sets {key} to {value!r}, which is not a positive number; "
                     "fix config.json.")
  return float(value)


def _cap(c: dict, key: str, path: str) -> float | None:
  """A soft-cap: absent means transformers' default, null means off."""
  value = c.get(key, _HF_DEFAULTS[key])
  return None if value is None else _positive(value, key, path)


def alternating_local_layers(n_layers: int) -> tuple[bool, ...]:
  """Gemma 2's pattern: even layers use the sliding window, odd layers attend globally."""
  return tuple(i % 2 == 0 for i in range(n_layers))


def _from_hf(c: dict, path: str) -> dict:
  filled = dict(c)
  for key in ("vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "max_position_embeddings"):
    if filled.get(key) is None:
      filled[key] = _HF_DEFAULTS[key]
  window = c.get("sliding_window", _HF_DEFAULTS["sliding_window"])
  if window is None:  # no window: every layer is global, whatever layer_types says
    filled["layer_types"] = None
  fields = hf_config.base_fields(filled, filled, path)
  n_layers, d_model = fields["n_layers"], fields["d_model"]
  act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
  if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
    raise InputError(f"{path}: Gemma 2 activation {act!r} is not supported; expected gelu_pytorch_tanh.")
  default = alternating_local_layers(n_layers) if window is not None else (False,) * n_layers
  filled["sliding_window"] = window
  fields.update(hf_config.windows(filled, fields, default, path))
  scalar = c.get("query_pre_attn_scalar")
  scalar = _HF_DEFAULTS["query_pre_attn_scalar"] if scalar is None else scalar
  return dict(
      family="gemma2", activation="gelu_tanh", post_norms=True, embed_scale=math.sqrt(d_model),
      query_scale=_positive(scalar, "query_pre_attn_scalar", path) ** -0.5,
      attn_softcap=_cap(c, "attn_logit_softcapping", path),
      final_softcap=_cap(c, "final_logit_softcapping", path),
      tie_embeddings=bool(c.get("tie_word_embeddings", True)), **fields)


def _from_gguf(meta: gguf_config.Meta, rope_freqs) -> dict:
  fields = gguf_config.base_fields(meta, rope_freqs, 1e-6)
  d, n_layers = fields["d_model"], fields["n_layers"]
  window = meta.optional("{arch}.attention.sliding_window", int)
  is_27b = n_layers == 46 and d == 4608  # llama.cpp's LLM_TYPE_27B query scale
  return dict(
      family="gemma2", activation="gelu_tanh", post_norms=True, embed_scale=math.sqrt(d),
      sliding_window=window, local_layers=alternating_local_layers(n_layers) if window else (),
      query_scale=(d / fields["n_heads"]) ** -0.5 if is_27b else fields["head_dim"] ** -0.5,
      attn_softcap=meta.optional("{arch}.attn_logit_softcapping"),
      final_softcap=meta.optional("{arch}.final_logit_softcapping"), **fields)


FAMILY = Family(
    name="gemma2", hf_model_types=("gemma2",), gguf_architectures=("gemma2",),
    config_from_hf=_from_hf, config_from_gguf=_from_gguf, hf_norm_offset=1.0,
    hf_names={"blocks/mlp_norm": "pre_feedforward_layernorm.weight"})
