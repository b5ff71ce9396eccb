"""Fast dequantization of GGML tensor data to float32 with vectorised numpy.

Every supported type is a sequence of fixed-size blocks; a block holds ``block_size``
weights in ``type_size`` bytes. Each kernel below decodes a 2-D array of blocks
``[n, type_size]`` (uint8) into a preallocated ``[n, block_size]`` float32 array.
The driver walks a tensor in chunks of blocks so temporaries stay cache-sized, and
spreads chunks over a small thread pool (numpy releases the GIL in its loops).

Results are bit-identical to ``gguf.quants.dequantize``: every kernel performs the
same float32 operations in the same order (e.g. ``(d * q) + m``, ``(d * sc) * q - dmin * m``).

Block layouts (little-endian; ``f16`` scales)::

    Q8_0  34 B / 32:  d | int8 q[32]                          x = d * q
    Q4_0  18 B / 32:  d | q4[16]                              x = d * (q - 8)
    Q4_1  20 B / 32:  d | m | q4[16]                          x = d * q + m
    Q5_0  22 B / 32:  d | qh u32 | q4[16]                     x = d * (q - 16)
    Q5_1  24 B / 32:  d | m | qh u32 | q4[16]                 x = d * q + m
    Q4_K 144 B / 256: d | dmin | scales 6-bit x 16 [12] | q4[128]
    Q5_K 176 B / 256: d | dmin | scales [12] | qh[32] | q4[128]
    Q6_K 210 B / 256: ql[128] | qh[64] | int8 scales[16] | d

In the 32-weight types, weight ``j < 16`` is the low nibble of byte ``j`` and weight
``j >= 16`` the high nibble of byte ``j - 16``; bit ``j`` of ``qh`` is the fifth bit.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Callable

import numpy as np

from jaxsem.errors import InputError

# GGML type ids (``gguf.GGMLQuantizationType``), spelled out so this module needs no
# import of the gguf package at load time.
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q4_K, Q5_K, Q6_K, BF16 = 12, 13, 14, 30

TYPE_NAMES: dict[int, str] = {
    F32: "F32", F16: "F16", BF16: "BF16", Q8_0: "Q8_0", Q4_0: "Q4_0", Q4_1: "Q4_1",
    Q5_0: "Q5_0", Q5_1: "Q5_1", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K",
}

# Weights decoded per chunk: small enough that a chunk's temporaries stay in cache.
_CHUNK_WEIGHTS = 1 << 18
_MAX_THREADS = 8

Kernel = Callable[[np.ndarray, np.ndarray], None]


def type_name(ggml_type: int) -> str:
  """Human-readable name of a GGML type id, e.g. ``"Q4_K"`` (``"type 99"`` if unknown)."""
  if ggml_type in TYPE_NAMES:
    return TYPE_NAMES[ggml_type]
  try:
    from gguf.constants import GGMLQuantizationType
    return GGMLQuantizationType(ggml_type).name
  except (ImportError, ValueError):
    return f"type {ggml_type}"


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
  """The f16 scale at byte ``start`` of every block, as float32 ``[n, 1]``."""
  return blocks[:, start:start + 2].view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, q: np.ndarray) -> None:
  """Splits bytes ``qs [n, 16]`` into ``q [n, 32]``: low nibbles first, then high."""
  np.bitwise_and(qs, 0x0F, out=q[:, :16])
  np.right_shift(qs, 4, out=q[:, 16:])


def _fifth_bits(qh: np.ndarray, q: np.ndarray) -> None:
  """ORs bit ``j`` of the little-endian 32-bit ``qh [n, 4]`` into ``q[:, j]`` as bit 4."""
  bits = np.unpackbits(qh, axis=1, bitorder="little")
  np.left_shift(bits, 4, out=bits)
  np.bitwise_or(q, bits, out=q)


def _q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
  np.multiply(blocks[:, 2:].view(np.int8), _f16(blocks, 0), out=out)


def _q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
  q = np.empty(out.shape, np.uint8)
  _nibbles(blocks[:, 2:], q)
  qi = q.view(np.int8)
  np.subtract(qi, np.int8(8), out=qi)
  np.multiply(qi, _f16(blocks, 0), out=out)


def _q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
  q = np.empty(out.shape, np.uint8)
  _nibbles(blocks[:, 4:], q)
  np.multiply(q, _f16(blocks, 0), out=out)
  np.add(out, _f16(blocks, 2), out=out)


def _q5_0(blocks: np.ndarray, out: np.ndarray) -> None:
  q = np.empty(out.shape, np.uint8)
  _nibbles(blocks[:, 6:], q)
  _fifth_bits(blocks[:, 2:6], q)
  qi = q.view(np.int8)
  np.subtract(qi, np.int8(16), out=qi)
  np.multiply(qi, _f16(blocks, 0), out=out)


def _q5_1(blocks: np.ndarray, out: np.ndarray) -> None:
  q = np.empty(out.shape, np.uint8)
  _nibbles(blocks[:, 8:], q)
  _fifth_bits(blocks[:, 4:8], q)
  np.multiply(q, _f16(blocks, 0), out=out)
  np.add(out, _f16(blocks, 2), out=out)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Unpacks the 12-byte 6-bit scales/mins of Q4_K/Q5_K into float32 ``[n, 8]`` each.

  Bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3; scales/mins 4-7 take
  their low 4 bits from bytes 8-11 (low/high nibble) and top 2 bits from the spare
  top bits of bytes 0-3 / 4-7.
  """
  a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
  n = packed.shape[0]
  sc = np.empty((n, 8), np.uint8)
  mn = np.empty((n, 8), np.uint8)
  np.bitwise_and(a, 0x3F, out=sc[:, :4])
  np.bitwise_and(b, 0x3F, out=mn[:, :4])
  np.bitwise_or(c & 0x0F, (a >> 2) & 0x30, out=sc[:, 4:])
  np.bitwise_or(c >> 4, (b >> 2) & 0x30, out=mn[:, 4:])
  return sc.astype(np.float32), mn.astype(np.float32)


