"""Keeping host memory near one copy of the weights while loading.

Two things inflate a loader's resident set beyond the arrays it holds: pages of the
memory-mapped checkpoint that were read once and are never needed again, and memory
that the C allocator keeps in its per-thread arenas after temporaries are freed (the
dequantization threads make many). ``drop_pages`` and ``trim`` give both back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap


@functools.lru_cache(maxsize=1)
def _libc():
  name = ctypes.util.find_library("c")
  if not name:
    return None
  try:
    lib = ctypes.CDLL(name)
    lib.malloc_trim  # glibc only
  except (OSError, AttributeError):
    return None
  return lib


def trim() -> None:
  """Returns freed heap memory to the OS (glibc ``malloc_trim``; no-op elsewhere)."""
  lib = _libc()
  if lib is not None:
    lib.malloc_trim(0)


def drop_pages(mm: mmap.mmap, offset: int, length: int) -> None:
  """Drops the resident pages of ``mm[offset:offset + length]`` (read-only file map).

  The data stays in the file (and usually the page cache); reading it again simply
  faults it back in. A no-op where ``madvise`` is unavailable.
  """
  advice = getattr(mmap, "MADV_DONTNEED", None)
  if advice is None or length <= 0:
    return
  start = offset - offset % mmap.PAGESIZE
  try:
    mm.madvise(advice, start, min(len(mm) - start, length + offset - start))
  except (OSError, ValueError):
    pass


def aligned_empty(shape, dtype, alignment: int = 64):
  """``np.empty`` whose data pointer is ``alignment``-byte aligned.

  On CPU, ``jax.device_put`` adopts such a buffer without copying it, so a loaded leaf
  exists once in memory rather than twice while it is transferred.
  """
  import numpy as np

  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + alignment, np.uint8)
  start = -raw.ctypes.data % alignment
  return raw[start:start + nbytes].view(dtype).reshape(shape)
