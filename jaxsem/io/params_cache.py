"""A store of array checkpoints: orbax entries, restored shard by shard with tensorstore and checked.

This module knows the entry format and nothing of models: which arrays an entry must hold,
and how an entry is keyed, belong to ``jaxsem.models.params_cache`` (the cache of loaded
params that ``jaxsem.load`` uses). An entry lives under ``root()``:

    cache_dir()/params/<key>/
        orbax/              the orbax checkpoint (OCDBT, uncompressed, chunks of <= 8 MiB)
        checksums.<p>.json  a checksum of every block of the arrays process p saved
        meta.json           the key, what the arrays are, the checksum files; written last

A restore reads, in each process, only the chunks of the shards its devices hold, with
tensorstore (through memory maps), using the spec orbax gives for each array, into
64-byte-aligned buffers that CPU devices adopt without a copy. (orbax's own restore
stages every shard in a fresh ``np.zeros`` buffer and copies it again onto the device:
for Gemma 3 270M on the 2-core test machine it took about twice as long and its peak
resident memory was 0.3-0.5 GB above the params' 1 GB, where this one adds ~10 MB.)
Files written before the reader mapped them are never truncated in place (a rewrite
removes and recreates them), so the memory maps are safe.

Every array is checksummed in blocks: its shard as saved, split along its leading axes to
at most ``CHUNK_BYTES`` (``jaxsem.io.params_checksums``). The sums are taken from the arrays
in memory as they are saved and kept in a small JSON manifest per saving process, written
atomically. A restore reads whole blocks (the shards of the saving mesh are, so only a
restore onto another mesh reads a little more) and checks each block it read, in threads
while later reads are in flight; a block that differs from its sum, a missing or damaged
manifest, or an entry of an older layout (no manifest) is never served.

An entry counts only once ``meta.json`` exists (orbax finalizes its own directory
atomically, and the meta is written after it with ``atomic_write_text``).
``JAXSEM_PARAMS_CACHE=0`` turns the cache off (``enabled``).

Multi-process runs (``jax.distributed``): orbax saves collectively (each process writes
its own shards, process 0 finalizes); each process writes the checksums of the shards it
saved; only process 0 writes ``meta.json`` and prints warnings. A restore makes no
barrier, so the caller can agree on success afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxsem import distributed
from jaxsem.io import host_memory
from jaxsem.io import params_checksums
from jaxsem.io.cache import atomic_write_text, cache_dir
from jaxsem.io.source_hash import file_sha256, source_files, source_sha256  # noqa: F401 - part of the API

ENV = "JAXSEM_PARAMS_CACHE"
# Bump when the layout of an entry changes (what is stored, or how it is keyed).
# 2: checksum manifests; entries of layout 1 have another key and are never trusted.
FORMAT_VERSION = 2
META = "meta.json"
# The checksum manifest written by each saving process.
CHECKSUMS = "checksums.{process}.json"
ORBAX_DIR = "orbax"
# Files of a finished orbax checkpoint (OCDBT) that an entry must have.
ORBAX_FILES = ("_METADATA", "manifest.ocdbt")
# tensorstore file reads (and copies) in flight during a restore.
READ_CONCURRENCY = 4
_OFF = ("0", "false", "no", "off")

# (global shape, sharding) of a leaf, given its path and stored shape.
Target = Callable[[str, tuple[int, ...]], tuple[tuple[int, ...], jax.sharding.Sharding]]


def enabled(requested: bool = True) -> bool:
  """True when the cache is on: ``requested`` and ``$JAXSEM_PARAMS_CACHE`` is not 0/false/no/off."""
  return bool(requested) and os.environ.get(ENV, "1").strip().lower() not in _OFF


def root(create: bool = True) -> Path:
  """``cache_dir()/params``: where the entries and the source-hash records live."""
  path = cache_dir(create=create) / "params"
  if create:
    path.mkdir(parents=True, exist_ok=True)
  return path


def warn(message: str) -> None:
  """One line on stderr, from process 0 only."""
  if jax.process_index() == 0:
    print(f"jaxsem: warning: {message}", file=sys.stderr, flush=True)


def module_source(name: str) -> bytes:
  """The source file of the importable module ``name`` (b"" if it has none), without importing it."""
  spec = importlib.util.find_spec(name)
  if spec is not None and spec.origin and os.path.isfile(spec.origin):
    return Path(spec.origin).read_bytes()
  return b""


def code_fingerprint(modules: Iterable[str]) -> str:
  """12 hex digits of ``FORMAT_VERSION`` and the names and sources of ``modules``."""
  digest = hashlib.sha256(f"jaxsem params cache v{FORMAT_VERSION}\n".encode())
  for name in modules:
    digest.update(name.encode() + b"\n")
    digest.update(module_source(name))
  return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------------------
# Entries.


def read_meta(entry: Path) -> dict[str, Any] | None:
  """The entry's ``meta.json``, or None if it does not exist.

  Raises:
    ValueError: If the file exists but is not a JSON object (or cannot be read).
  """
  try:
    text = (entry / META).read_text(encoding="utf-8")
  except FileNotFoundError:
    return None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"cannot read {META} ({e})") from None
  try:
    meta = json.loads(text)
  except RecursionError:  # nested past the parser's depth; other bad JSON is a ValueError
    raise ValueError(f"{META} is nested too deeply") from None
  if not isinstance(meta, dict):
    raise ValueError(f"{META} is not a JSON object")
  return meta


def checksum_names(meta: dict[str, Any]) -> list[str]:
  """The checksum manifests ``meta`` lists, one per saving process.

  Raises:
    ValueError: If the list is absent or names files other than ``CHECKSUMS`` of processes 0..n-1.
  """
  names = meta.get("checksums")
  if not isinstance(names, list) or not names or names != [CHECKSUMS.format(process=p)
                                                            for p in range(len(names))]:
    raise ValueError(f"{META} lists no checksum manifests")
  return names


def missing_file(entry: str | os.PathLike, meta: dict[str, Any]) -> str | None:
  """Why the files of an entry whose meta is ``meta`` are incomplete, or None."""
  entry = Path(entry)
  missing = [name for name in ORBAX_FILES if not (entry / ORBAX_DIR / name).is_file()]
  if missing:
    return f"{ORBAX_DIR}/{missing[0]} is missing"
  try:
    missing = [name for name in checksum_names(meta) if not (entry / name).is_file()]
  except ValueError as e:
    return str(e)
  return f"{missing[0]} is missing" if missing else None


def read_checksums(entry: str | os.PathLike, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """The entry's checksums, merged over the manifests ``meta`` lists.

  Returns:
    ``{leaf: {"block": tuple, "sums": {block name: checksum}}}``.

  Raises:
    ValueError: If ``meta`` lists no manifests, or one is missing, unreadable, of
      another algorithm or format, or disagrees with another on a leaf's block shape.
  """
  return params_checksums.read_manifests(entry, checksum_names(meta), FORMAT_VERSION)


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


def restore_arrays(entry: str | os.PathLike, paths: Iterable[str], dtype: str, target: Target,
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

  directory = Path(entry) / ORBAX_DIR
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
  checksums = read_checksums(entry, read_meta(Path(entry)) or {})
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


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
  """Keeps orbax's INFO lines (some 40 per save, shown under ``absl.app.run``) off stderr."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(max(level, logging.WARNING))
  try:
    yield
  finally:
    logger.setLevel(level)


