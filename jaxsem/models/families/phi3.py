"""Phi-3 (the 4k-context mini and medium models): the llama-like block with fused projections.

The checkpoints store each layer's query, key and value projections as one ``qkv_proj``
tensor (rows ``[q; k; v]``) and the gate and up projections as one ``gate_up_proj``
(rows ``[gate; up]``); the leaves read their row ranges of them (``leaf_table.fuse``).
``sliding_window``, when set, applies to every layer, as in transformers' ``Phi3Model``.
LongRoPE (``rope_scaling`` of type ``longrope``/``su``, the 128k-context models) and
partial rotary embeddings are refused.

Hugging Face ``phi3``; GGUF ``phi3`` (``attn_qkv`` and ``ffn_up`` fused the same way,
rows in rotate-half order, not permuted).
"""

from __future__ import annotations

from jaxsem.errors import InputError
from jaxsem.models.families import gguf_config
from jaxsem.models.families import hf_config
from jaxsem.models.families import leaf_table
from jaxsem.models.families.family import Family

QKV = ("blocks/q", "blocks/k", "blocks/v")
GATE_UP = ("blocks/gate", "blocks/up")
_LONGROPE = ("longrope", "su", "yarn")  # transformers reads "su" and "yarn" as longrope for Phi-3


def _refuse_longrope(c: dict, path: str) -> None:
  for r in (c.get("rope_scaling"), c.get("rope_parameters")):
    kind = r.get("rope_type", r.get("type")) if isinstance(r, dict) else None
    if kind in _LONGROPE:
      raise InputError(f"{path}: Phi-3 rope_scaling of type {kind!r} (LongRoPE, the 128k-context models) is "
                       "not supported; use a model without rope_scaling (e.g. a 4k-context one).")


def _from_hf(c: dict, path: str) -> dict:
  _refuse_longrope(c, path)
  fields = hf_config.base_fields(c, c, path)
  hf_config.silu_only(c, path)
  if c.get("rms_norm_eps") is None:
    fields["norm_eps"] = 1e-5  # Phi3Config's default
  if c.get("max_position_embeddings") is None:
    fields["max_position"] = 4096
  default = (c.get("sliding_window") is not None,) * fields["n_layers"]
  fields.update(hf_config.windows(c, fields, default, path))
  return dict(family="phi3", tie_embeddings=bool(c.get("tie_word_embeddings", False)), **fields)


def _from_gguf(meta: gguf_config.Meta, rope_freqs) -> dict:
  if meta.has_tensor("rope_factors_long.weight") or meta.has_tensor("rope_factors_short.weight"):
    raise InputError(f"{meta.path}: Phi-3 LongRoPE scaling (rope_factors_long/short tensors, the "
                     "128k-context models) is not supported; use a model without it.")
  fields = gguf_config.base_fields(meta, rope_freqs, 1e-5)
  window = meta.optional("{arch}.attention.sliding_window", int)
  return dict(family="phi3", sliding_window=window, local_layers=(window is not None,) * fields["n_layers"],
              **fields)


class _Phi3(Family):
  """The family whose Q/K/V and gate/up leaves come from fused tensors."""

  def leaves(self, config) -> tuple[leaf_table.Leaf, ...]:
    table = super().leaves(config)
    table = leaf_table.fuse(table, QKV, hf="self_attn.qkv_proj.weight", gguf="attn_qkv.weight")
    return leaf_table.fuse(table, GATE_UP, hf="mlp.gate_up_proj.weight", gguf="ffn_up.weight")


FAMILY = _Phi3(name="phi3", hf_model_types=("phi3",), gguf_architectures=("phi3",),
               config_from_hf=_from_hf, config_from_gguf=_from_gguf)
