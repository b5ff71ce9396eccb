"""A cache of loaded params: dequantize a checkpoint once, restore the arrays after that.

The first ``jaxsem.load`` of a model saves its params, exactly as the loader produced
them (dequantized, cast to the requested dtype), as an entry of the array store
``jaxsem.io.params_cache`` (orbax, checksummed blocks, ``meta.json`` written last):

    cache_dir()/params/<source sha256>-<dtype>-<loader fingerprint>/

Later loads of the same file and dtype restore from there, straight onto the target
mesh, each process reading only the shards its devices hold. The key is

* the sha256 of the source file(s) (a GGUF file, or a snapshot's config.json and
  safetensors files); it is computed once and remembered in a small JSON record beside
  the file's size, mtime, ctime and inode, so later calls only ``stat`` the file;
* the dtype; and
* a fingerprint of the cache format and of the code that shapes the params
  (``LOADER_MODULES``: the format readers and dequantizers, the loaders, every module of
  ``jaxsem.models.families``, the params layout, placement), so a fix to any of them never
  meets stale params. Entries of the same source and dtype left by older code are
  removed when a new one is saved.

The vocabulary leaves (``embed``, ``unembed``) are saved as they were placed: padded
with zero rows to the first load's mesh (``sharding.pad_vocab``). A restore onto
another mesh reads them into that mesh's padded shape: rows past the stored ones are
zeros, and stored rows past the target (zeros too) are not read.

An entry counts only once its ``meta.json`` exists and agrees with the key and the
source's config, its arrays have the shapes and dtype the config implies, and every
block read matches its checksum. A damaged entry costs one warning line on stderr and a
load from the source, which then rewrites the entry. A cache directory that cannot be
written costs one warning line; the load goes on without the cache.
``JAXSEM_PARAMS_CACHE=0`` (or ``load(..., params_cache=False)``) turns the cache off.

Multi-process runs (``jax.distributed``): every process calls ``cached_params`` with
the same arguments. The processes agree on hit or miss before reading, and on
success after it (a restore has no barrier, so one failing process cannot strand the
others); only process 0 writes ``meta.json`` and prints warnings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import pkgutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxsem import distributed
from jaxsem import sharding as sharding_lib
from jaxsem.io import host_memory
from jaxsem.io import params_cache as store
from jaxsem.io import params_checksums
from jaxsem.io import params_restore
from jaxsem.io.source_hash import source_sha256
from jaxsem.models import params as params_lib
from jaxsem.models.config import ModelConfig

_FAMILIES = "jaxsem.models.families"
# The modules outside the families package whose code decides the params' values.
_SHAPING_MODULES = ("jaxsem.io.gguf_file", "jaxsem.io.dequant", "jaxsem.io.hf_checkpoint",
                    "jaxsem.models.gguf_load", "jaxsem.models.hf_load", "jaxsem.models.load",
                    "jaxsem.models.params", "jaxsem.models.config", "jaxsem.sharding")
_VOCAB_LEAVES = ("embed", "unembed")


def family_modules() -> tuple[str, ...]:
  """``jaxsem.models.families`` and every module in it (leaf table, config mapping, each family)."""
  spec = importlib.util.find_spec(_FAMILIES)
  found = pkgutil.walk_packages(spec.submodule_search_locations or [], prefix=_FAMILIES + ".")
  return (_FAMILIES,) + tuple(sorted(m.name for m in found))


# The modules whose source is part of the key: a change to any of them is a miss.
LOADER_MODULES = _SHAPING_MODULES + family_modules()


def loader_fingerprint() -> str:
  """12 hex digits of the cache format version and the source of ``LOADER_MODULES``."""
  return store.code_fingerprint(LOADER_MODULES)


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
    meta = store.read_meta(entry)
  except ValueError as e:
    return False, str(e)
  if meta is None:
    return False, None
  if meta.get("format") != store.FORMAT_VERSION or meta.get("key") != entry_key or meta.get("dtype") != dtype:
    return False, f"{store.META} does not match the key {entry_key}"
  if meta.get("config") != _json_config(config):
    return False, f"{store.META} holds another model config"
  leaves = meta.get("leaves")
  if not isinstance(leaves, dict) or not all(isinstance(v, dict) and isinstance(v.get("shape"), list)
                                             for v in leaves.values()):
    return False, f"{store.META} has no valid leaf list"
  why = _check_shapes(config, {k: tuple(v["shape"]) for k, v in leaves.items()})
  if why is None and any(v.get("dtype") != dtype for v in leaves.values()):
    why = f"its leaves are not all {dtype}"
  why = why or store.missing_file(entry, meta)
  return why is None, why


def _default_device():
  default = jax.config.jax_default_device
  return default if isinstance(default, jax.Device) else jax.local_devices()[0]


def restore(entry: str | os.PathLike, config: ModelConfig, dtype: str, mesh: Mesh | None = None) -> dict:
  """Restores an entry's params onto ``mesh``; each process reads only its devices' shards.

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
  device = _default_device()

  def target(path: str, stored: tuple[int, ...]):
    shape = tuple(stored)
    if path in _VOCAB_LEAVES:
      rows = config.vocab_size + (-config.vocab_size % sharding_lib.vocab_multiple(mesh))
      shape = (rows,) + shape[1:]
    if mesh is None:
      return shape, jax.sharding.SingleDeviceSharding(device)
    return shape, sharding_lib.param_sharding(path, shape, mesh)

  arrays = params_restore.restore_arrays(entry, params_lib.param_shapes(config), dtype, target,
                                         functools.partial(_check_shapes, config))
  return params_lib.unflatten(arrays)


