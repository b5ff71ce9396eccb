"""A cache of loaded params: dequantize a checkpoint once, restore the arrays after that.

The first ``jaxsem.load`` of a model saves its params, exactly as the loader produced
them (dequantized, cast to the requested dtype), with orbax under

    cache_dir()/params/<source sha256>-<dtype>-<loader fingerprint>/
        orbax/              the orbax checkpoint (OCDBT, uncompressed, chunks of <= 8 MiB)
        checksums.<p>.json  a checksum of every block of the arrays process p saved
        meta.json           key, dtype, config, leaf shapes, checksum files; written last

Later loads of the same file and dtype restore from there, straight onto the target
mesh: each process reads only the chunks of the shards its devices hold, with
tensorstore (through memory maps), using the spec orbax gives for each array, into
64-byte-aligned buffers that CPU devices adopt without a copy. (orbax's own restore
stages every shard in a fresh ``np.zeros`` buffer and copies it again onto the device:
for Gemma 3 270M on the 2-core test machine it took about twice as long and its peak
resident memory was 0.3-0.5 GB above the params' 1 GB, where this one adds ~10 MB.)
Files written before the reader mapped them are never truncated in place (a rewrite
removes and recreates them), so the memory maps are safe. The key is

* the sha256 of the source file(s) (a GGUF file, or a snapshot's config.json and
  safetensors files); it is computed once and remembered in a small JSON record beside
  the file's size, mtime, ctime and inode, so later calls only ``stat`` the file;
* the dtype; and
* a fingerprint of the cache format and of the loader's code (the modules that read
  and dequantize checkpoints), so a fix to a dequantizer never meets stale params.
  Entries of the same source and dtype left by older loader code are removed when a
  new one is saved.

The vocabulary leaves (``embed``, ``unembed``) are saved as they were placed: padded
with zero rows to the first load's mesh (``sharding.pad_vocab``). A restore onto
another mesh reads them into that mesh's padded shape: rows past the stored ones are
zeros, and stored rows past the target (zeros too) are not read.

Every array is checksummed in blocks: its shard as saved, split along its leading axes to
at most ``CHUNK_BYTES`` (``jaxsem.io.params_checksums``). The sums are taken from the params
in memory as they are saved and kept in a small JSON manifest per saving process, written
atomically. A restore reads whole blocks (the shards of the saving mesh are, so only a restore onto another
mesh reads a little more) and checks each block it read, in threads while later reads
are in flight; a block that differs from its sum, a missing or damaged manifest, or an
entry of an older layout (no manifest) is never served.

An entry counts only once ``meta.json`` exists (orbax finalizes its own directory
atomically, and the meta is written after it with ``atomic_write_text``) and agrees
with the key and the source's config, its arrays have the shapes and dtype the config
implies, and every block read matches its checksum. A damaged entry costs one warning
line on stderr and a load from the source, which then rewrites the entry. A cache
directory that cannot be written costs one warning line; the load goes on without the
cache. ``JAXSEM_PARAMS_CACHE=0`` (or ``load(..., params_cache=False)``) turns the
cache off.

Multi-process runs (``jax.distributed``): every process calls ``cached_params`` with
the same arguments. The processes agree on hit or miss before reading, and on
success after it (a restore has no barrier, so one failing process cannot strand the
others); orbax saves collectively (each process writes its own shards, process 0
finalizes); each process writes the checksums of the shards it saved; only process 0
writes ``meta.json`` and prints warnings.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxsem import distributed
from jaxsem import sharding as sharding_lib
from jaxsem.io import host_memory
from jaxsem.io import params_checksums
from jaxsem.io.cache import atomic_write_text, cache_dir
from jaxsem.io.source_hash import file_sha256, source_files, source_sha256  # noqa: F401 - part of the API
from jaxsem.models import params as params_lib
from jaxsem.models.config import ModelConfig

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
# The modules whose code decides the params' values; their source is part of the key.
LOADER_MODULES = ("jaxsem.io.gguf_file", "jaxsem.io.gguf_params", "jaxsem.io.dequant",
                  "jaxsem.io.hf_checkpoint")
_VOCAB_LEAVES = ("embed", "unembed")
_OFF = ("0", "false", "no", "off")


def enabled(requested: bool = True) -> bool:
  """True when the cache is on: ``requested`` and ``$JAXSEM_PARAMS_CACHE`` is not 0/false/no/off."""
  return bool(requested) and os.environ.get(ENV, "1").strip().lower() not in _OFF


def root(create: bool = True) -> Path:
  """``cache_dir()/params``: where the entries and the source-hash records live."""
  path = cache_dir(create=create) / "params"
  if create:
    path.mkdir(parents=True, exist_ok=True)
  return path


def _warn(message: str) -> None:
  """One line on stderr, from process 0 only."""
  if jax.process_index() == 0:
    print(f"jaxsem: warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Keys.


def loader_fingerprint() -> str:
  """12 hex digits of the cache format version and the source of ``LOADER_MODULES``."""
  digest = hashlib.sha256(f"jaxsem params cache v{FORMAT_VERSION}\n".encode())
  for name in LOADER_MODULES:
    spec = importlib.util.find_spec(name)
    digest.update(name.encode() + b"\n")
    if spec is not None and spec.origin and os.path.isfile(spec.origin):
      digest.update(Path(spec.origin).read_bytes())
  return digest.hexdigest()[:12]


def key(source_sha: str, dtype: str) -> str:
  """The entry name: ``<source sha256>-<dtype>-<loader fingerprint>``."""
  return f"{source_sha}-{dtype}-{loader_fingerprint()}"


# ---------------------------------------------------------------------------------------
# Entries.


def _json_config(config: ModelConfig) -> dict[str, Any]:
  return json.loads(json.dumps(dataclasses.asdict(config)))


def _check_shapes(config: ModelConfig, stored: dict[str, tuple[int, ...]]) -> str | None:
  """Why stored leaf shapes do not fit ``config`` (vocab leaves may have extra rows), or None."""
  expected = params_lib.param_shapes(config)
  if set(stored) != set(expected):
    return f"it holds leaves {sorted(stored)}, not {sorted(expected)}"
  for path, shape in expected.items():
    got = tuple(stored[path])
    fits = (got[1:] == shape[1:] and got[0] >= shape[0]) if path in _VOCAB_LEAVES else got == shape
    if not fits:
      return f"leaf {path} has shape {list(got)}, not {list(shape)}"
  return None


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


def _checksum_names(meta: dict[str, Any]) -> list[str]:
  """The checksum manifests ``meta`` lists, one per saving process.

  Raises:
    ValueError: If the list is absent or names files other than ``CHECKSUMS`` of processes 0..n-1.
  """
  names = meta.get("checksums")
  if not isinstance(names, list) or not names or names != [CHECKSUMS.format(process=p)
                                                            for p in range(len(names))]:
    raise ValueError(f"{META} lists no checksum manifests")
  return names


def is_valid(entry: str | os.PathLike, entry_key: str, config: ModelConfig,
             dtype: str) -> tuple[bool, str | None]:
  """Whether an entry can be restored, from its ``meta.json`` alone (no array is read).

  Args:
    entry: The entry directory.
    entry_key: Its expected key (``key(...)``).
    config: The source's config; the entry's must be the same.
    dtype: The params dtype, e.g. ``"float32"``.

  Returns:
    ``(True, None)`` for a complete entry; ``(False, None)`` when there is none (or it
    was never finished, so there is no meta); ``(False, why)`` when it is damaged or
    does not match.
  """
  entry = Path(entry)
  try:
    meta = read_meta(entry)
  except ValueError as e:
    return False, str(e)
  if meta is None:
    return False, None
  if meta.get("format") != FORMAT_VERSION or meta.get("key") != entry_key or meta.get("dtype") != dtype:
    return False, f"{META} does not match the key {entry_key}"
  if meta.get("config") != _json_config(config):
    return False, f"{META} holds another model config"
  leaves = meta.get("leaves")
  if not isinstance(leaves, dict) or not all(isinstance(v, dict) and isinstance(v.get("shape"), list)
                                             for v in leaves.values()):
    return False, f"{META} has no valid leaf list"
  why = _check_shapes(config, {k: tuple(v["shape"]) for k, v in leaves.items()})
  if why is None and any(v.get("dtype") != dtype for v in leaves.values()):
    why = f"its leaves are not all {dtype}"
  if why is not None:
    return False, why
  missing = [name for name in ORBAX_FILES if not (entry / ORBAX_DIR / name).is_file()]
  if missing:
    return False, f"{ORBAX_DIR}/{missing[0]} is missing"
  try:
    missing = [name for name in _checksum_names(meta) if not (entry / name).is_file()]
  except ValueError as e:
    return False, str(e)
  if missing:
    return False, f"{missing[0]} is missing"
  return True, None


def read_checksums(entry: str | os.PathLike, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """The entry's checksums, merged over the manifests ``meta`` lists.

  Returns:
    ``{leaf: {"block": tuple, "sums": {block name: checksum}}}``.

  Raises:
    ValueError: If ``meta`` lists no manifests, or one is missing, unreadable, of
      another algorithm or format, or disagrees with another on a leaf's block shape.
  """
  return params_checksums.read_manifests(entry, _checksum_names(meta), FORMAT_VERSION)


def _target(path: str, stored: tuple[int, ...], config: ModelConfig, mesh: Mesh | None, device):
  """(global shape, sharding) of a leaf on ``mesh`` (or the one ``device``)."""
  shape = tuple(stored)
  if path in _VOCAB_LEAVES:
    rows = config.vocab_size + (-config.vocab_size % sharding_lib.vocab_multiple(mesh))
    shape = (rows,) + shape[1:]
  if mesh is None:
    return shape, jax.sharding.SingleDeviceSharding(device)
  return shape, sharding_lib.param_sharding(path, shape, mesh)


def _default_device():
  default = jax.config.jax_default_device
  return default if isinstance(default, jax.Device) else jax.local_devices()[0]


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


def restore(entry: str | os.PathLike, config: ModelConfig, dtype: str, mesh: Mesh | None = None) -> dict:
  """Restores an entry's params onto ``mesh``; each process reads only its devices' shards.

  The arrays are read with tensorstore, through the spec orbax gives for each array of
  its checkpoint (``read_spec``), all leaves and shards at once, in whole checksummed
  blocks, each checked as it lands, into buffers that the devices adopt: on CPU the
  params then occupy memory once, with no staging copy (but on another mesh than the
  saving one, where blocks straddle shards).
  Makes no cross-process barrier, so a process that fails here can tell the others
  (``cached_params`` does) instead of leaving them waiting.

  Args:
    entry: The entry directory (``is_valid`` should have accepted it).
    config: The model config (the leaf shapes follow from it).
    dtype: The params dtype.
    mesh: The target mesh, or None for the default device. The vocabulary leaves are
      padded with zero rows to a multiple of its model axis.

  Returns:
    The params pytree, as ``load`` would have placed it.

  Raises:
    ValueError: If the stored arrays do not fit ``config`` and ``dtype``.
    params_checksums.ChecksumError: If a block read differs from the checksum taken when it was saved.
    Exception: Whatever tensorstore raises for missing or damaged files.
  """
  import tensorstore as ts

  directory = Path(entry) / ORBAX_DIR
  np_dtype = np.dtype(jax.numpy.dtype(dtype))
  context = ts.Context(_READ_CONTEXT)
  paths = list(params_lib.param_shapes(config))
  opening = [ts.open(read_spec(directory, path), open=True, read=True, context=context) for path in paths]
  stores = {path: future.result() for path, future in zip(paths, opening)}
  why = _check_shapes(config, {path: tuple(store.shape) for path, store in stores.items()})
  bad_dtype = [path for path, store in stores.items() if store.dtype.numpy_dtype != np_dtype]
  if why or bad_dtype:
    raise ValueError(why or f"leaf {bad_dtype[0]} is stored as {stores[bad_dtype[0]].dtype.name}, "
                     f"not {dtype}")
  checksums = read_checksums(entry, read_meta(Path(entry)) or {})
  missing = [path for path in stores if path not in checksums]
  if missing:
    raise ValueError(f"the checksum manifests have no leaf {missing[0]}")
  device = _default_device()
  regions, placements = [], {}
  for path, store in stores.items():
    global_shape, sharding = _target(path, tuple(store.shape), config, mesh, device)
    leaf_regions, shards = _read_leaf(path, store, global_shape, sharding, np_dtype, checksums[path]["block"])
    regions += leaf_regions
    placements[path] = (global_shape, sharding, shards)
  _finish_reads(regions, checksums)
  params = {}
  for path, (global_shape, sharding, shards) in placements.items():
    arrays = [jax.device_put(buffer, d) for d, buffer in shards]
    if mesh is None:
      params[path] = arrays[0]
    else:
      params[path] = jax.make_array_from_single_device_arrays(global_shape, sharding, arrays)
  return jax.block_until_ready(params_lib.unflatten(params))


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


def _remove_entry(entry: Path) -> None:
  """Removes an entry, its meta first, so that no half-removed entry ever looks complete."""
  with contextlib.suppress(FileNotFoundError):
    (entry / META).unlink()
  shutil.rmtree(entry, ignore_errors=True)


def save(entry: str | os.PathLike, params: dict, config: ModelConfig, dtype: str, entry_key: str,
         source: dict[str, Any] | None = None) -> None:
  """Saves params as an entry: the orbax checkpoint, the checksum manifests, then ``meta.json``.

  Collective: every process calls it with its params (global arrays). Process 0 removes
  what was at ``entry`` before and writes the meta; orbax writes each process's shards
  and finalizes atomically; each process then writes the checksums of the shards it
  saved (``CHECKSUMS``), hashed from the params in memory.

  Args:
    entry: The entry directory (``root() / key``).
    params: The params pytree as ``load`` placed it.
    config: The model config, recorded in the meta.
    dtype: The params dtype, recorded in the meta.
    entry_key: The entry's key, recorded in the meta.
    source: Where the params came from (path, sha256), recorded in the meta.

  Raises:
    OSError: If a process could not write its checksum manifest (after the others have).
  """
  import orbax.checkpoint as ocp

  entry = Path(entry)
  main = jax.process_index() == 0
  if main:
    _remove_entry(entry)
    entry.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=params_checksums.CHUNK_BYTES), params)
  with _quiet_absl():
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_compression=False))
    try:
      checkpointer.save(entry / ORBAX_DIR, args=ocp.args.PyTreeSave(item=params, save_args=save_args))
    finally:
      checkpointer.close()
  try:
    manifest = {"format": FORMAT_VERSION, "algorithm": params_checksums.CHECKSUM_ALGORITHM,
                "leaves": params_checksums.compute(params)}
    atomic_write_text(entry / CHECKSUMS.format(process=jax.process_index()), json.dumps(manifest) + "\n")
    error = None
  except OSError as e:
    error = e
  # Every process reaches this agreement, so none waits here for one that failed.
  if not distributed.all_true(error is None):
    raise error or OSError(f"another process could not write its {CHECKSUMS.format(process='<p>')}")
  if main:
    leaves = {path: {"shape": list(leaf.shape), "dtype": str(np.dtype(leaf.dtype))}
              for path, leaf in params_lib.flatten(params).items()}
    meta = {"format": FORMAT_VERSION, "key": entry_key, "dtype": dtype, "source": source or {},
            "config": _json_config(config), "leaves": leaves,
            "checksums": [CHECKSUMS.format(process=p) for p in range(jax.process_count())],
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "save_seconds": round(time.perf_counter() - start, 3),
            "versions": {"orbax-checkpoint": ocp.__version__, "jax": jax.__version__}}
    atomic_write_text(entry / META, json.dumps(meta, indent=1) + "\n")


# ---------------------------------------------------------------------------------------
# Locks, agreement between processes, housekeeping.


@contextlib.contextmanager
def _try_lock(entry: Path) -> Iterator[bool]:
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


def _main_flag(flag: bool) -> bool:
  """Process 0's ``flag`` on every process."""
  return bool(np.asarray(distributed.broadcast(np.asarray(int(flag), np.int32))))


