"""Resumable row evaluations: committed row blocks of a long grid, kept on disk.

A steering grid is a list of rows evaluated in fixed-size batches. ``RowCheckpoint``
stores each finished batch's outputs as one chunk of a zarr array
(``directory/<name>.zarr``, via ``kernels.zarr_out``'s commit protocol), keyed by a
fingerprint of the exact inputs (model file, prompts, readout, the rows' steering
vectors). Running the same evaluation again, after ``kill -9`` or to completion, takes
the committed batches from disk and computes only the rest; a batch that was being
written when the run died is not listed as committed and is computed again. Inputs that
changed give a new fingerprint, and the stale checkpoint is replaced.

Under multi-process runs process 0 owns the files: it decides which batches are
committed, every process skips the same ones, and process 0 sends the stored rows to
the others. A write that fails on process 0 stops every process with its one line.

The whole-vocabulary sweep writes its projection matrix through the same class, with
``read_back=False``: its committed chunks are only skipped, never read into memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jaxsem import distributed
from jaxsem.errors import InputError
from jaxsem.kernels import zarr_out


def digest(*parts) -> str:
  """sha256 over strings, numbers and arrays (their dtype, shape and bytes)."""
  h = hashlib.sha256()
  for part in parts:
    if isinstance(part, np.ndarray) or hasattr(part, "__array__") and not isinstance(part, (str, bytes)):
      a = np.ascontiguousarray(np.asarray(part))
      h.update(f"{a.dtype.str}{a.shape}".encode())
      h.update(a.tobytes())
    else:
      h.update(repr(part).encode())
    h.update(b"\0")
  return h.hexdigest()


class RowCheckpoint:
  """Committed ``[rows, width]`` blocks of one evaluation.

  Attributes:
    path: the zarr array of this evaluation.
    block_rows: rows per block (the evaluation's batch size).
    committed: start rows of the blocks taken from disk (the same on every process).
  """

  def __init__(self, directory: str | os.PathLike, name: str, fingerprint: str, n_rows: int, width: int,
               block_rows: int, *, attributes: dict | None = None, overwrite: bool = True,
               read_back: bool = True, overlap_writes: bool = False):
    """Opens (or starts) ``directory/<name>.zarr`` on process 0 and agrees on its committed blocks.

    Args:
      directory, name: where the array lives.
      fingerprint: digest of everything that determines the rows.
      n_rows, width: the ``[n_rows, width]`` float32 array.
      block_rows: rows per block (and zarr chunk).
      attributes: stored with the array.
      overwrite: replace an array of another fingerprint (else refuse, naming
        ``--overwrite``).
      read_back: load the committed blocks for ``get``; False only skips them.
      overlap_writes: ``commit`` returns while its block is being written (committed by the next
        ``commit`` or ``finalize``), so the next block's work overlaps the write.

    Raises:
      InputError: on every process, when process 0 cannot open or create the array.
    """
    self.path = Path(directory) / f"{name}.zarr"
    self.block_rows = int(block_rows)
    self.n_rows, self.width = int(n_rows), int(width)
    self.overlap_writes = overlap_writes
    self._writer, error = None, None
    if distributed.is_main():
      try:
        self._writer = zarr_out.open_resumable(self.path, (max(self.n_rows, 1), self.width), self.block_rows,
                                               fingerprint=fingerprint, overwrite=overwrite,
                                               attributes=attributes or {"fingerprint": fingerprint})
      except InputError as e:
        error = str(e)
    distributed.agree(error)
    n_blocks = -(-self.n_rows // self.block_rows)
    flags = np.zeros(n_blocks, np.int32)
    if self._writer is not None:
      flags[[r // self.block_rows for r in self._writer.written if r < self.n_rows]] = 1
    flags = np.asarray(distributed.broadcast(flags))
    self.committed = {int(i) * self.block_rows for i in np.flatnonzero(flags)}
    self._stored = self._read_committed() if read_back else {}

  @property
  def committed_rows(self) -> int:
    """Rows in the committed blocks."""
    return sum(min(self.block_rows, self.n_rows - s) for s in self.committed)

  def _read_committed(self) -> dict[int, np.ndarray]:
    starts = sorted(self.committed)
    if not starts:
      return {}
    sizes = [min(self.block_rows, self.n_rows - s) for s in starts]
    flat = np.zeros((sum(sizes), self.width), np.float32)
    if self._writer is not None:
      at = 0
      for s, k in zip(starts, sizes):
        flat[at:at + k] = self._writer.store[s:s + k].read().result()
        at += k
    flat = np.asarray(distributed.broadcast(flat))
    out, at = {}, 0
    for s, k in zip(starts, sizes):
      out[s] = flat[at:at + k]
      at += k
    return out

  def get(self, start: int) -> np.ndarray | None:
    """The committed block at ``start``, or None when it must be computed."""
    return self._stored.get(start)

  def commit(self, start: int, block: np.ndarray) -> None:
    """Stores a computed block; on every process, stops all of them if process 0 cannot write."""
    if self.overlap_writes:
      self._on_main(lambda w: w.write_async(start, np.asarray(block, np.float32)))
    else:
      self._on_main(lambda w: w.write(start, np.asarray(block, np.float32)))

  def finalize(self) -> None:
    """Marks the array complete (every block committed); on every process, as ``commit``."""
    self._on_main(lambda w: w.finalize())

  def _on_main(self, action) -> None:
    error = None
    if self._writer is not None:
      try:
        action(self._writer)
      except InputError as e:
        error = str(e)
    distributed.agree(error)

  def pending(self, starts: Iterable[int]) -> list[int]:
    """The block starts among ``starts`` that still have to be computed."""
    return [s for s in starts if s not in self.committed]