def save(entry: str | os.PathLike, params: dict, config: ModelConfig, dtype: str, entry_key: str,
         source: dict[str, Any] | None = None) -> None:
  """Saves params as an entry (collective: every process calls it with its global arrays).

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
  leaves = {path: {"shape": list(leaf.shape), "dtype": str(np.dtype(leaf.dtype))}
            for path, leaf in params_lib.flatten(params).items()}
  store.save_arrays(entry, params, {"key": entry_key, "dtype": dtype, "source": source or {},
                                    "config": _json_config(config), "leaves": leaves})


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
  if not store.enabled(use_cache) or (mesh is None and jax.process_count() > 1):
    return build(), {**info, "enabled": False}
  start = time.perf_counter()
  try:
    directory = store.root()
    source_sha = source_sha256(source)
    entry_key, problem = key(source_sha, dtype), None
  except Exception as e:  # an unwritable or odd cache dir never stops a load
    entry_key, problem = "", params_checksums.describe(e)
  if not distributed.all_true(problem is None):
    store.warn(f"params cache unusable ({problem or 'on another process'}); loading without it.")
    return build(), info
  entry = directory / entry_key
  if not store.same_key(entry_key):
    store.warn(f"params cache: the processes read different files for {source}; loading without the cache.")
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
    store.warn(f"params cache entry {entry} is damaged ({why}); loading from the source and rewriting it.")

  params = build()
  problem = store.writable(directory)
  if not distributed.all_true(problem is None):
    store.warn(f"params cache directory {directory} is not writable ({problem or 'on another process'}); "
               "going on without the cache.")
    return params, info
  start = time.perf_counter()
  main = jax.process_index() == 0
  with store.try_lock(entry) if main else contextlib.nullcontext(True) as locked:
    # Another job may be writing the entry (then leave it to it) or may just have finished.
    do_save = locked and (damaged or not is_valid(entry, entry_key, config, dtype)[0])
    if not store.main_flag(do_save):
      return params, info
    try:
      save(entry, params, config, dtype, entry_key, {"path": str(source), "sha256": source_sha})
      error = None
    except Exception as e:  # a full disk, say: the params are loaded all the same
      error = params_checksums.describe(e)
    if error is not None or not distributed.all_true(error is None):
      store.warn(f"params cache: could not save {entry} ({error or 'on another process'}); "
                 "going on without it.")
      if main:
        store.remove_entry(entry)
      return params, info
  if main:
    store.prune_siblings(entry, f"{source_sha}-{dtype}-")
  return params, {**info, "path": str(entry), "seconds": round(time.perf_counter() - start, 3)}
