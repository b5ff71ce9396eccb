"""Restoring the arrays of a ``params_cache`` entry, shard by shard with tensorstore, checked block by block.

A restore reads, in each process, only the chunks of the shards its devices hold, with
tensorstore (through memory maps), using the spec orbax gives for each array, into
64-byte-aligned buffers that CPU devices adopt without a copy. (orbax's own restore
stages every shard in a fresh ``np.zeros`` buffer and copies it again onto the device:
for Gemma 3 270M on the 2-core test machine it took about twice as long and its peak
resident memory was 0.3-0.5 GB above the params' 1 GB, where this one adds ~10 MB.)
Files written before the reader mapped them are never truncated in place (a rewrite
removes and recreates them), so the memory maps are safe. Every block read is checked
against the checksum manifests that ``params_cache.save_arrays`` wrote (see
``jaxsem.io.params_cache`` for the entry's layout and ``jaxsem.io.params_checksums`` for
the blocks); a block that differs from its sum, or a missing or damaged manifest, is
never served. A restore makes no barrier, so the caller can agree on success afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxsem.io import host_memory
from jaxsem.io import params_cache
from jaxsem.io import params_checksums

# tensorstore file reads (and copies) in flight during a restore.
READ_CONCURRENCY = 4


def read_checksums(entry: str | os.PathLike, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """The entry's checksums, merged over the manifests ``meta`` lists.

  Returns:
    ``{leaf: {"block": tuple, "sums": {block name: checksum}}}``.

  Raises:
    ValueError: If ``meta`` lists no manifests, or one is missing, unreadable, of
      another algorithm or format, or disagrees with another on a leaf's block shape.
  """
  names = params_cache.checksum_names(meta)
  return params_checksums.read_manifests(entry, names, params_cache.FORMAT_VERSION)


@dataclasses.dataclass
class _Region:
  """One shard of a stored leaf in flight, read in whole checksummed blocks."""

  path: str
  blocks: list  # (tensorstore future, block name, numpy view the block lands in, its start in the leaf)
  copy: Callable[[], None] | None  # moves the shard from a staging buffer into its own, once checked


def _read_leaf(path: str, store, global_shape: tuple[int, ...], sharding, np_dtype,
               block: tuple[int, ...]) -> tuple[list[_Region], list]:
  """Starts reading this process's shards of one stored array, in whole checksummed blocks.

  Each distinct shard is read once, straight into a 64-byte-aligned buffer that CPU
  placement adopts without a copy (devices holding the same shard share it, as they do
  after ``jax.device_put``). Rows past the stored ones (vocabulary padding) are zeros;
  stored rows past ``global_shape`` are not read, beyond the end of their block. A shard
  that is not a union of blocks (on a mesh other than the saving one) is read, blocks
  whole, into a staging buffer and copied into place once checked. Each block is a read
  of its own, so that it can be checked as soon as it lands.

  Returns:
    ``(regions, shards)``: ``_Region``s to wait for and check, and ``(device, buffer)`` pairs.
  """
  import tensorstore as ts

  if len(block) != store.rank:
    raise ValueError(f"its checksum blocks of leaf {path} have rank {len(block)}, not {store.rank}")
  buffers: dict[tuple, np.ndarray] = {}
  regions, shards = [], []
  for device, index in sharding.addressable_devices_indices_map(global_shape).items():
    requested = ts.IndexTransform(input_shape=global_shape)[index].domain
    hashable = tuple(zip(requested.inclusive_min, requested.exclusive_max))
    if hashable not in buffers:
      buffer = host_memory.aligned_empty(requested.shape, np_dtype)
      region = store.domain.intersect(requested)
      if region.shape != requested.shape:
        buffer[...] = 0
      if all(region.shape):
        lo = tuple(a // b * b for a, b in zip(region.inclusive_min, block))
        hi = tuple(min(-(-z // b) * b, n) for z, b, n in zip(region.exclusive_max, block, store.shape))
        in_buffer = tuple(slice(a - o, z - o) for a, z, o in zip(region.inclusive_min, region.exclusive_max,
                                                                  requested.origin))
        if (lo, hi) == (tuple(region.inclusive_min), tuple(region.exclusive_max)):
          staged, copy = buffer[in_buffer], None
        else:
          staged = np.empty([z - a for a, z in zip(lo, hi)], np_dtype)
          in_staged = tuple(slice(a - o, z - o)
                            for a, z, o in zip(region.inclusive_min, region.exclusive_max, lo))
          copy = functools.partial(np.copyto, buffer[in_buffer], staged[in_staged])
        target = ts.array(staged)[ts.d[:].translate_to[lo]]
        reads = []
        for name, slices in params_checksums.blocks(lo, hi, block):
          start = tuple(a + s.start for a, s in zip(lo, slices))
          box = ts.IndexDomain(inclusive_min=start, exclusive_max=[a + s.stop for a, s in zip(lo, slices)])
          reads.append((target[box].write(store[box]), name, staged[slices], start))
        regions.append(_Region(path, reads, copy))
      buffers[hashable] = buffer
    shards.append((device, buffers[hashable]))
  return regions, shards


def _finish_reads(regions: list[_Region], checksums: dict[str, dict[str, Any]]) -> None:
  """Waits for the blocks in the order they were asked for, checking each in a thread as it lands.

  Raises:
    params_checksums.ChecksumError: If a block read differs from its checksum.
  """
  pool = ThreadPoolExecutor(params_checksums.workers())
  try:
    checks = []
    for region in regions:
      for future, name, block, start in region.blocks:
        future.result()
        checks.append(pool.submit(params_checksums.check, region.path, block, name, start,
                                  checksums[region.path]))
    for check in checks:
      check.result()
    for region in regions:
      if region.copy is not None:
        region.copy()
  finally:
    pool.shutdown(cancel_futures=True)


# The tensorstore context of a restore: orbax's for OCDBT (``get_ts_context``), with
# READ_CONCURRENCY reads and copies in flight. Reading through memory maps copies file
# pages straight into the buffers: no chunk-sized heap copies, so the restore peaks near
# the params' own size.
_READ_CONTEXT = {
    "cache_pool#ocdbt": {"total_bytes_limit": 100_000_000},
    "file_io_concurrency": {"limit": READ_CONCURRENCY},
    "data_copy_concurrency": {"limit": READ_CONCURRENCY},
    "file_io_mode": {"mode": "memmap"},
}


def read_spec(directory: str | os.PathLike, path: str) -> dict[str, Any]:
  """The tensorstore spec that reads leaf ``path`` of the orbax checkpoint in ``directory``.

  It is the spec orbax builds (``ocp.type_handlers.get_json_tspec_read`` with OCDBT),
  written out here so that a restore does not import orbax (~0.3 s); a test holds the
  two equal. orbax stores the leaf at keys ``("blocks", "q")`` under the name ``blocks.q``.
  """
  base = os.path.join(os.fspath(directory), "")
  return {"driver": "zarr",
          "kvstore": {"driver": "ocdbt",
                      "base": {"driver": "file", "path": base, "file_io_locking": {"mode": "non_atomic"}},
                      "manifest": {"driver": "file", "path": base},
                      "path": path.replace("/", "."), "cache_pool": "cache_pool#ocdbt"},
          "recheck_cached_data": False, "recheck_cached_metadata": False, "fill_missing_data_reads": False}


def restore_arrays(entry: str | os.PathLike, paths: Iterable[str], dtype: str, target: params_cache.Target,
                   check_shapes: Callable[[dict[str, tuple[int, ...]]], str | None]) -> dict[str, jax.Array]:
  """Restores the arrays ``paths`` of an entry; each process reads only its devices' shards.

  The arrays are read with tensorstore, through the spec orbax gives for each array of
  its checkpoint (``read_spec``), all leaves and shards at once, in whole checksummed
  blocks, each checked as it lands, into buffers that the devices adopt: on CPU the
  arrays then occupy memory once, with no staging copy (but on another mesh than the
  saving one, where blocks straddle shards). Makes no cross-process barrier.

  Args:
    entry: The entry directory.
    paths: The leaves to read (``"blocks/q"`` ...).
    dtype: The dtype every leaf must be stored as.
    target: ``(path, stored shape) -> (global shape, sharding)``; rows past the stored
      ones are zeros, stored rows past the global shape are not read.
    check_shapes: ``{path: stored shape} -> why they do not fit, or None``.

  Returns:
    ``{path: array}``, each placed on its target sharding.

  Raises:
    ValueError: If ``check_shapes`` objects, or a leaf is stored in another dtype.
    params_checksums.ChecksumError: If a block read differs from the checksum taken when it was saved.
    Exception: Whatever tensorstore raises for missing or damaged files.
  """
  import tensorstore as ts

  directory = Path(entry) / params_cache.ORBAX_DIR
  np_dtype = np.dtype(jax.numpy.dtype(dtype))
  context = ts.Context(_READ_CONTEXT)
  paths = list(paths)
  opening = [ts.open(read_spec(directory, path), open=True, read=True, context=context) for path in paths]
  stores = {path: future.result() for path, future in zip(paths, opening)}
  why = check_shapes({path: tuple(store.shape) for path, store in stores.items()})
  bad_dtype = [path for path, store in stores.items() if store.dtype.numpy_dtype != np_dtype]
  if why or bad_dtype:
    raise ValueError(why or f"leaf {bad_dtype[0]} is stored as {stores[bad_dtype[0]].dtype.name}, "
                     f"not {dtype}")
  checksums = read_checksums(entry, params_cache.read_meta(Path(entry)) or {})
  missing = [path for path in stores if path not in checksums]
  if missing:
    raise ValueError(f"the checksum manifests have no leaf {missing[0]}")
  regions, placements = [], {}
  for path, store in stores.items():
    global_shape, sharding = target(path, tuple(store.shape))
    leaf_regions, shards = _read_leaf(path, store, global_shape, sharding, np_dtype, checksums[path]["block"])
    regions += leaf_regions
    placements[path] = (global_shape, sharding, shards)
  _finish_reads(regions, checksums)
  arrays = {}
  for path, (global_shape, sharding, shards) in placements.items():
    on_devices = [jax.device_put(buffer, d) for d, buffer in shards]
    if isinstance(sharding, jax.sharding.SingleDeviceSharding):
      arrays[path] = on_devices[0]
    else:
      arrays[path] = jax.make_array_from_single_device_arrays(global_shape, sharding, on_devices)
  return jax.block_until_ready(arrays)

