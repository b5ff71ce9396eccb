"""A zarr v3 array on disk for projections too large to keep in memory.

The array is ``[N, S]`` float32 with row chunks equal to the projection's row blocks,
so every ``write(start, block)`` from ``project_chunked`` fills whole chunks and no
chunk is ever read back and rewritten. Unwritten cells read as NaN (the fill value).

Completion is recorded by a marker file, ``.complete``, written atomically after the
last chunk's write has finished; ``open_for_read`` refuses an array without it.

Long sweeps are resumable. Each chunk is committed in three steps: tensorstore writes the
chunk's file (without syncing it), the file and its directories are fsynced, then
``.state.json`` (rewritten atomically) adds its start row to ``done``. A run killed at any
moment, or a machine that loses power, therefore leaves every chunk listed in ``done``
complete on disk; a chunk written but not yet listed (or half written) is simply computed
and written again. ``write_async`` runs the sync and the commit on a worker thread, in
order, so the disk's write-back overlaps the next chunk's computation instead of
stalling it (tensorstore's own ``file_io_sync`` would fsync inside the write). ``open_resumable`` reopens such an array when its
``fingerprint`` (a digest of everything that determines the values) matches, and the
writer's ``written`` then holds the chunks to skip.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from jaxsem.errors import InputError
from jaxsem.io.cache import atomic_write_text
from jaxsem.io.out_dir import write_error

COMPLETE_MARKER = ".complete"
STATE_NAME = ".state.json"
_METADATA = "zarr.json"
_MAX_PENDING = 2  # chunks written but not yet committed; each keeps its block in memory


def _spec(path: Path) -> dict[str, Any]:
  # The writer makes chunks durable itself (``_sync_chunk``) before committing them.
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
          "context": {"file_io_sync": False}}


def _fsync(path: Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _sync_chunk(path: Path, index: int) -> None:
  """Makes the files of row chunk ``index`` (zarr v3 keys ``c/<index>/<j>``) and their
  directory entries durable."""
  row_dir = path / "c" / str(index)
  if not row_dir.is_dir():  # another key layout: sync everything rather than guess
    os.sync()
    return
  for name in os.listdir(row_dir):
    _fsync(row_dir / name)
  for directory in (row_dir, path / "c", path):
    _fsync(directory)


def is_complete(path: str | os.PathLike) -> bool:
  """True when the array at ``path`` was finished (its marker was written)."""
  return (Path(path) / COMPLETE_MARKER).is_file()


class ZarrWriter:
  """Writes row blocks of a ``[N, S]`` float32 zarr v3 array; a sink for ``project_chunked``.

  Attributes:
    path: Directory of the array.
    shape: ``(N, S)``.
    chunk_rows: Rows per chunk (and per ``write``, except the last).
    written: Start rows of the blocks written so far.
  """

  def __init__(self, path: Path, store: ts.TensorStore, chunk_rows: int, attributes: dict[str, Any],
               fingerprint: str | None = None, written: set[int] | None = None):
    self.path = path
    self.store = store
    self.shape = tuple(int(x) for x in store.shape)
    self.chunk_rows = chunk_rows
    self.attributes = attributes
    self.fingerprint = fingerprint
    self.written: set[int] = set(written or ())
    self.resumed = len(self.written)
    self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
    self._worker: concurrent.futures.ThreadPoolExecutor | None = None

  def write(self, start: int, block: np.ndarray) -> None:
    """Writes ``block [rows, S]`` at row ``start`` and waits until it is on disk (and committed).

    Raises:
      InputError: If the block is not chunk-aligned or has the wrong shape, or a write failed.
    """
    self.write_async(start, block)
    self.flush()

  def write_async(self, start: int, block: np.ndarray) -> None:
    """Starts writing ``block`` at row ``start`` and returns; a worker thread commits the chunk
    (lists it in ``written`` and the state file) once its bytes are stored and synced. At most
    ``_MAX_PENDING`` chunks wait to be committed: beyond that the oldest is waited for first.

    Raises:
      InputError: As ``write``; a failed write is reported by the call that waits for it.
    """
    block = np.asarray(block, np.float32)
    n, s = self.shape
    expected = min(self.chunk_rows, n - start)
    if start % self.chunk_rows or not 0 <= start < n or block.shape != (expected, s):
      raise InputError(f"Block at row {start} of shape {block.shape} does not fill one chunk of"
                       f" {self.path}; expected a multiple of {self.chunk_rows} and shape {(expected, s)}.")
    while len(self._pending) >= _MAX_PENDING:
      self._wait_oldest()
    try:
      future = self.store[start:start + expected].write(block)
    except ValueError as e:  # tensorstore reports I/O failures (full disk, read-only) as ValueError
      raise _io_error(self.path, e) from None
    if self._worker is None:
      self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zarr-commit")
    # One worker: chunks are committed in the order written. The block stays referenced until stored.
    self._pending.append(self._worker.submit(self._store_and_commit, start, future, block))

  def _store_and_commit(self, start: int, future: Any, block: np.ndarray) -> None:
    del block
    future.result()
    _sync_chunk(self.path, start // self.chunk_rows)
    self.written.add(start)
    if self.fingerprint is not None:
      self._save_state()

  def _wait_oldest(self) -> None:
    try:
      self._pending.popleft().result()
    except ValueError as e:
      raise _io_error(self.path, e) from None
    except OSError as e:
      raise write_error(self.path, e) from None

  def flush(self) -> None:
    """Waits until every chunk written so far is stored, synced and committed.

    Raises:
      InputError: for the first chunk that failed (the others are still waited for).
    """
    error = None
    while self._pending:
      try:
        self._wait_oldest()
      except InputError as e:
        error = error or e
    if error is not None:
      raise error

  def _save_state(self) -> None:
    _write_state(self.path, self.fingerprint, self.shape, self.chunk_rows, self.written)

  __call__ = write

  def missing(self) -> list[int]:
    """Start rows of the chunks not written yet by this writer."""
    return [r for r in range(0, self.shape[0], self.chunk_rows) if r not in self.written]

  def finalize(self) -> Path:
    """Marks the array complete once every chunk has been written; returns its path.

    Raises:
      InputError: If some chunks were never written.
    """
    self.flush()
    if self._worker is not None:
      self._worker.shutdown()
      self._worker = None
    missing = self.missing()
    if missing:
      raise InputError(f"{self.path} is incomplete: {len(missing)} row blocks were not written"
                       f" (first at row {missing[0]}).")
    marker = {"shape": list(self.shape), "chunk_rows": self.chunk_rows, "attributes": self.attributes,
              "fingerprint": self.fingerprint}
    try:
      atomic_write_text(self.path / COMPLETE_MARKER, json.dumps(marker, sort_keys=True))
    except OSError as e:
      raise write_error(self.path, e) from None
    return self.path


def _io_error(path: Path, e: ValueError) -> InputError:
  text = str(e)
  for code, name in ((errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"),
                     (errno.EACCES, "Permission denied"), (errno.EDQUOT, "Disk quota exceeded")):
    if name.lower() in text.lower():
      return write_error(path, OSError(code, name))
  return InputError(f"{path}: cannot write the zarr array ({text.splitlines()[0][:200]}); check the directory."
                    f" Work already committed there is kept: rerun the same command to resume.")


def create(path: str | os.PathLike, shape: tuple[int, int], chunk_rows: int, *, chunk_cols: int | None = None,
           attributes: dict[str, Any] | None = None, overwrite: bool = False, fingerprint: str | None = None,
           replace_any: bool = False) -> ZarrWriter:
  """Creates an empty float32 array for a projection and returns its writer.

  Args:
    path: Directory to create; must not exist, be empty, or (with ``overwrite``)
      hold a zarr array, which is deleted.
    shape: ``(N, S)`` rows x directions.
    chunk_rows: Rows per chunk: the ``chunk_rows`` given to ``project_chunked``.
    chunk_cols: Columns per chunk (default all ``S``); smaller makes reading a few
      directions cheaper.
    attributes: JSON-serialisable metadata stored in the array (e.g. direction names).
    overwrite: Replace an existing zarr array at ``path``.
    fingerprint: Record progress in ``.state.json`` for ``open_resumable``.
    replace_any: With ``overwrite``, also replace a partial array whose metadata was
      never written (a run killed while creating it).

  Raises:
    InputError: For a bad shape or chunking, or an existing array/non-empty directory.
  """
  path = Path(path)
  n, s = (int(x) for x in shape)
  chunk_cols = s if chunk_cols is None else int(chunk_cols)
  if n <= 0 or s <= 0 or chunk_rows <= 0 or chunk_cols <= 0:
    raise InputError(f"Cannot create {path} with shape {tuple(shape)} and chunks"
                     f" ({chunk_rows}, {chunk_cols}); all sizes must be positive.")
  if path.exists():
    if overwrite and path.is_dir() and ((path / _METADATA).is_file() or replace_any):
      shutil.rmtree(path)
    elif not path.is_dir() or any(path.iterdir()):
      hint = "pass overwrite=True to replace it" if (path / _METADATA).is_file() else "choose another path"
      raise InputError(f"{path} already exists and is not empty; {hint}.")
  attributes = dict(attributes or {})
  spec = _spec(path) | {
      "metadata": {
          "shape": [n, s],
          "chunk_grid": {"name": "regular",
                         "configuration": {"chunk_shape": [min(chunk_rows, n), min(chunk_cols, s)]}},
          "data_type": "float32",
          "fill_value": float("nan"),
          "attributes": attributes,
      },
      "create": True,
  }
  if fingerprint is not None:
    # The state goes first, so that a run killed while creating the array is recognised
    # as its own unfinished work and started again, not taken for someone else's.
    _write_state(path, fingerprint, (n, s), chunk_rows, ())
  try:
    store = ts.open(spec).result()
  except ValueError as e:
    raise _io_error(path, e) from None
  return ZarrWriter(path, store, chunk_rows, attributes, fingerprint)


def _write_state(path: Path, fingerprint: str, shape, chunk_rows: int, done) -> None:
  """Atomically (re)writes ``path/.state.json``: the fingerprint and the committed chunks."""
  state = {"fingerprint": fingerprint, "shape": [int(x) for x in shape], "chunk_rows": chunk_rows,
           "done": sorted(done)}
  try:
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / STATE_NAME, json.dumps(state))
  except OSError as e:
    raise write_error(path, e) from None


def _read_state(path: Path) -> dict[str, Any] | None:
  try:
    state = json.loads((path / STATE_NAME).read_text())
  except (OSError, ValueError):
    return None
  return state if isinstance(state, dict) else None


def open_resumable(path: str | os.PathLike, shape: tuple[int, int], chunk_rows: int, *, fingerprint: str,
                   attributes: dict[str, Any] | None = None, overwrite: bool = False,
                   what: str = "--out_dir") -> ZarrWriter:
  """Reopens the unfinished (or finished) array at ``path`` if it has ``fingerprint``, else creates it.

  Args:
    path: Directory of the array.
    shape, chunk_rows, attributes: As ``create``.
    fingerprint: Digest of everything that determines the values; a resumed array
      must have been started with the same one.
    overwrite: Replace an array at ``path`` that was made from other inputs.
    what: The flag named in errors.

  Returns:
    A writer whose ``written`` lists the chunks already committed (all of them when the
    array is complete; ``finalize`` then just rewrites the marker).

  Raises:
    InputError: if ``path`` holds an array of other inputs (and not ``overwrite``), or a
      non-array directory.
  """
  path = Path(path)
  state = _read_state(path)
  if state is not None and state.get("fingerprint") == fingerprint:
    # Our own run's array (or a run killed while creating it, when zarr.json is missing).
    if (path / _METADATA).is_file() and state.get("shape") == [int(x) for x in shape] \
        and state.get("chunk_rows") == chunk_rows:
      try:
        store = ts.open(_spec(path) | {"open": True}).result()
      except ValueError:
        store = None  # unreadable metadata: start again below
      if store is not None and tuple(store.shape) == tuple(shape):
        done = {int(r) for r in state.get("done", []) if 0 <= int(r) < shape[0] and not int(r) % chunk_rows}
        return ZarrWriter(path, store, chunk_rows, dict(attributes or {}), fingerprint, done)
  elif path.exists() and any(path.iterdir()) and not overwrite:
    raise InputError(f"{path} holds a projection of other inputs (model, scales or options differ); pass "
                     f"--overwrite to replace it, or choose another {what}.")
  return create(path, shape, chunk_rows, attributes=attributes, overwrite=True, fingerprint=fingerprint,
                replace_any=True)


def open_for_read(path: str | os.PathLike, require_complete: bool = True) -> ts.TensorStore:
  """Opens a projection array lazily; index it and call ``.read().result()``.

  Raises:
    InputError: If there is no array at ``path``, or it was never finished and
      ``require_complete``.
  """
  path = Path(path)
  if not (path / _METADATA).is_file():
    raise InputError(f"No zarr array at {path}.")
  if require_complete and not is_complete(path):
    raise InputError(f"{path} is an unfinished projection (no {COMPLETE_MARKER} marker); rerun it.")
  return ts.open(_spec(path) | {"open": True}, read=True).result()


def attributes(path: str | os.PathLike) -> dict[str, Any]:
  """The ``attributes`` stored with the array at ``path``."""
  return json.loads((Path(path) / _METADATA).read_text()).get("attributes", {})
