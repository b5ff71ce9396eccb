"""Tiny Hugging Face snapshot directories written with numpy alone (no torch, no transformers).

For tests of the loader's plumbing and its errors: missing files, bad tensors, vocabulary and
context checks. Tensor names and shapes come from ``jaxsem.models.hf_load.block_leaves``, so
these snapshots cannot catch a wrong layout; ``tests/io/test_hf_checkpoint.py`` checks the
layout against transformers itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import safetensors.numpy

from jaxsem.models import families
from jaxsem.models import hf_load

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
         "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
         "pad_token_id": 0}
QWEN2 = dict(LLAMA, model_type="qwen2", architectures=["Qwen2ForCausalLM"], tie_word_embeddings=True,
             rope_theta=1e6)


def state_dict(config_json: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
  """Random float32 tensors, HF name -> array, for the model ``config_json`` describes."""
  config = families.config_from_hf(config_json, "config.json")
  rng = np.random.default_rng(seed)
  shapes = {"model.embed_tokens.weight": (config.vocab_size, config.d_model),
            "model.norm.weight": (config.d_model,)}
  if not config.tie_embeddings:
    shapes["lm_head.weight"] = (config.vocab_size, config.d_model)
  for i in range(config.n_layers):
    for name, shape, _ in hf_load.block_leaves(config).values():
      shapes[f"model.layers.{i}.{name}"] = shape
  return {name: (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
          for name, shape in shapes.items()}


def write(directory: str | os.PathLike, config_json: dict[str, Any] = LLAMA, *, seed: int = 0,
          shards: int = 1) -> tuple[str, dict[str, np.ndarray]]:
  """Writes ``config.json`` and random safetensors weights into ``directory``.

  Args:
    directory: created if missing.
    config_json: the HF config (``LLAMA``, ``QWEN2`` or a variant of them).
    seed: of the random tensors.
    shards: more than 1 writes ``model-0000i-of-0000n.safetensors`` files and an index.

  Returns:
    ``(directory, state dict)``: the path as a string and the tensors written.
  """
  d = os.fspath(directory)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(config_json, f)
  sd = state_dict(config_json, seed)
  if shards == 1:
    safetensors.numpy.save_file(sd, os.path.join(d, "model.safetensors"))
    return d, sd
  names = sorted(sd)
  weight_map = {}
  for k in range(shards):
    file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: sd[n] for n in names[k::shards]}
    safetensors.numpy.save_file(part, os.path.join(d, file))
    weight_map.update(dict.fromkeys(part, file))
  with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return d, sd