def remove_entry(entry: Path) -> None:
  """Removes an entry, its meta first, so that no half-removed entry ever looks complete."""
  with contextlib.suppress(FileNotFoundError):
    (entry / META).unlink()
  shutil.rmtree(entry, ignore_errors=True)


def save_arrays(entry: str | os.PathLike, tree: dict, meta: dict[str, Any]) -> None:
  """Saves a pytree of arrays as an entry: the orbax checkpoint, the checksum manifests, then ``meta.json``.

  Collective: every process calls it with the same tree of global arrays. Process 0
  removes what was at ``entry`` before and writes the meta; orbax writes each process's
  shards and finalizes atomically; each process then writes the checksums of the shards
  it saved (``CHECKSUMS``), hashed from the arrays in memory.

  Args:
    entry: The entry directory (``root() / key``).
    tree: Nested dicts of arrays.
    meta: What the caller records about the arrays (key, dtype, leaves ...); ``format``,
      ``checksums``, ``saved``, ``save_seconds`` and ``versions`` are added.

  Raises:
    OSError: If a process could not write its checksum manifest (after the others have).
  """
  import orbax.checkpoint as ocp

  entry = Path(entry)
  main = jax.process_index() == 0
  if main:
    remove_entry(entry)
    entry.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=params_checksums.CHUNK_BYTES), tree)
  with _quiet_absl():
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))
    try:
      checkpointer.save(entry / ORBAX_DIR, args=ocp.args.PyTreeSave(item=tree, save_args=save_args))
    finally:
      checkpointer.close()
  try:
    manifest = {"format": FORMAT_VERSION, "algorithm": params_checksums.CHECKSUM_ALGORITHM,
                "leaves": params_checksums.compute(tree)}
    atomic_write_text(entry / CHECKSUMS.format(process=jax.process_index()), json.dumps(manifest) + "\n")
    error = None
  except OSError as e:
    error = e
  # Every process reaches this agreement, so none waits here for one that failed.
  if not distributed.all_true(error is None):
    raise error or OSError(f"another process could not write its {CHECKSUMS.format(process='<p>')}")
  if main:
    meta = {"format": FORMAT_VERSION, **meta,
            "checksums": [CHECKSUMS.format(process=p) for p in range(jax.process_count())],
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "save_seconds": round(time.perf_counter() - start, 3),
            "versions": {"orbax-checkpoint": ocp.__version__, "jax": jax.__version__}}
    atomic_write_text(entry / META, json.dumps(meta, indent=1) + "\n")


# ---------------------------------------------------------------------------------------
# Locks, agreement between processes, housekeeping.


@contextlib.contextmanager
def try_lock(entry: Path) -> Iterator[bool]:
  """Yields whether this process got the entry's write lock (never waits for it)."""
  lock_path = entry.with_name(entry.name + ".lock")
  try:
    lock_file = open(lock_path, "a+b")
  except OSError:
    yield False
    return
  with lock_file:
    try:
      fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def main_flag(flag: bool) -> bool:
  """Process 0's ``flag`` on every process."""
  return bool(np.asarray(distributed.broadcast(np.asarray(int(flag), np.int32))))


def same_key(entry_key: str) -> bool:
  """True when every process computed the same key (they read the same source)."""
  if jax.process_count() == 1:
    return True
  from jax.experimental import multihost_utils

  digest = np.frombuffer(hashlib.sha256(entry_key.encode()).digest()[:8], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(digest))
  return bool((gathered == gathered.reshape(-1, digest.size)[0]).all())


def writable(directory: Path) -> str | None:
  """None if files can be created in ``directory`` (made if needed), else why not."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe.", suffix=".tmp")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    return e.strerror or str(e)
  return None


def prune_siblings(entry: Path, prefix: str) -> None:
  """Removes entries of the same source and dtype written by other loader code."""
  for other in entry.parent.glob(prefix + "*"):
    if other == entry or not other.is_dir():
      continue
    with try_lock(other) as locked:
      if locked:
        remove_entry(other)
        with contextlib.suppress(OSError):
          other.with_name(other.name + ".lock").unlink()
