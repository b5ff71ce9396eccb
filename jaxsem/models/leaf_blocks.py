"""Reading param leaves block by block: the loop both checkpoint formats share.

A ``sharding.Placer`` names the blocks of each leaf this process holds (on a mesh: the distinct
shards of its own devices). A stacked leaf ``[L, ...]`` is read layer by layer, and of each layer
only the part of the stored tensor its block needs (``leaf_table.file_block``: whole heads, rows or
columns); an unstacked leaf (the embedding, the output head, the final norm) only the rows of its
blocks (rows past the vocabulary, padding, are zeros). Blocks are allocated in the placer's dtype,
so a bfloat16 load never holds a float32 copy of a leaf, only of the part of one tensor being read.
So a process holds its own shards plus one part of one stored tensor, never a whole leaf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxsem.io import host_memory
from jaxsem.models import families
from jaxsem.models.config import ModelConfig
from jaxsem.models.families import leaf_table as leaves_lib
from jaxsem.models.families.leaf_table import Leaf
from jaxsem.sharding import Index, Placer

# ``read_layer(leaf, i, block)``: the ``block`` (``(start, stop)`` per slot axis) of layer ``i``'s slot of
# a stacked leaf, in the params layout (any float dtype).
ReadLayer = Callable[[Leaf, int, Index], np.ndarray]
# ``read_rows(leaf, start, stop, out=None)``: rows ``[start, stop)`` of an unstacked leaf, in the params
# layout; written into ``out`` (C-contiguous, any float dtype) when given, which is then returned.
ReadRows = Callable[..., np.ndarray]


def layer_reader(config: ModelConfig, read_region: Callable[[Leaf, int, Index], np.ndarray | None],
                 read_tensor: Callable[[Leaf, int], np.ndarray],
                 convert_args: Callable[[Leaf], dict[str, Any]]) -> ReadLayer:
  """The ``read_layer`` of a format, from its two reads of a stored tensor.

  A block reads only its ``leaf_table.file_block`` of the stored tensor (``read_region``, which may
  answer None when the format cannot read that region alone); otherwise the whole stored tensor is
  read once (``read_tensor``), converted, and kept for the other blocks of the same layer.

  Args:
    config: the model's config.
    read_region: ``(leaf, layer, region)`` -> that region of the stored tensor, or None.
    read_tensor: ``(leaf, layer)`` -> the whole stored tensor (a fused leaf's: the fused one).
    convert_args: keyword arguments of ``leaf_table.convert`` for a leaf (its format's conventions).
  """
  whole: dict[tuple[str, int], np.ndarray] = {}  # the last tensor read whole

  def read_layer(leaf: Leaf, i: int, block: Index) -> np.ndarray:
    region = leaves_lib.file_block(leaf, config, block)
    part = None if region is None else read_region(leaf, i, region)
    if part is not None:
      return leaves_lib.convert(leaf, part, tuple(b - a for a, b in block), **convert_args(leaf))
    if (leaf.path, i) not in whole:
      whole.clear()
      w = leaves_lib.split(leaf, read_tensor(leaf, i), config)  # a fused leaf's rows
      whole[leaf.path, i] = leaves_lib.convert(leaf, w, leaf.slot_shape(config), **convert_args(leaf))
    return whole[leaf.path, i][tuple(slice(a, b) for a, b in block)]

  return read_layer


def _inner(block: Index) -> tuple[slice, ...]:
  """Slices of every axis of ``block`` after the first."""
  return tuple(slice(a, b) for a, b in block[1:])


def plan(config: ModelConfig, placer: Placer) -> list[tuple[Leaf, tuple[int, ...], list[Index]]]:
  """``(leaf, shape, blocks)`` of every leaf, in the table's order."""
  out = []
  for leaf in families.leaves(config):
    shape = tuple(leaf.shape(config))
    out.append((leaf, shape, placer.blocks(leaf.path, shape)))
  return out


def elements_read(config: ModelConfig, planned) -> int:
  """How many weights the plan reads from the file (each layer tensor and row once)."""
  total = 0
  for leaf, shape, blocks in planned:
    if leaf.stacked:
      for inner in {b[1:]: b[0] for b in blocks}.items():
        total += len(range(*inner[1])) * math.prod(stop - start for start, stop in inner[0])
    else:
      rows = {b[0] for b in blocks}
      total += sum(max(0, min(stop, shape[0]) - start) for start, stop in rows) * math.prod(shape[1:])
  return total


def load_leaves(config: ModelConfig, placer: Placer, read_layer: ReadLayer, read_rows: ReadRows, *,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
  """The params pytree, each leaf read block by block and placed as soon as it is complete.

  Args:
    config: the model's config.
    placer: where leaves go and which of their blocks this process reads.
    read_layer: reads one layer of a stacked leaf.
    read_rows: reads rows of an unstacked leaf.
    progress: ``progress(done, total)`` after each part of a layer tensor or row range, in weights
      read by this process.

  Returns:
    ``{"embed", "final_norm", ["unembed"], "blocks": {...}}`` of placed leaves.
  """
  dtype = placer.dtype or np.dtype(np.float32)
  planned = plan(config, placer)
  total, done = elements_read(config, planned), 0

  def advance(n: int) -> None:
    nonlocal done
    done += n
    if progress is not None:
      progress(min(done, total), total)

  params: dict[str, Any] = {"blocks": {}}
  for leaf, shape, blocks in planned:
    bufs = {b: host_memory.aligned_empty(tuple(stop - start for start, stop in b), dtype) for b in blocks}
    if leaf.stacked:
      for i in sorted({i for b in blocks for i in range(*b[0])}):
        for b, buf in bufs.items():
          if b[0][0] <= i < b[0][1]:
            part = read_layer(leaf, i, b[1:])
            buf[i - b[0][0]] = part
            advance(math.prod(part.shape))
            del part
    else:
      for start, stop in sorted({b[0] for b in blocks}):
        n = max(0, min(stop, shape[0]) - start)
        same = [b for b in blocks if b[0] == (start, stop)]
        # A block of whole rows is read straight into its buffer (no second copy of the embedding).
        direct = next((b for b in same if all(sl == (0, d) for sl, d in zip(b[1:], shape[1:]))), None)
        if not n:
          rows = None
        elif direct is not None:
          rows = read_rows(leaf, start, start + n, out=bufs[direct][:n])
        else:
          rows = read_rows(leaf, start, start + n)
        for b in same:
          if n and b != direct:
            bufs[b][:n] = rows[(slice(None), *_inner(b))]
          bufs[b][n:] = 0  # rows past the vocabulary: padding
        if n:
          advance(n * math.prod(shape[1:]))
        del rows
    leaf_value = placer.assemble(leaf.path, shape, bufs)
    if leaf.stacked:
      params["blocks"][leaf.path.split("/", 1)[1]] = leaf_value
    else:
      params[leaf.path] = leaf_value
    del bufs, leaf_value
    host_memory.trim()
  return params