def _k_low_nibbles(qs: np.ndarray, q: np.ndarray) -> None:
  """Splits ``qs [n, 128]`` into ``q [n, 8, 32]``: sub-block 2g low, 2g+1 high nibbles of group g."""
  groups = qs.reshape(qs.shape[0], 4, 32)
  np.bitwise_and(groups, 0x0F, out=q[:, 0::2])
  np.right_shift(groups, 4, out=q[:, 1::2])


def _k_affine(blocks: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:
  """``out = (d * sc) * q - dmin * m`` per 32-weight sub-block (Q4_K, Q5_K)."""
  sc, mn = _k_scales(blocks[:, 4:16])
  np.multiply(sc, _f16(blocks, 0), out=sc)
  np.multiply(mn, _f16(blocks, 2), out=mn)
  out3 = out.reshape(out.shape[0], 8, 32)
  np.multiply(q, sc[:, :, None], out=out3)
  np.subtract(out3, mn[:, :, None], out=out3)


def _q4_k(blocks: np.ndarray, out: np.ndarray) -> None:
  q = np.empty((blocks.shape[0], 8, 32), np.uint8)
  _k_low_nibbles(blocks[:, 16:144], q)
  _k_affine(blocks, q, out)


def _q5_k(blocks: np.ndarray, out: np.ndarray) -> None:
  n = blocks.shape[0]
  q = np.empty((n, 8, 32), np.uint8)
  _k_low_nibbles(blocks[:, 48:176], q)
  # Bit s of qh[p] is the fifth bit of weight p of sub-block s.
  bits = np.unpackbits(blocks[:, 16:48], axis=1, bitorder="little").reshape(n, 32, 8)
  np.left_shift(bits, 4, out=bits)
  np.bitwise_or(q, bits.transpose(0, 2, 1), out=q)
  _k_affine(blocks, q, out)


def _q6_k(blocks: np.ndarray, out: np.ndarray) -> None:
  # Two halves of 128 weights; in half h, quarter k (32 weights, position p) takes
  # its low 4 bits from ql[h, (k % 2) * 32 + p] (nibble k // 2) and its top 2 bits
  # from bits 2k..2k+1 of qh[h, p]. Each 16 weights share one int8 scale.
  n = blocks.shape[0]
  ql = blocks[:, 0:128].reshape(n, 2, 64)
  qh = blocks[:, 128:192].reshape(n, 2, 32)
  q = np.empty((n, 2, 4, 32), np.uint8)
  np.bitwise_and(ql[:, :, :32], 0x0F, out=q[:, :, 0])
  np.bitwise_and(ql[:, :, 32:], 0x0F, out=q[:, :, 1])
  np.right_shift(ql[:, :, :32], 4, out=q[:, :, 2])
  np.right_shift(ql[:, :, 32:], 4, out=q[:, :, 3])
  q[:, :, 0] |= (qh << 4) & 0x30
  q[:, :, 1] |= (qh << 2) & 0x30
  q[:, :, 2] |= qh & 0x30
  q[:, :, 3] |= (qh >> 2) & 0x30
  qi = q.view(np.int8)
  np.subtract(qi, np.int8(32), out=qi)
  scale = blocks[:, 192:208].view(np.int8).astype(np.float32)
  np.multiply(scale, _f16(blocks, 208), out=scale)
  np.multiply(qi.reshape(n, 16, 16), scale[:, :, None], out=out.reshape(n, 16, 16))


def _f32(blocks: np.ndarray, out: np.ndarray) -> None:
  np.copyto(out, blocks.view(np.float32))


def _f16_kernel(blocks: np.ndarray, out: np.ndarray) -> None:
  np.copyto(out, blocks.view(np.float16), casting="safe")


def _bf16(blocks: np.ndarray, out: np.ndarray) -> None:
  bits = out.view(np.uint32)
  np.copyto(bits, blocks.view(np.uint16), casting="safe")
  np.left_shift(bits, np.uint32(16), out=bits)


# type -> (weights per block, bytes per block, kernel). Plain float types use
# "blocks" of 1024 weights so chunking works the same way.
_KERNELS: dict[int, tuple[int, int, Kernel]] = {
    F32: (1024, 4096, _f32),
    F16: (1024, 2048, _f16_kernel),
    BF16: (1024, 2048, _bf16),
    Q8_0: (32, 34, _q8_0),
    Q4_0: (32, 18, _q4_0),
    Q4_1: (32, 20, _q4_1),
    Q5_0: (32, 22, _q5_0),
    Q5_1: (32, 24, _q5_1),
    Q4_K: (256, 144, _q4_k),
    Q5_K: (256, 176, _q5_k),
    Q6_K: (256, 210, _q6_k),
}

SUPPORTED_TYPES: tuple[int, ...] = tuple(_KERNELS)


@functools.lru_cache(maxsize=1)
def _pool() -> concurrent.futures.ThreadPoolExecutor:
  workers = max(1, min(_MAX_THREADS, os.cpu_count() or 1))
  return concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jaxsem-dequant")


def _layout(ggml_type: int, n: int) -> tuple[int, int, Kernel]:
  """Block size, bytes per block and kernel; plain floats shrink their block to fit ``n``."""
  block, nbytes, kernel = _KERNELS[ggml_type]
  if block == 1024 and n % block:
    itemsize = nbytes // block
    return 1, itemsize, kernel
  return block, nbytes, kernel


def row_layout(ggml_type: int) -> tuple[int, int]:
  """``(weights, bytes)`` of the smallest run a row of this type can be cut at: one quantization
  block, or one value for the plain float types.

  Raises:
    InputError: the type is not supported.
  """
  if ggml_type not in _KERNELS:
    raise InputError(f"GGML type {type_name(ggml_type)} cannot be dequantized by jaxsem.")
  block, nbytes, _ = _KERNELS[ggml_type]
  if block == 1024:  # plain floats: blocks only batch the work
    return 1, nbytes // block
  return block, nbytes


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...], *,
               out: np.ndarray | None = None, name: str = "tensor", path: str | None = None,
               threads: int | None = None) -> np.ndarray:
  """Decodes GGML tensor bytes to floats.

  Args:
    raw: the tensor's bytes, uint8 ``[nbytes]`` (e.g. ``GGUFFile.raw(name)``; a read-only
      memory map is fine).
    ggml_type: integer GGML type id (``TensorInfo.ggml_type``).
    shape: logical row-major shape of the tensor; its size must be a multiple of the
      type's block size.
    out: optional C-contiguous destination with ``out.size == prod(shape)``; any float
      dtype (non-float32 destinations are filled through a float32 chunk buffer).
    name: tensor name, used in error messages.
    path: file the tensor came from, used in error messages.
    threads: worker threads (default: up to 8, one per core); 1 decodes inline.

  Returns:
    ``out`` reshaped to ``shape`` if given, else a new float32 array of ``shape``.

  Raises:
    InputError: the type is not supported or ``raw`` has the wrong number of bytes.
  """
  where = f"{path}: tensor {name!r}" if path else f"tensor {name!r}"
  if ggml_type not in _KERNELS:
    supported = ", ".join(TYPE_NAMES[t] for t in _KERNELS)
    raise InputError(
        f"{where} has GGML type {type_name(ggml_type)}, which jaxsem cannot dequantize;"
        f" use a GGUF quantized with one of {supported}.")
  n = int(np.prod(shape, dtype=np.int64))
  block, nbytes, kernel = _layout(ggml_type, n)
  raw = np.asarray(raw)
  if raw.dtype != np.uint8:
    raw = raw.reshape(-1).view(np.uint8)
  if n % block or raw.size != n // block * nbytes:
    raise InputError(
        f"{where} of type {type_name(ggml_type)} and shape {tuple(shape)} needs"
        f" {n // block * nbytes if n % block == 0 else 'whole blocks of'} bytes but has {raw.size};"
        " the file is corrupt.")
  if out is None:
    out = np.empty(shape, np.float32)
  elif out.size != n or not out.flags.c_contiguous:
    raise ValueError(f"out must be C-contiguous with {n} elements, got {out.shape} {out.strides}")
  n_blocks = n // block
  blocks = raw.reshape(n_blocks, nbytes)
  dest = out.reshape(n_blocks, block)
  direct = out.dtype == np.float32
  step = max(1, _CHUNK_WEIGHTS // block)

  def run(start: int) -> None:
    stop = min(start + step, n_blocks)
    # Corrupt scales (inf/nan) decode to inf/nan, as in the reference, without warnings.
    with np.errstate(all="ignore"):
      if direct:
        kernel(blocks[start:stop], dest[start:stop])
      else:
        tmp = np.empty((stop - start, block), np.float32)
        kernel(blocks[start:stop], tmp)
        dest[start:stop] = tmp

  starts = range(0, n_blocks, step)
  if threads == 1 or len(starts) < 4:
    for s in starts:
      run(s)
  else:
    pool = _pool() if threads is None else concurrent.futures.ThreadPoolExecutor(threads)
    try:
      for _ in pool.map(run, starts):
        pass
    finally:
      if threads is not None:
        pool.shutdown()
  return out.reshape(shape)
