"""Hugging Face snapshot directories: find config.json, tokenizer.json and the safetensors
weights, and read tensors one at a time from memory-mapped safetensors files (never pickle).

This module knows the file formats only; which tensors make which parameter, and how a
``config.json`` maps to a ``ModelConfig``, is the model families' business
(``jaxsem.models.families``, loaded by ``jaxsem.models.hf_load``).
"""

from __future__ import annotations

import os
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy so safetensors can return BF16)
import numpy as np
from safetensors import safe_open

from jaxsem.errors import InputError
from jaxsem.io import safe_json

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# ----------------------------------------------------------------------------- directory


def read_hf_dir(directory: str | os.PathLike) -> tuple[dict[str, Any], str | None, list[str]]:
  """Finds the pieces of a snapshot directory.

  Args:
    directory: a Hugging Face snapshot directory.

  Returns:
    ``(config_json, tokenizer_json_path or None, weight_files)``; the weight files are
    the shards named by ``model.safetensors.index.json``, or ``model.safetensors``, or
    every ``*.safetensors`` file in the directory.

  Raises:
    InputError: the directory, config.json or the safetensors weights are missing or
      unreadable, or the weights are only in a pickle format.
  """
  d = os.fspath(directory)
  if not os.path.isdir(d):
    raise InputError(f"{d}: not a directory; pass a Hugging Face snapshot directory with config.json "
                     "and *.safetensors files.")
  config_path = os.path.join(d, "config.json")
  if not os.path.isfile(config_path):
    raise InputError(f"{config_path}: no config.json in the directory; download the full snapshot.")
  config_json = _read_json(config_path)
  tokenizer = os.path.join(d, "tokenizer.json")
  return config_json, tokenizer if os.path.isfile(tokenizer) else None, _weight_files(d)


def _read_json(path: str) -> dict[str, Any]:
  """A JSON object side file, within ``safe_json``'s size and nesting limits."""
  return safe_json.read_object(path, fix="re-download the file")


def _weight_files(d: str) -> list[str]:
  index_path = os.path.join(d, "model.safetensors.index.json")
  if os.path.isfile(index_path):
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise InputError(f"{index_path}: has no 'weight_map'; re-download the file.")
    # A shard must be a file of this directory: no other JSON types, no paths out of it.
    bad = [v for v in weight_map.values()
           if not isinstance(v, str) or os.path.basename(v) != v or v in ("", ".", "..")]
    if bad:
      raise InputError(f"{index_path}: weight_map names the shard {bad[0]!r}, not a file name in the "
                       "snapshot directory; re-download the file.")
    files = [os.path.join(d, name) for name in sorted(set(weight_map.values()))]
    for f in files:
      if not os.path.isfile(f):
        raise InputError(f"{f}: shard listed in {index_path} is missing; download every shard.")
    return files
  single = os.path.join(d, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  names = sorted(os.listdir(d))
  found = [os.path.join(d, n) for n in names if n.endswith(".safetensors")]
  if found:
    return found
  pickles = [n for n in names if n.endswith(_PICKLE_SUFFIXES)]
  if pickles:
    raise InputError(f"{os.path.join(d, pickles[0])}: pickle checkpoints are not loaded; convert to "
                     "safetensors (or download the model's *.safetensors files).")
  raise InputError(f"{d}: no *.safetensors weights in the directory; download the model's "
                   "safetensors files.")


class Tensors:
  """Name -> tensor over a set of safetensors files.

  Every read opens its file afresh and closes it after: the safetensors library keeps the pages a
  read touched resident in its memory map until the file is closed, so an open file would hold every
  tensor read so far in this process's memory (a whole checkpoint by the end of a load).

  Attributes:
    where: tensor name -> file path.
  """

  def __init__(self, files: list[str]):
    self.where: dict[str, str] = {}
    for path in files:
      try:
        with safe_open(path, framework="numpy") as handle:
          names = handle.keys()
      except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise InputError(f"{path}: not a readable safetensors file ({e}); re-download it.") from None
      for name in names:
        self.where[name] = path

  def get(self, name: str, shape: tuple[int, ...],
          region: tuple[tuple[int, int], ...] | None = None) -> np.ndarray:
    """The tensor ``name``, which must have ``shape`` (InputError naming the file otherwise), or only
    its ``region`` (``(start, stop)`` per leading axis; a sliced read: the rest is not read)."""
    path = self.where[name]
    try:
      with safe_open(path, framework="numpy") as handle:
        part = handle.get_slice(name)
        found = tuple(part.get_shape())
        if found == shape:
          return handle.get_tensor(name) if region is None else part[tuple(slice(a, b) for a, b in region)]
    except Exception as e:
      raise InputError(f"{path}: tensor {name} cannot be read ({e}); re-download the file.") from None
    raise InputError(f"{path}: tensor {name} has shape {list(found)} but config.json implies "
                     f"{list(shape)}; the weights and config.json do not match.")
