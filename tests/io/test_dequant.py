"""Dequantization is bit-identical to gguf's reference numpy code for every supported type."""


import gguf
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from jaxsem.errors import InputError
from jaxsem.io import dequant
from tests import gguf_fixtures as fx

QUANTIZABLE = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# K-quants: gguf has no quantizer; byte offsets of the f16 super-block scales.
K_SCALE_OFFSETS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _bits(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x, np.float32).view(np.uint32)


def _reference(raw: np.ndarray, type_name: str, shape: tuple) -> np.ndarray:
  rows = raw.reshape(int(np.prod(shape[:-1])), -1)
  return gguf.quants.dequantize(rows, T[type_name]).reshape(shape)


def _random_k_blocks(type_name: str, n_blocks: int, rng) -> np.ndarray:
  size = gguf.GGML_QUANT_SIZES[T[type_name]][1]
  raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
  for at in K_SCALE_OFFSETS[type_name]:
    scale = (rng.random((n_blocks, 1)) * 0.02).astype(np.float16)
    raw[:, at:at + 2] = scale.view(np.uint8)
  return raw.reshape(-1)


@pytest.mark.parametrize("type_name", QUANTIZABLE)
@pytest.mark.parametrize("shape", [(64, 96), (3, 5, 128), (1, 32)])
def test_matches_gguf_reference_bit_for_bit(type_name, shape):
  rng = np.random.default_rng(0)
  x = (rng.standard_normal(shape) * rng.uniform(0.01, 3, shape[:-1] + (1,))).astype(np.float32)
  raw = np.ascontiguousarray(gguf.quants.quantize(x, T[type_name])).reshape(-1).view(np.uint8)
  got = dequant.dequantize(raw, int(T[type_name]), shape)
  want = _reference(raw, type_name, shape)
  assert got.shape == shape and got.dtype == np.float32
  np.testing.assert_array_equal(_bits(got), _bits(want))
  if type_name == "F32":
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("type_name", sorted(K_SCALE_OFFSETS))
def test_k_quants_match_gguf_reference_bit_for_bit(type_name):
  rng = np.random.default_rng(1)
  shape = (12, 512)
  raw = _random_k_blocks(type_name, 12 * 2, rng)
  got = dequant.dequantize(raw, int(T[type_name]), shape)
  want = _reference(raw, type_name, shape)
  np.testing.assert_array_equal(_bits(got), _bits(want))
  assert np.abs(got).max() > 0


@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K"])
def test_fixture_k_quantizers_round_trip(type_name):
  # The test-only quantizers must produce blocks that gguf decodes to nearly the input.
  rng = np.random.default_rng(2)
  x = rng.standard_normal((8, 512)).astype(np.float32)
  data, _ = fx.quantize(x, type_name)
  raw = data.reshape(-1)
  got = dequant.dequantize(raw, int(T[type_name]), x.shape)
  np.testing.assert_array_equal(_bits(got), _bits(_reference(raw, type_name, x.shape)))
  worst, typical = {"Q4_K": (0.3, 0.1), "Q6_K": (0.1, 0.03)}[type_name]
  assert np.abs(got - x).max() < worst
  assert np.abs(got - x).mean() < typical


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_0", "F16"])
def test_chunked_and_threaded_paths_agree(type_name):
  # Enough weights for several chunks, and a count that is not a multiple of a chunk.
  rng = np.random.default_rng(3)
  shape = (3 * dequant._CHUNK_WEIGHTS // 512 + 7, 512)
  x = rng.standard_normal(shape).astype(np.float32)
  raw = np.ascontiguousarray(gguf.quants.quantize(x, T[type_name])).reshape(-1).view(np.uint8)
  inline = dequant.dequantize(raw, int(T[type_name]), shape, threads=1)
  pooled = dequant.dequantize(raw, int(T[type_name]), shape)
  two = dequant.dequantize(raw, int(T[type_name]), shape, threads=2)
  np.testing.assert_array_equal(_bits(inline), _bits(_reference(raw, type_name, shape)))
  np.testing.assert_array_equal(_bits(pooled), _bits(inline))
  np.testing.assert_array_equal(_bits(two), _bits(inline))


def test_out_argument_any_float_dtype():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((40, 64)).astype(np.float32)
  raw = gguf.quants.quantize(x, T.Q8_0).reshape(-1)
  want = dequant.dequantize(raw, int(T.Q8_0), x.shape)
  out32 = np.full(x.shape, np.nan, np.float32)
  assert dequant.dequantize(raw, int(T.Q8_0), x.shape, out=out32) is not None
  np.testing.assert_array_equal(out32, want)
  out16 = np.zeros(x.size, ml_dtypes.bfloat16)
  result = dequant.dequantize(raw, int(T.Q8_0), x.shape, out=out16)
  assert result.shape == x.shape and result.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(out16.reshape(x.shape), want.astype(ml_dtypes.bfloat16))
  with pytest.raises(ValueError):
    dequant.dequantize(raw, int(T.Q8_0), x.shape, out=np.zeros((64, 40), np.float32).T)


def test_plain_float_with_odd_size():
  x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3) / 7
  for type_name, data in [("F32", x), ("F16", x.astype(np.float16))]:
    got = dequant.dequantize(data.reshape(-1).view(np.uint8), int(T[type_name]), x.shape)
    np.testing.assert_array_equal(got, data.astype(np.float32))


@pytest.mark.parametrize("type_name", ["Q2_K", "IQ4_NL", "Q8_1"])
def test_unsupported_type_names_tensor_and_type(type_name):
  qtype = T[type_name]
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  raw = np.zeros(size * 2, np.uint8)
  with pytest.raises(InputError, match=rf"model\.gguf: tensor 'blk\.0\.attn_q\.weight'.*{type_name}"):
    dequant.dequantize(raw, int(qtype), (2 * block,), name="blk.0.attn_q.weight", path="model.gguf")


def test_wrong_byte_count_is_input_error():
  raw = np.zeros(34 * 3 - 1, np.uint8)
  with pytest.raises(InputError, match="w.gguf: tensor 'x'.*corrupt"):
    dequant.dequantize(raw, int(T.Q8_0), (96,), name="x", path="w.gguf")


def test_type_name():
  assert dequant.type_name(int(T.Q4_K)) == "Q4_K"
  assert dequant.type_name(int(T.IQ2_XS)) == "IQ2_XS"
  assert dequant.type_name(9999) == "type 9999"
  assert set(dequant.TYPE_NAMES) == set(dequant.SUPPORTED_TYPES)


def test_q8_0_decodes_a_large_tensor_into_a_given_buffer():
  # 16M weights into a caller's buffer (the loader's path); its speed is in benchmarks/.
  rng = np.random.default_rng(5)
  n_blocks = (1 << 24) // 32
  raw = rng.integers(0, 256, (n_blocks, 34), dtype=np.uint8)
  raw[:, :2] = np.float16(0.01).reshape(1, 1).view(np.uint8)
  out = np.empty((1 << 24,), np.float32)
  out.fill(0)
  dequant.dequantize(raw.reshape(-1), int(T.Q8_0), out.shape, out=out)
  assert np.isclose(out[1], raw[0, 3].view(np.int8) * np.float32(np.float16(0.01)))
