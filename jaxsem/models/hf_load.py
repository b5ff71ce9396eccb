"""Hugging Face snapshot directory -> (ModelConfig, params), by the families' leaf table.

Weights are read one tensor (or, for the embedding and output head, one row range) at a time
(``jaxsem.io.hf_checkpoint``), converted to the layout documented in ``jaxsem.models.config`` by
each leaf's converter, copied into the blocks of the leaf this process holds (``leaf_blocks``),
and placed as soon as the leaf is complete. Stacked leaves are named
``{prefix}layers.{i}.{leaf.hf}``, the others ``{prefix}{leaf.hf}``; the output head is ``lm_head.weight``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxsem.errors import InputError
from jaxsem.io import hf_checkpoint
from jaxsem.models import families
from jaxsem.models import leaf_blocks
from jaxsem.models.config import ModelConfig
from jaxsem.models.families import leaf_table as leaves_lib
from jaxsem.sharding import Placer


# Prefixes of the text model inside a checkpoint, tried in order.
_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "")
_LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")


def config_from_hf(config_json: dict[str, Any], path: str) -> ModelConfig:
  """See ``jaxsem.models.families.config_from_hf``."""
  return families.config_from_hf(config_json, path)


def block_leaves(config: ModelConfig) -> dict[str, tuple[str, tuple[int, ...], Callable]]:
  """Leaf path -> (HF name under ``layers.{i}.``, HF shape, converter to one layer's slot).

  A fused leaf's name and shape are those of the whole fused tensor; its converter takes its rows.
  """
  out = {}
  for leaf in families.leaves(config):
    if leaf.stacked:
      slot = leaf.slot_shape(config)
      out[leaf.path] = (leaf.hf, leaf.tensor_shape(config), lambda w, leaf=leaf, slot=slot: (
          leaves_lib.convert(leaf, leaves_lib.split(leaf, w, config), slot, offset=leaf.hf_offset)))
  return out


def _prefix(tensors: hf_checkpoint.Tensors, directory: str) -> str:
  for p in _PREFIXES:
    if f"{p}embed_tokens.weight" in tensors.where:
      return p
  raise InputError(f"{directory}: no embed_tokens.weight tensor in the safetensors files; this is not "
                   "a supported Hugging Face causal LM checkpoint.")


def load_hf_params(directory: str | os.PathLike, config: ModelConfig, *, dtype: Any = np.float32,
                   placer: Placer | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """Reads the weights of a snapshot directory into the jaxsem params layout.

  Leaves are read block by block (``leaf_blocks``): a stacked leaf one layer tensor at a time,
  the embedding and output head by sliced reads of the rows this process's devices hold.

  Args:
    directory: the snapshot directory (see ``hf_checkpoint.read_hf_dir``).
    config: its ModelConfig (``config_from_hf``).
    dtype: numpy dtype of the leaves without a ``placer`` (``np.float32``, ``ml_dtypes.bfloat16`` ...).
    placer: ``sharding.Placer`` (its mesh and dtype); default: whole numpy leaves on the host.
    progress: ``progress(params_done, params_total)`` after each tensor or row range read.

  Returns:
    The nested params dict (``{"embed": ..., "blocks": {"q": ...}}``).

  Raises:
    InputError: a missing, unreadable or wrongly shaped tensor, naming the file.
  """
  d = os.fspath(directory)
  placer = placer or Placer(None, dtype, host=True)

  tensors = hf_checkpoint.Tensors(hf_checkpoint.read_hf_dir(d)[2])
  prefix = _prefix(tensors, d)
  used = {"lm_head.weight"}

  def need(name: str) -> str:
    used.add(name)
    if name not in tensors.where:
      raise InputError(f"{d}: tensor {name} is missing from the safetensors files; the weights and "
                       "config.json do not match.")
    return name

  def name_of(leaf: leaves_lib.Leaf, i: int | None) -> str:
    if leaf.path == "unembed":
      return need(next((n for n in _LM_HEADS if n in tensors.where), _LM_HEADS[0]))
    return need(f"{prefix}{leaf.hf}" if i is None else f"{prefix}layers.{i}.{leaf.hf}")

  # Every tensor is checked to exist before any is read, so a missing one fails at once.
  for leaf in families.leaves(config):
    for i in (range(config.n_layers) if leaf.stacked else [None]):
      name_of(leaf, i)

  def read_rows(leaf: leaves_lib.Leaf, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    shape = leaf.tensor_shape(config)
    if leaf.convert != "plain" or len(shape) < 2:
      w = tensors.get(name_of(leaf, None), shape)
      rows = leaves_lib.convert(leaf, w, leaf.slot_shape(config), offset=leaf.hf_offset)[start:stop]
    else:
      rows = leaves_lib.convert(leaf, tensors.get(name_of(leaf, None), shape, region=((start, stop),)),
                                (stop - start, *shape[1:]), offset=leaf.hf_offset)
    if out is None:
      return rows
    out[...] = rows
    return out

  read_layer = leaf_blocks.layer_reader(
      config, lambda leaf, i, region: tensors.get(name_of(leaf, i), leaf.tensor_shape(config), region=region),
      lambda leaf, i: tensors.get(name_of(leaf, i), leaf.tensor_shape(config)),
      lambda leaf: {"offset": leaf.hf_offset})
  params = leaf_blocks.load_leaves(config, placer, read_layer, read_rows, progress=progress)
  unused = sorted(n for n in tensors.where
                  if n.startswith(prefix) and n not in used and "rotary_emb" not in n)
  if unused:
    warnings.warn(f"{d}: {len(unused)} tensors were not used (e.g. {', '.join(unused[:3])}); the "
                  "architecture may have features jaxsem does not model.", stacklevel=2)
  return params


def hf_provenance(config_json: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
  """What was loaded and how, as a JSON-friendly dict."""
  text = config_json.get("text_config") if config_json.get("model_type") == "gemma3" else config_json
  text = text or {}
  return {
      "model_type": config_json.get("model_type"),
      "architectures": config_json.get("architectures"),
      "checkpoint_dtype": text.get("dtype", text.get("torch_dtype", config_json.get("torch_dtype"))),
      "transformers_version": config_json.get("transformers_version"),
      "embed_tensor": "embed_tokens.weight",
      "unembed_tensor": "embed_tokens.weight" if config.tie_embeddings else "lm_head.weight",
      "tied": config.tie_embeddings,
      "norm_plus_one_folded": families.get(config.family).hf_norm_offset != 0.0,
  }


def load_hf(directory: str | os.PathLike, *, dtype: Any = np.float32,
            placer: Placer | None = None) -> tuple[ModelConfig, dict[str, Any], str | None]:
  """``(config, params, tokenizer_json_path or None)`` of a snapshot directory."""
  config_json, tokenizer, _ = hf_checkpoint.read_hf_dir(directory)
  config = families.config_from_hf(config_json, os.path.join(os.fspath(directory), "config.json"))
  return config, load_hf_params(directory, config, dtype=dtype, placer=placer), tokenizer
