"""GGUF file -> (ModelConfig, params), by the families' leaf table.

What llama.cpp's converters do to a Hugging Face checkpoint, and how it is undone:

* Tensors are stored as ``[out_features, in_features]`` (numpy order); the params
  layout of :mod:`jaxsem.models.config` is ``[in, ...out]``, so leaves are transposed.
* ``llama``: Q and K rows (and biases) of every head are permuted from rotate-half to
  interleaved RoPE order: file row ``2j + p`` of a head is Hugging Face row
  ``p * Dh/2 + j``. The permutation is inverted here (``Family.gguf_permuted``); the
  ``gemma2``, ``gemma3``, ``olmo2``, ``qwen2`` and ``qwen3`` converters keep rotate-half order.
* ``phi3``: ``attn_qkv`` holds the ``[q; k; v]`` rows and ``ffn_up`` the ``[gate; up]`` rows;
  each leaf takes its rows (``Leaf.fused``).
* ``gemma2``, ``gemma3``: every ``*norm.weight`` is stored as ``1 + w`` (llama.cpp multiplies by the
  stored value directly), which is already the multiplier the params hold.
"""

from __future__ import annotations

import collections
import os
import warnings
from typing import Any, Callable

import numpy as np

from jaxsem.errors import InputError
from jaxsem.io.dequant import dequantize, row_layout, type_name
from jaxsem.io.gguf_file import GGUFFile
from jaxsem.models import families
from jaxsem.models import leaf_blocks
from jaxsem.models.config import ModelConfig
from jaxsem.models.families import leaf_table as leaves_lib
from jaxsem.sharding import Placer

config_from_gguf = families.config_from_gguf
SUPPORTED_ARCHITECTURES = families.SUPPORTED_ARCHITECTURES


def read_config(f: GGUFFile) -> ModelConfig:
  """The ModelConfig of an open GGUF file (metadata, tensor index and ``rope_freqs``)."""
  freqs = None
  info = f.tensors.get("rope_freqs.weight")
  if info is not None:
    freqs = dequantize(f.raw(info.name), info.ggml_type, info.shape, name=info.name, path=f.path)
  return families.config_from_gguf(f.metadata, f.path, f.tensors, freqs)


def gguf_name(leaf: leaves_lib.Leaf, layer: int | None = None) -> str:
  """The GGUF tensor name of ``leaf`` (of ``layer`` for stacked leaves)."""
  return leaf.gguf if layer is None else f"blk.{layer}.{leaf.gguf}"


def _expected(config: ModelConfig) -> dict[str, tuple]:
  """Every tensor the params need: GGUF name -> file shape."""
  want = {}
  for leaf in families.leaves(config):
    layers = range(config.n_layers) if leaf.stacked else [None]
    for i in layers:
      want[gguf_name(leaf, i)] = leaf.tensor_shape(config)  # a fused leaf's: the whole tensor
  return want


def check_tensors(f: GGUFFile, config: ModelConfig) -> None:
  """Raises InputError if the file's tensors do not fit the config.

  A needed tensor missing or of the wrong shape, an ``output.weight`` the config would
  ignore, or a ``rope_freqs.weight`` scaling the config lacks, all mean the config was
  not built from this file (use :func:`read_config`).
  """
  if config.tie_embeddings and "output.weight" in f.tensors:
    raise InputError(f"{f.path}: has a separate output head 'output.weight' but the config ties"
                     " embeddings; build the config with read_config(file).")
  info = f.tensors.get("rope_freqs.weight")
  if info is not None and config.rope_scaling is None:
    freqs = dequantize(f.raw(info.name), info.ggml_type, info.shape, name=info.name, path=f.path)
    if not np.allclose(freqs, 1.0, rtol=0, atol=1e-6):
      raise InputError(f"{f.path}: tensor 'rope_freqs.weight' scales RoPE but the config has no"
                       " rope_scaling; build the config with read_config(file).")
  arch = f.metadata.get("general.architecture")
  if arch not in families.get(config.family).gguf_architectures:
    raise InputError(f"{f.path}: architecture {arch!r} is not a {config.family} file; build the config"
                     " with read_config(file).")
  for name, shape in _expected(config).items():
    info = f.tensors.get(name)
    if info is None:
      raise InputError(f"{f.path}: tensor {name!r} is missing; the file is not a complete"
                       f" {config.family} model for this config.")
    if tuple(info.shape) != tuple(shape):
      raise InputError(f"{f.path}: tensor {name!r} has shape {tuple(info.shape)} but the config"
                       f" needs {tuple(shape)}; the metadata and weights disagree.")


