"""A fast, lazy GGUF reader: header, metadata and tensor index, tensor data memory-mapped.

The stock ``gguf.GGUFReader`` builds a numpy view for every element of every metadata
array, which takes many seconds for a 262k-entry vocabulary. This reader parses the
header once with ``struct`` and ``numpy.frombuffer`` and leaves tensor bytes in the
memory map until asked for. Nothing in a model file is ever executed or unpickled.

Layout (GGUF v2/v3, little-endian)::

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
    padding to `general.alignment` (default 32) | tensor data

A hostile header cannot make the reader recurse deeply, allocate more than the file
holds or divide by zero: arrays nest at most ``MAX_ARRAY_DEPTH`` levels, an array's
count must fit in the bytes left, ``general.alignment`` must be a positive integer, and
tensor sizes are computed exactly (no int64 overflow) and must fit in the file.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jaxsem.errors import InputError
from jaxsem.io import host_memory

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_ALIGNMENT = 1 << 30
# Arrays of arrays are legal GGUF but no model uses more than one level; deeper is hostile.
MAX_ARRAY_DEPTH = 8

# GGUF metadata value types -> (struct format, numpy dtype).
_SCALAR_TYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("<B", np.dtype("<u1")),
    1: ("<b", np.dtype("<i1")),
    2: ("<H", np.dtype("<u2")),
    3: ("<h", np.dtype("<i2")),
    4: ("<I", np.dtype("<u4")),
    5: ("<i", np.dtype("<i4")),
    6: ("<f", np.dtype("<f4")),
    7: ("<?", np.dtype("?")),
    10: ("<Q", np.dtype("<u8")),
    11: ("<q", np.dtype("<i8")),
    12: ("<d", np.dtype("<f8")),
}
_STRING = 8
_ARRAY = 9
# Fewest bytes an element takes: an empty string is its u64 length, an empty array its u32 type and u64 count.
_LEAST_BYTES = {_STRING: 8, _ARRAY: 12}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """One entry of the tensor index.

  Attributes:
    name: GGUF tensor name, e.g. ``blk.0.attn_q.weight``.
    shape: logical shape in row-major (numpy) order, i.e. GGUF's ``ne`` reversed.
    ggml_type: integer ``GGMLQuantizationType``.
    offset: absolute byte offset of the data in the file.
    nbytes: number of bytes of the (possibly quantized) data.
  """

  name: str
  shape: tuple[int, ...]
  ggml_type: int
  offset: int
  nbytes: int


class _Cursor:
  """Bounds-checked little-endian reader over a buffer."""

  def __init__(self, buf, path: str):
    self.buf = buf
    self.pos = 0
    self.path = path

  def take(self, n: int) -> memoryview:
    if n < 0 or self.pos + n > len(self.buf):
      raise InputError(
          f"{self.path}: GGUF header is truncated or corrupt (needs byte {self.pos + n},"
          f" file has {len(self.buf)}); re-download or re-assemble the file."
      )
    view = memoryview(self.buf)[self.pos:self.pos + n]
    self.pos += n
    return view

  def scalar(self, fmt: str):
    size = struct.calcsize(fmt)
    return struct.unpack(fmt, self.take(size))[0]

  def string(self) -> str:
    n = self.scalar("<Q")
    raw = self.take(n)
    return bytes(raw).decode("utf-8", errors="replace")

  def value(self, vtype: int, depth: int = 0) -> Any:
    if vtype in _SCALAR_TYPES:
      return self.scalar(_SCALAR_TYPES[vtype][0])
    if vtype == _STRING:
      return self.string()
    if vtype == _ARRAY:
      if depth >= MAX_ARRAY_DEPTH:
        raise InputError(f"{self.path}: GGUF metadata arrays are nested more than {MAX_ARRAY_DEPTH} deep;"
                         " the file is corrupt.")
      etype = self.scalar("<I")
      count = self.scalar("<Q")
      # Every element takes at least this many bytes: a count the file cannot hold is refused
      # before any list is built.
      scalar = _SCALAR_TYPES.get(etype)
      least = scalar[1].itemsize if scalar else _LEAST_BYTES.get(etype, 0)
      if count * least > len(self.buf) - self.pos:
        raise InputError(f"{self.path}: a GGUF metadata array claims {count} elements, more than the"
                         " rest of the file holds; the file is truncated or corrupt.")
      if etype in _SCALAR_TYPES:
        dtype = _SCALAR_TYPES[etype][1]
        raw = self.take(count * dtype.itemsize)
        return np.frombuffer(raw, dtype=dtype).copy()
      if etype == _STRING:
        return self._strings(count)
      if etype == _ARRAY:
        return [self.value(_ARRAY, depth + 1) for _ in range(count)]
      raise InputError(f"{self.path}: unknown GGUF array element type {etype}; the file is corrupt.")
    raise InputError(f"{self.path}: unknown GGUF value type {vtype}; the file is corrupt.")

  def _strings(self, count: int) -> list[str] | StringArray:
    """A string array: a list when short, else a ``StringArray`` decoded on first use."""
    # Hot loop for vocabularies: only the lengths are read here (no per-item decode).
    buf, start, end = self.buf, self.pos, len(self.buf)
    pos, seen = start, 0
    from_bytes = int.from_bytes
    for seen in range(1, count + 1):
      if pos + 8 > end:
        seen -= 1
        break
      pos += 8 + from_bytes(buf[pos:pos + 8], "little")
      if pos > end:
        seen -= 1
        break
    if seen != count:
      raise InputError(f"{self.path}: GGUF string array is truncated; the file is corrupt.")
    self.pos = pos
    strings = StringArray(bytes(buf[start:pos]), count)
    return strings if count > _LAZY_STRINGS else list(strings)


# String arrays longer than this (vocabularies, merges) are decoded only when read: a
# load served by the params and tokenizer caches needs just their lengths.
_LAZY_STRINGS = 1024


class StringArray(Sequence):
  """A GGUF string array kept as its raw bytes until an element is read.

  ``len()`` is free; indexing or iterating decodes every string once (UTF-8, invalid
  bytes replaced) and keeps the list. Compares equal to a list of the same strings.
  """

  def __init__(self, raw: bytes, count: int):
    self._raw, self._count, self._list = raw, count, None

  def _decoded(self) -> list[str]:
    if self._list is None:
      raw, pos, out = self._raw, 0, []
      append, from_bytes = out.append, int.from_bytes
      for _ in range(self._count):
        n = from_bytes(raw[pos:pos + 8], "little")
        append(raw[pos + 8:pos + 8 + n].decode("utf-8", errors="replace"))
        pos += 8 + n
      self._list, self._raw = out, b""
    return self._list

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index):
    return self._decoded()[index]

  def __iter__(self) -> Iterator[str]:
    return iter(self._decoded())

  def __eq__(self, other) -> bool:
    if isinstance(other, StringArray):
      other = other._decoded()
    return isinstance(other, list) and self._decoded() == other

  __hash__ = None  # mutable-list semantics, as the list it stands for

  def __repr__(self) -> str:
    return f"StringArray({self._count} strings)"


def _ggml_nbytes(ggml_type: int, shape: tuple[int, ...], path: str, name: str) -> int:
  from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

  try:
    qtype = GGMLQuantizationType(ggml_type)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
  except (ValueError, KeyError):
    raise InputError(
        f"{path}: tensor {name!r} has unknown GGML type {ggml_type}; this file needs a newer reader."
    ) from None
  n = math.prod(shape)  # exact: np.prod in int64 wraps around for hostile dims
  if shape and shape[-1] % block_size:
    raise InputError(
        f"{path}: tensor {name!r} row length {shape[-1]} is not a multiple of the"
        f" {qtype.name} block size {block_size}; the file is corrupt."
    )
  return n // block_size * type_size


class GGUFFile:
  """An open GGUF file: ``metadata`` dict, ``tensors`` index, lazy raw tensor bytes.

  Example::

    with GGUFFile(path) as f:
      arch = f.metadata["general.architecture"]
      raw = f.raw("token_embd.weight")   # uint8 view into the memory map
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if not os.path.exists(self.path):
      raise InputError(f"{self.path}: no such file; give the path of a .gguf file or a known model name.")
    if os.path.isdir(self.path):
      raise InputError(f"{self.path}: is a directory, expected a .gguf file.")
    size = os.path.getsize(self.path)
    if size < 24:
      raise InputError(f"{self.path}: file is too small ({size} bytes) to be GGUF; it is truncated or not GGUF.")
    self._fh = open(self.path, "rb")
    self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
      self._parse()
    except Exception:
      self.close()
      raise

  def _parse(self) -> None:
    cur = _Cursor(self._mm, self.path)
    if bytes(cur.take(4)) != _MAGIC:
      raise InputError(f"{self.path}: not a GGUF file (bad magic bytes).")
    self.version = cur.scalar("<I")
    if self.version not in (2, 3):
      raise InputError(f"{self.path}: GGUF version {self.version} is not supported (2 and 3 are).")
    n_tensors = cur.scalar("<Q")
    n_kv = cur.scalar("<Q")
    if n_tensors > 1 << 24 or n_kv > 1 << 24:
      raise InputError(f"{self.path}: GGUF header counts are implausible; the file is corrupt.")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
      key = cur.string()
      metadata[key] = cur.value(cur.scalar("<I"))
    self.metadata = metadata
    entries = []
    for _ in range(n_tensors):
      name = cur.string()
      n_dims = cur.scalar("<I")
      if n_dims > 8:
        raise InputError(f"{self.path}: tensor {name!r} has {n_dims} dims; the file is corrupt.")
      ne = [cur.scalar("<Q") for _ in range(n_dims)]
      ggml_type = cur.scalar("<I")
      offset = cur.scalar("<Q")
      entries.append((name, tuple(reversed(ne)), ggml_type, offset))
    align = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or isinstance(align, bool) or not 0 < align <= _MAX_ALIGNMENT:
      raise InputError(f"{self.path}: general.alignment is {align!r}, not a positive integer up to"
                       f" {_MAX_ALIGNMENT}; the file is corrupt.")
    data_start = (cur.pos + align - 1) // align * align
    self.tensors: dict[str, TensorInfo] = {}
    size = len(self._mm)
    for name, shape, ggml_type, offset in entries:
      nbytes = _ggml_nbytes(ggml_type, shape, self.path, name)
      if nbytes > size:
        raise InputError(f"{self.path}: tensor {name!r} of shape {list(shape)} needs {nbytes} bytes, more"
                         f" than the whole file ({size}); the file is corrupt.")
      start = data_start + offset
      if start + nbytes > size:
        raise InputError(
            f"{self.path}: tensor {name!r} ends at byte {start + nbytes} but the file has {size};"
            " the file is truncated."
        )
      self.tensors[name] = TensorInfo(name, shape, ggml_type, start, nbytes)

  def raw(self, name: str) -> np.ndarray:
    """Raw bytes of tensor ``name`` as a read-only ``uint8`` array (no copy)."""
    info = self.tensors[name]
    return np.frombuffer(self._mm, dtype=np.uint8, count=info.nbytes, offset=info.offset)

  def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
    """Drops tensor ``name``'s pages (its bytes ``[start, stop)``, default all) from this process's
    resident memory (after use)."""
    info = self.tensors[name]
    stop = info.nbytes if stop is None else min(stop, info.nbytes)
    host_memory.drop_pages(self._mm, info.offset + start, stop - start)

  def close(self) -> None:
    mm = getattr(self, "_mm", None)
    if mm is not None:
      try:
        mm.close()
      except BufferError:
        pass  # A caller still holds a view; the map closes when it is collected.
    fh = getattr(self, "_fh", None)
    if fh is not None:
      fh.close()

  def __enter__(self) -> "GGUFFile":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
