"""OLMo 2: a llama-like block that norms the outputs of attention and the MLP, not their inputs.

Each block feeds the raw residual to attention and to the MLP and applies an RMSNorm to each
branch's output before the residual add (``post_attention_layernorm``,
``post_feedforward_layernorm``); there is no pre-norm. The query and key RMSNorms span the
whole projection (``n_heads * head_dim`` and ``n_kv_heads * head_dim`` wide, all heads
together) and act before RoPE. SwiGLU MLP, untied embeddings by default, norms store the
multiplier itself (no ``+1``). ``attention_bias`` is refused; OLMo 3's sliding windows
(``model_type`` ``olmo3``) are another family, not this one.

Hugging Face ``olmo2``; GGUF ``olmo2`` (llama.cpp's names, rows in rotate-half order).
"""

from __future__ import annotations

from jaxsem.models.families import gguf_config
from jaxsem.models.families import hf_config
from jaxsem.models.families.family import Family

# The block's norms: the OLMo 2 switches of ModelConfig.
_BLOCK = dict(pre_norms=False, post_norms=True, qk_norm=True, qk_norm_scope="projection")


def _from_hf(c: dict, path: str) -> dict:
  fields = hf_config.base_fields(c, c, path)
  hf_config.silu_only(c, path)
  fields.pop("_sliding_rope")
  if c.get("rms_norm_eps") is None:
    fields["norm_eps"] = 1e-5  # Olmo2Config's default
  if c.get("max_position_embeddings") is None:
    fields["max_position"] = 2048
  return dict(family="olmo2", tie_embeddings=bool(c.get("tie_word_embeddings", False)), **_BLOCK, **fields)


def _from_gguf(meta: gguf_config.Meta, rope_freqs) -> dict:
  return dict(family="olmo2", **_BLOCK, **gguf_config.base_fields(meta, rope_freqs, 1e-5))


FAMILY = Family(name="olmo2", hf_model_types=("olmo2",), gguf_architectures=("olmo2",),
                config_from_hf=_from_hf, config_from_gguf=_from_gguf)