def _same_key(entry_key: str) -> bool:
  """True when every process computed the same key (they read the same source)."""
  if jax.process_count() == 1:
    return True
  from jax.experimental import multihost_utils

  digest = np.frombuffer(hashlib.sha256(entry_key.encode()).digest()[:8], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(digest))
  return bool((gathered == gathered.reshape(-1, digest.size)[0]).all())


def _writable(directory: Path) -> str | None:
  """None if files can be created in ``directory`` (made if needed), else why not."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe.", suffix=".tmp")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    return e.strerror or str(e)
  return None


def _prune_siblings(entry: Path, prefix: str) -> None:
  """Removes entries of the same source and dtype written by other loader code."""
  for other in entry.parent.glob(prefix + "*"):
    if other == entry or not other.is_dir():
      continue
    with _try_lock(other) as locked:
      if locked:
        _remove_entry(other)
        with contextlib.suppress(OSError):
          other.with_name(other.name + ".lock").unlink()


# ---------------------------------------------------------------------------------------
# The hook used by ``jaxsem.load``.


def cached_params(source: str | os.PathLike, config: ModelConfig, dtype: str, mesh: Mesh | None,
                  build: Callable[[], dict], *, use_cache: bool = True) -> tuple[dict, dict[str, Any]]:
  """Params from the cache, or from ``build()`` and then saved to the cache.

  Args:
    source: The model's GGUF file or snapshot directory (its bytes are the key).
    config: The config read from the source; a cached entry must hold the same.
    dtype: The params dtype, e.g. ``"float32"``.
    mesh: The mesh ``build`` places params on, or None for the default device.
    build: Loads the params from the source, placed as ``load`` places them.
    use_cache: False skips the cache (so does ``$JAXSEM_PARAMS_CACHE=0``).

  Returns:
    ``(params, info)``: ``info`` is ``{"hit", "path", "seconds"}`` for provenance;
    ``path`` is the entry used or written (None if none), ``seconds`` the time spent
    restoring (hit) or saving (miss).
  """
  info: dict[str, Any] = {"hit": False, "path": None, "seconds": 0.0}
  # Single-device params in a multi-process run are not global arrays orbax could share.
  if not enabled(use_cache) or (mesh is None and jax.process_count() > 1):
    return build(), {**info, "enabled": False}
  start = time.perf_counter()
  try:
    directory = root()
    source_sha = source_sha256(source)
    entry_key, problem = key(source_sha, dtype), None
  except Exception as e:  # an unwritable or odd cache dir never stops a load
    entry_key, problem = "", params_checksums.describe(e)
  if not distributed.all_true(problem is None):
    _warn(f"params cache unusable ({problem or 'on another process'}); loading without it.")
    return build(), info
  entry = directory / entry_key
  if not _same_key(entry_key):
    _warn(f"params cache: the processes read different files for {source}; loading without the cache.")
    return build(), info

  valid, why = is_valid(entry, entry_key, config, dtype)
  damaged = False
  if distributed.all_true(valid):
    try:
      params, error = restore(entry, config, dtype, mesh), None
    except Exception as e:  # damaged files: orbax and tensorstore raise many kinds
      params, error = None, params_checksums.describe(e)
    if distributed.all_true(error is None):
      host_memory.trim()  # the readers' freed chunk buffers
      seconds = round(time.perf_counter() - start, 3)
      return params, {**info, "hit": True, "path": str(entry), "seconds": seconds}
    why, damaged = error or "another process could not restore it", True
    del params
  if why is not None:
    _warn(f"params cache entry {entry} is damaged ({why}); loading from the source and rewriting it.")

  params = build()
  problem = _writable(directory)
  if not distributed.all_true(problem is None):
    _warn(f"params cache directory {directory} is not writable ({problem or 'on another process'}); "
          "going on without the cache.")
    return params, info
  start = time.perf_counter()
  main = jax.process_index() == 0
  with _try_lock(entry) if main else contextlib.nullcontext(True) as locked:
    # Another job may be writing the entry (then leave it to it) or may just have finished.
    do_save = locked and (damaged or not is_valid(entry, entry_key, config, dtype)[0])
    if not _main_flag(do_save):
      return params, info
    try:
      save(entry, params, config, dtype, entry_key, {"path": str(source), "sha256": source_sha})
      error = None
    except Exception as e:  # a full disk, say: the params are loaded all the same
      error = params_checksums.describe(e)
    if error is not None or not distributed.all_true(error is None):
      _warn(f"params cache: could not save {entry} ({error or 'on another process'}); going on without it.")
      if main:
        _remove_entry(entry)
      return params, info
  if main:
    _prune_siblings(entry, f"{source_sha}-{dtype}-")
  return params, {**info, "path": str(entry), "seconds": round(time.perf_counter() - start, 3)}
