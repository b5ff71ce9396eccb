"""Gemma 3 (text): GeGLU, q/k norms, post-norms, local and global layers.

Hugging Face ``gemma3_text`` and the text half of ``gemma3`` (multimodal; vision weights
are ignored). Gemma norms are stored as ``w`` and applied as ``x * (1 + w)``: the ``+1``
is folded in on load. GGUF ``gemma3`` already stores ``1 + w``, and its Q/K rows are not
permuted.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from jaxsem.errors import InputError
from jaxsem.models.families import gguf_config
from jaxsem.models.families import hf_config
from jaxsem.models.families.family import Family

LOCAL_ROPE_THETA = 10000.0
SLIDING_PERIOD = 6


def _from_hf(outer: dict, path: str) -> dict:
  c = outer
  if outer.get("model_type") == "gemma3":
    c = outer.get("text_config") or {}
    if not isinstance(c, dict):
      raise InputError(f"{path}: gemma3 config has no 'text_config' object; re-download the config.")
  fields = hf_config.base_fields(c, outer, path, gemma=True)
  sliding = fields.pop("_sliding_rope")
  n_layers, d_model = fields["n_layers"], fields["d_model"]
  act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
  if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
    raise InputError(f"{path}: Gemma 3 activation {act!r} is not supported; expected gelu_pytorch_tanh.")
  pattern = hf_config.whole(c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6,
                            "sliding_window_pattern", path)
  default = tuple(bool((i + 1) % pattern) for i in range(n_layers))
  local_theta, local_scaling = hf_config.rope(sliding, c, path)
  if local_scaling is not None:
    raise InputError(f"{path}: RoPE scaling on sliding-window layers is not supported.")
  window = c.get("sliding_window", 4096)
  tie = c.get("tie_word_embeddings", outer.get("tie_word_embeddings", True))
  if c.get("attn_logit_softcapping") is not None:
    warnings.warn(f"{path}: attn_logit_softcapping is ignored, as the transformers Gemma 3 reference "
                  "ignores it (Gemma 3 uses q/k norms instead).", stacklevel=3)
  return dict(
      family="gemma3", activation="gelu_tanh", qk_norm=True, post_norms=True,
      embed_scale=math.sqrt(d_model), query_scale=float(c.get("query_pre_attn_scalar") or 256) ** -0.5,
      final_softcap=c.get("final_logit_softcapping"), rope_local_theta=local_theta,
      sliding_window=None if window is None else hf_config.whole(window, "sliding_window", path),
      local_layers=hf_config.local_layers(c, n_layers, default, path), tie_embeddings=bool(tie), **fields)


def _local_layers(meta: gguf_config.Meta, n_layers: int) -> tuple[bool, ...]:
  pattern = meta.m.get(f"{meta.arch}.attention.sliding_window_pattern", SLIDING_PERIOD)
  if isinstance(pattern, (np.ndarray, list, tuple)):
    if len(pattern) != n_layers:
      raise InputError(f"{meta.path}: sliding_window_pattern has {len(pattern)} entries for"
                       f" {n_layers} layers; the file is corrupt.")
    return tuple(bool(x) for x in pattern)
  period = int(pattern)
  # As llama.cpp reads it: period p makes every p-th layer global; 0 makes all local.
  return tuple(period == 0 or i % period < period - 1 for i in range(n_layers))


def _from_gguf(meta: gguf_config.Meta, rope_freqs) -> dict:
  fields = gguf_config.base_fields(meta, rope_freqs, 1e-6)
  d, n_layers = fields["d_model"], fields["n_layers"]
  window = meta.optional("{arch}.attention.sliding_window", int)
  # Gemma 3 27B scales queries by (d_model / n_heads) ** -0.5, the others by head_dim ** -0.5.
  is_27b = n_layers == 62 and d == 5376
  return dict(
      family="gemma3", activation="gelu_tanh", qk_norm=True, post_norms=True,
      rope_local_theta=gguf_config.tidy(meta.num("{arch}.rope.freq_base_swa", LOCAL_ROPE_THETA, float)),
      sliding_window=window, local_layers=_local_layers(meta, n_layers) if window else (),
      embed_scale=math.sqrt(d),
      query_scale=(d / fields["n_heads"]) ** -0.5 if is_27b else fields["head_dim"] ** -0.5,
      attn_softcap=meta.optional("{arch}.attn_logit_softcapping"),
      final_softcap=meta.optional("{arch}.final_logit_softcapping"), **fields)


FAMILY = Family(
    name="gemma3", hf_model_types=("gemma3_text", "gemma3"), gguf_architectures=("gemma3",),
    config_from_hf=_from_hf, config_from_gguf=_from_gguf, hf_norm_offset=1.0,
    hf_names={"blocks/mlp_norm": "pre_feedforward_layernorm.weight"})
