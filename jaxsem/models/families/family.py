"""``Family``: what one model family file declares."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from jaxsem.models.families import leaf_table as leaves_lib


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family: how its files map to a ModelConfig, and its parameter leaves.

  Attributes:
    name: the ``ModelConfig.family`` value.
    hf_model_types: ``config.json`` ``model_type`` values it reads.
    gguf_architectures: GGUF ``general.architecture`` values it reads.
    config_from_hf: ``(config_json, path) -> ModelConfig fields`` (a dict); may raise InputError.
    config_from_gguf: ``(meta, rope_freqs) -> ModelConfig fields`` (a dict) with
      ``meta`` a ``gguf_config.Meta``; may raise InputError.
    hf_norm_offset: added to Hugging Face norm weights (Gemma stores ``w`` for ``1 + w``).
    gguf_permuted: its GGUF files store Q/K rows in interleaved-RoPE order (llama.cpp's
      ``llama`` converter); other converters keep the rotate-half order.
    hf_names: params path -> Hugging Face tensor name where it differs from the table.
  """

  name: str
  hf_model_types: tuple[str, ...]
  gguf_architectures: tuple[str, ...]
  config_from_hf: Callable[[dict[str, Any], str], dict[str, Any]]
  config_from_gguf: Callable[[Any, np.ndarray | None], dict[str, Any]]
  hf_norm_offset: float = 0.0
  gguf_permuted: bool = False
  hf_names: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def leaves(self, config) -> tuple[leaves_lib.Leaf, ...]:
    """The leaf table rows of ``config``, with this family's names and conventions."""
    return leaves_lib.select(config, hf_norm_offset=self.hf_norm_offset, gguf_permuted=self.gguf_permuted,
                             hf_names=dict(self.hf_names))
