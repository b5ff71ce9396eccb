"""Qwen 2 / 2.5: the llama-like block with Q/K/V biases.

Hugging Face ``qwen2`` (sliding windows from ``max_window_layers`` on when
``use_sliding_window``); GGUF ``qwen2`` (rows in rotate-half order, not permuted).
"""

from __future__ import annotations

from jaxsem.models.families import gguf_config
from jaxsem.models.families import hf_config
from jaxsem.models.families.family import Family


def _from_hf(c: dict, path: str) -> dict:
  fields = hf_config.base_fields(c, c, path)
  hf_config.silu_only(c, path)
  fields.update(hf_config.qwen_windows(c, fields, path))
  return dict(family="qwen2", qkv_bias=True, tie_embeddings=bool(c.get("tie_word_embeddings", False)),
                     **fields)


def _from_gguf(meta: gguf_config.Meta, rope_freqs) -> dict:
  return dict(family="qwen2", qkv_bias=True, **gguf_config.base_fields(meta, rope_freqs, 1e-6))


FAMILY = Family(name="qwen2", hf_model_types=("qwen2",), gguf_architectures=("qwen2",),
                config_from_hf=_from_hf, config_from_gguf=_from_gguf)