def load_gguf_params(f: GGUFFile, config: ModelConfig, *, dtype: Any = np.float32,
                     placer: Placer | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """Dequantizes a GGUF file into the params pytree of :mod:`jaxsem.models.config`.

  Leaves are read block by block (``leaf_blocks``): a stacked leaf one layer tensor at a time,
  the embedding and output head by the rows this process's devices hold (GGUF rows are whole
  quantization blocks, so a row range never splits a block). Each leaf is handed to the placer
  as soon as it is complete, so host memory peaks near one leaf's shards.

  Args:
    f: open GGUF file.
    config: its config (usually ``read_config(f)``).
    dtype: numpy dtype of the leaves without a ``placer`` (float32, float16 or ml_dtypes.bfloat16).
    placer: ``sharding.Placer`` (its mesh and dtype); default: whole numpy leaves on the host.
    progress: ``progress(params_done, params_total)`` after each tensor or row range read.

  Returns:
    ``{"embed", "final_norm", ["unembed"], "blocks": {...}}`` of placed leaves.

  Raises:
    InputError: missing tensor, shape mismatch, unsupported quantization type.
  """
  placer = placer or Placer(None, dtype, host=True)
  check_tensors(f, config)

  def read(name: str) -> np.ndarray:
    info = f.tensors[name]
    array = dequantize(f.raw(name), info.ggml_type, info.shape, name=name, path=f.path)
    f.release(name)
    return array

  warned: set[str] = set()

  def read_region(name: str, region: tuple[tuple[int, int], ...]) -> np.ndarray | None:
    """Rows ``region[0]`` (and columns ``region[1]``) of a stored tensor; None where a column cut
    would split a quantization block."""
    info = f.tensors[name]
    shape = tuple(info.shape) if len(info.shape) == 2 else (1, info.shape[0])
    region = region if len(info.shape) == 2 else ((0, 1), *region)
    (r0, r1), (c0, c1) = region
    block, nbytes = row_layout(info.ggml_type)
    if c0 % block or c1 % block:
      leaf_name = name.split(".", 2)[-1]
      if placer.partial and leaf_name not in warned:  # one process holding it all loses nothing
        warned.add(leaf_name)
        cut = c0 if c0 % block else c1
        warnings.warn(f"{f.path}: tensor {name!r} ({type_name(info.ggml_type)}) is sharded at column {cut},"
                      f" inside a quantization block of {block}; each process reads such tensors whole and"
                      " keeps its part.", stacklevel=2)
      return None
    row = info.nbytes // shape[0]
    raw = f.raw(name)[r0 * row:r1 * row].reshape(r1 - r0, row)[:, c0 // block * nbytes:c1 // block * nbytes]
    out = dequantize(np.ascontiguousarray(raw), info.ggml_type, (r1 - r0, c1 - c0), name=name, path=f.path)
    f.release(name, r0 * row, r1 * row)
    return out if len(info.shape) == 2 else out[0]

  def read_rows(leaf: leaves_lib.Leaf, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    name = gguf_name(leaf)
    info = f.tensors[name]
    if leaf.convert != "plain" or len(info.shape) < 2:
      rows = leaves_lib.convert(leaf, read(name), leaf.slot_shape(config), permuted=leaf.gguf_permuted)
      rows = rows[start:stop]
      if out is not None:
        out[...] = rows
      return rows if out is None else out
    row = info.nbytes // info.shape[0]  # bytes per row: whole quantization blocks
    raw = f.raw(name)[start * row:stop * row]
    rows = dequantize(raw, info.ggml_type, (stop - start, *info.shape[1:]), out=out, name=name, path=f.path)
    f.release(name, start * row, stop * row)
    return rows

  read_layer = leaf_blocks.layer_reader(
      config, lambda leaf, i, region: read_region(gguf_name(leaf, i), region),
      lambda leaf, i: read(gguf_name(leaf, i)), lambda leaf: {"permuted": leaf.gguf_permuted})
  return leaf_blocks.load_leaves(config, placer, read_layer, read_rows, progress=progress)


def gguf_provenance(f: GGUFFile, config: ModelConfig) -> dict[str, Any]:
  """What was loaded and how: quantization types, embedding tensors, conventions undone.

  Returns:
    A JSON-friendly dict: ``file``, ``architecture``, ``name``, ``quant_types`` (type
    name -> tensor count over the whole file), ``embed_tensor``/``embed_type``,
    ``unembed_tensor``/``unembed_type``, ``tied``, ``embed_scale``, ``qk_unpermuted``
    (llama Q/K rows were put back in rotate-half order), ``norms_include_plus_one``
    (Gemma: the file stores ``1 + w``, used as the multiplier) and ``unused_tensors``.
  """
  counts = collections.Counter(type_name(t.ggml_type) for t in f.tensors.values())
  unembed = "token_embd.weight" if config.tie_embeddings else "output.weight"
  used = set(_expected(config)) | {"rope_freqs.weight"}

  def type_of(name: str) -> str | None:
    return type_name(f.tensors[name].ggml_type) if name in f.tensors else None

  return {
      "file": f.path,
      "architecture": f.metadata.get("general.architecture"),
      "name": f.metadata.get("general.name"),
      "quant_types": dict(sorted(counts.items())),
      "embed_tensor": "token_embd.weight",
      "embed_type": type_of("token_embd.weight"),
      "unembed_tensor": unembed,
      "unembed_type": type_of(unembed),
      "tied": config.tie_embeddings,
      "embed_scale": config.embed_scale,
      "qk_unpermuted": families.get(config.family).gguf_permuted,
      "norms_include_plus_one": families.get(config.family).hf_norm_offset != 0.0,
      "unused_tensors": sorted(set(f.tensors) - used),
  }


def load_gguf(path: str | os.PathLike, *, dtype: Any = np.float32,
              placer: Placer | None = None) -> tuple[ModelConfig, dict[str, Any], dict[str, Any]]:
  """Opens ``path`` and returns ``(config, params, provenance)``; the file is closed after."""
  with GGUFFile(path) as f:
    config = read_config(f)
    params = load_gguf_params(f, config, dtype=dtype, placer=placer)
    provenance = gguf_provenance(f, config)
  return config, params, provenance
