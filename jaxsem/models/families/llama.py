"""Llama 2/3.x, SmolLM and Mistral: the plain llama-like block.

Hugging Face ``llama`` / ``mistral`` (sliding window on every layer when set); GGUF
``llama`` (Mistral converts to it too, its window as ``llama.attention.sliding_window``),
whose converter interleaves Q/K rows for RoPE (undone by the loader) and may carry Q/K/V
biases.
"""

from __future__ import annotations

from jaxsem.models.families import gguf_config
from jaxsem.models.families import hf_config
from jaxsem.models.families.family import Family


def _from_hf(c: dict, path: str) -> dict:
  fields = hf_config.base_fields(c, c, path)
  hf_config.silu_only(c, path)
  default = (c.get("sliding_window") is not None,) * fields["n_layers"]
  fields.update(hf_config.windows(c, fields, default, path))
  return dict(family="llama", tie_embeddings=bool(c.get("tie_word_embeddings", False)), **fields)


def _from_gguf(meta: gguf_config.Meta, rope_freqs) -> dict:
  fields = gguf_config.base_fields(meta, rope_freqs)
  # A Mistral converted with its sliding window states it as llama.attention.sliding_window: every layer.
  window = meta.optional("{arch}.attention.sliding_window", int)
  return dict(family="llama", qkv_bias=meta.has_tensor("blk.0.attn_q.bias"), sliding_window=window,
              local_layers=(True,) * fields["n_layers"] if window else (), **fields)


FAMILY = Family(name="llama", hf_model_types=("llama", "mistral"), gguf_architectures=("llama",),
                config_from_hf=_from_hf, config_from_gguf=_from_gguf, gguf_permuted=True)
