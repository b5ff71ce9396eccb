"""Checksums of params-cache entries: every array in blocks, each block's CRC-32.

A leaf's block is its shard as saved, split along its leading axes to at most
``CHUNK_BYTES`` (``block_shape``); blocks are named by their indices on the leaf's block
grid (``blocks``). ``compute`` hashes the shards a process saves, ``read_manifests`` merges
the manifests of all saving processes, and ``check`` compares a block read back with its
sum. The layout of an entry (meta.json, which manifests it lists) belongs to
``jaxsem.io.params_cache``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

# The checksum of each block. It guards against damage (bit rot, stray writes, files
# cut short or swapped), not tampering: whoever can write the data can write its sum.
# A CRC-32 of a block of at most 8 MiB catches every error burst up to 32 bits and
# misses other damage with odds of 2^-32, at ~3.8 GB/s a core where sha256 (with the
# CPU's SHA instructions) does ~1.3 GB/s and blake2b ~0.6 GB/s: the cached load of a
# 1 GB model pays ~0.3 s of CPU for it instead of ~0.8 s.
CHECKSUM_ALGORITHM = "crc32"

# Arrays are stored, and checksummed, in chunks of at most this many bytes, so that a
# process restoring onto another mesh reads little beyond its own shards, and reads
# (and checks) run in parallel.
CHUNK_BYTES = 8 << 20

def describe(e: BaseException) -> str:
  """``Type: message`` of an exception, on one line and cut short, for warnings."""
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


class ChecksumError(ValueError):
  """A block read from an entry differs from the checksum taken when it was saved."""


def workers() -> int:
  """The CPUs this process may run on: threads that check blocks."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _smallest_factor(n: int) -> int:
  return next((f for f in range(2, math.isqrt(n) + 1) if n % f == 0), n)


def block_shape(shard_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
  """The checksummed block of a leaf: its saved shard, split along its leading axes to <= ``CHUNK_BYTES``.

  Splitting the leading axes first keeps each block one contiguous run of its shard, so
  a restore onto the saving mesh checks its buffers in place.
  """
  shape = list(shard_shape)
  for axis in range(len(shape)):
    while math.prod(shape) * itemsize > CHUNK_BYTES and shape[axis] > 1:
      shape[axis] //= _smallest_factor(shape[axis])
  return tuple(shape)


def blocks(lo: tuple[int, ...], hi: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[str, tuple]]:
  """``(name, slices relative to lo)`` of the blocks tiling the box ``[lo, hi)``.

  ``lo`` lies on the block grid; ``hi`` does too, or is the array's end.
  """
  ranges = [range(a // b, -(-z // b)) for a, z, b in zip(lo, hi, block)]
  for cell in itertools.product(*ranges):
    name = ",".join(map(str, cell))
    yield name, tuple(slice(c * b - a, min((c + 1) * b, z) - a) for c, b, a, z in zip(cell, block, lo, hi))


# Checksums by name, over a block's bytes; both release the GIL while they run.
_DIGESTS: dict[str, Callable[[np.ndarray], str]] = {
    "crc32": lambda data: f"{zlib.crc32(data):08x}",
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
}


def digest(array: np.ndarray) -> str:
  """The ``CHECKSUM_ALGORITHM`` checksum of an array's bytes, in hex."""
  return _DIGESTS[CHECKSUM_ALGORITHM](np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def flat_leaves(tree: dict) -> dict[str, Any]:
  """``{"blocks": {"q": x}}`` -> ``{"blocks/q": x}``: leaves of nested dicts by ``/``-joined keys."""
  return {"/".join(str(k.key) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compute(params: dict) -> dict[str, dict[str, Any]]:
  """``{leaf: {"block": shape, "sums": {block name: checksum}}}`` of the shards this process saves.

  Orbax writes the shards of replica 0, so those are the ones hashed here; the blocks
  tile each shard, and their names are their indices on the leaf's block grid.
  """
  jobs: dict[str, tuple[tuple[int, ...], dict]] = {}
  with ThreadPoolExecutor(workers()) as pool:
    for path, leaf in flat_leaves(params).items():
      block = block_shape(leaf.sharding.shard_shape(leaf.shape), np.dtype(leaf.dtype).itemsize)
      sums: dict = {}
      for shard in leaf.addressable_shards:
        if shard.replica_id != 0:
          continue
        data = np.asarray(shard.data)
        lo = tuple(s.start or 0 for s in shard.index)
        hi = tuple(a + n for a, n in zip(lo, data.shape))
        for name, slices in blocks(lo, hi, block):
          sums[name] = pool.submit(digest, data[slices])
      jobs[path] = (block, sums)
    return {path: {"block": list(block), "sums": {name: f.result() for name, f in sums.items()}}
            for path, (block, sums) in jobs.items()}


def check(path: str, block: np.ndarray, name: str, lo: tuple[int, ...], checksums: dict) -> None:
  """Raises ``ChecksumError`` if ``block`` (``name``, at ``lo`` in leaf ``path``) differs from its sum."""
  if checksums["sums"].get(name) != digest(block):
    where = ", ".join(f"{a}:{a + n}" for a, n in zip(lo, block.shape))
    raise ChecksumError(f"leaf {path}[{where}] does not match its checksum")


def read_manifests(entry: str | os.PathLike, names: list[str],
                   format_version: int) -> dict[str, dict[str, Any]]:
  """Checksums merged over the manifests ``names`` of ``entry``, each of ``format_version``.

  Returns:
    ``{leaf: {"block": tuple, "sums": {block name: checksum}}}``.

  Raises:
    ValueError: If a manifest is missing, unreadable, of another algorithm, or
      disagrees with another on a leaf's block shape.
  """
  merged: dict[str, dict[str, Any]] = {}
  for name in names:
    try:
      manifest = json.loads((Path(entry) / name).read_text(encoding="utf-8"))
      if manifest.get("algorithm") != CHECKSUM_ALGORITHM or manifest.get("format") != format_version:
        raise ValueError(f"it is not a format {format_version} {CHECKSUM_ALGORITHM} manifest")
      for path, leaf in manifest["leaves"].items():
        block = tuple(leaf["block"])
        if not all(isinstance(n, int) and n > 0 for n in block) or not isinstance(leaf["sums"], dict):
          raise ValueError(f"leaf {path} has no valid block shape or sums")
        into = merged.setdefault(path, {"block": block, "sums": {}})
        if into["block"] != block:
          raise ValueError(f"leaf {path} has another block shape than in the other manifests")
        into["sums"].update(leaf["sums"])
    except (OSError, ValueError, AttributeError, KeyError, TypeError, RecursionError) as e:
      raise ValueError(f"{name} cannot be used ({describe(e)})") from None
  return merged
