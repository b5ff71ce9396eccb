"""A store of array checkpoints: orbax entries, saved with checksums, keyed, locked and pruned.

This module knows the entry format and nothing of models: which arrays an entry must hold,
and how an entry is keyed, belong to ``jaxsem.models.params_cache`` (the cache of loaded
params that ``jaxsem.load`` uses); restoring an entry's arrays, shard by shard and checked
block by block, belongs to ``jaxsem.io.params_restore``. An entry lives under ``root()``:

    cache_dir()/params/<key>/
        orbax/              the orbax checkpoint (OCDBT, uncompressed, chunks of <= 8 MiB)
        checksums.<p>.json  a checksum of every block of the arrays process p saved
        meta.json           the key, what the arrays are, the checksum files; written last

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
import fcntl
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
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxsem import distributed
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
