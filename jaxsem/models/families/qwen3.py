"""Qwen 3 (dense): the llama-like block with an RMSNorm on each query and key head.

The q/k norms act on every head before RoPE and hold the multiplier itself (no ``+1``
as in Gemma). ``attention_bias`` (biases on Q/K/V and the output) is not modelled.
Hugging Face ``qwen3``; GGUF ``qwen3`` (rows in rotate-half order, not permuted).
"""

from __future__ import annotations

from jaxsem.models.families import gguf_config
from jaxsem.models.families import hf_config
from jaxsem.models.families.family import Family


def _from_hf(c: dict, path: str) -> dict:
  fields = hf_config.base_fields(c, c, path)
  hf_config.silu_only(c, path)
  fields.update(hf_config.qwen_windows(c, fields, path))
  return dict(family="qwen3", qk_norm=True, tie_embeddings=bool(c.get("tie_word_embeddings", False)),
                     **fields)


def _from_gguf(meta: gguf_config.Meta, rope_freqs) -> dict:
  return dict(family="qwen3", qk_norm=True, **gguf_config.base_fields(meta, rope_freqs, 1e-6))


FAMILY = Family(name="qwen3", hf_model_types=("qwen3",), gguf_architectures=("qwen3",),
                config_from_hf=_from_hf, config_from_gguf=_from_gguf)
