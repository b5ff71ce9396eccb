"""A zarr v3 array on disk for projections too large to keep in memory.

The array is ``[N, S]`` float32 with row chunks equal to the projection's row blocks,
so every ``write(start, block)`` from ``project_chunked`` fills whole chunks and no
chunk is ever read back and rewritten. Unwritten cells read as NaN (the fill value).

Completion is recorded by a marker file, ``.complete``, written atomically after the
last chunk's write has finished; ``open_for_read`` refuses an array without it. Until
then the directory is a partial result: ``ZarrWriter.written`` lists the row blocks
this writer finished, which is what a resuming writer will need.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from jaxsem.errors import InputError
from jaxsem.io.cache import atomic_write_text

COMPLETE_MARKER = ".complete"
_METADATA = "zarr.json"


def _spec(path: Path) -> dict[str, Any]:
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}


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

  def __init__(self, path: Path, store: ts.TensorStore, chunk_rows: int, attributes: dict[str, Any]):
    self.path = path
    self.store = store
    self.shape = tuple(int(x) for x in store.shape)
    self.chunk_rows = chunk_rows
    self.attributes = attributes
    self.written: set[int] = set()

  def write(self, start: int, block: np.ndarray) -> None:
    """Writes ``block [rows, S]`` at row ``start`` and waits until it is on disk.

    Raises:
      InputError: If the block is not chunk-aligned or has the wrong shape.
    """
    block = np.asarray(block, np.float32)
    n, s = self.shape
    expected = min(self.chunk_rows, n - start)
    if start % self.chunk_rows or not 0 <= start < n or block.shape != (expected, s):
      raise InputError(f"Block at row {start} of shape {block.shape} does not fill one chunk of"
                       f" {self.path}; expected a multiple of {self.chunk_rows} and shape {(expected, s)}.")
    self.store[start:start + expected].write(block).result()
    self.written.add(start)

  __call__ = write

  def missing(self) -> list[int]:
    """Start rows of the chunks not written yet by this writer."""
    return [r for r in range(0, self.shape[0], self.chunk_rows) if r not in self.written]

  def finalize(self) -> Path:
    """Marks the array complete once every chunk has been written; returns its path.

    Raises:
      InputError: If some chunks were never written.
    """
    missing = self.missing()
    if missing:
      raise InputError(f"{self.path} is incomplete: {len(missing)} row blocks were not written"
                       f" (first at row {missing[0]}).")
    marker = {"shape": list(self.shape), "chunk_rows": self.chunk_rows, "attributes": self.attributes}
    atomic_write_text(self.path / COMPLETE_MARKER, json.dumps(marker, sort_keys=True))
    return self.path


def create(path: str | os.PathLike, shape: tuple[int, int], chunk_rows: int, *, chunk_cols: int | None = None,
           attributes: dict[str, Any] | None = None, overwrite: bool = False) -> ZarrWriter:
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
    if (path / _METADATA).is_file() and overwrite:
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
  try:
    store = ts.open(spec).result()
  except ValueError as e:
    raise InputError(f"Cannot create a zarr array at {path}: {e}.") from e
  return ZarrWriter(path, store, chunk_rows, attributes)


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
