"""GGUF -> ModelConfig + params (jaxsem.models.gguf_load): synthetic round trips, broken files, and the real embedded models."""

import gc
import math
import os
import warnings
import weakref
import zlib

import gguf
import jax
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from jax.sharding import Mesh, PartitionSpec

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.models import families
from jaxsem.models import gguf_load as gp
from jaxsem.models.families import gguf_config
from jaxsem.io.gguf_file import GGUFFile
from jaxsem.models.config import RopeScaling
from tests import gguf_fixtures as fx

# Worst-case |dequantized - original| for weights ~ N(0, 0.5^2) in the fixtures.
TOLERANCE = {"F32": 0.0, "F16": 2e-3, "BF16": 2e-2, "Q8_0": 2e-2, "Q5_1": 0.1, "Q5_0": 0.1,
             "Q4_1": 0.2, "Q4_0": 0.2, "Q4_K": 0.3, "Q6_K": 0.1}


def _leaves(params):
  out = {k: v for k, v in params.items() if k != "blocks"}
  out.update({f"blocks/{k}": v for k, v in params["blocks"].items()})
  return out


def _leaf_type(path, types):
  if isinstance(types, str):
    types = {"*": types}
  name = path.split("/")[-1]
  if name.endswith("norm") or name.endswith("bias"):
    return "F32"
  return types.get(name, types.get("*", "F32"))


def _file_reference(path):
  """Every tensor of a file decoded by gguf's own numpy code."""
  with GGUFFile(path) as f:
    out = {}
    for name, info in f.tensors.items():
      rows = f.raw(name).reshape(int(np.prod(info.shape[:-1])), -1)
      out[name] = np.asarray(gguf.quants.dequantize(rows, T(info.ggml_type))).reshape(info.shape)
  return out


ROUND_TRIPS = {
    "llama_tied_f32": (lambda: fx.tiny_llama_config(tied=True), "F32"),
    "llama_untied_gqa_mixed": (lambda: fx.tiny_llama_config(tied=False, n_heads=6, n_kv_heads=2),
                               {"*": "Q8_0", "q": "Q4_0", "k": "Q4_1", "v": "Q5_0", "o": "Q5_1",
                                "embed": "F16", "unembed": "BF16"}),
    "llama_bias_kquants_llama3_rope": (
        lambda: fx.tiny_llama_config(d_model=256, d_ff=256, n_heads=4, n_kv_heads=1, head_dim=64,
                                     qkv_bias=True, rope_theta=500000.0,
                                     rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)),
        {"*": "Q4_K", "down": "Q6_K", "embed": "Q8_0"}),
    "gemma3_f32": (lambda: fx.tiny_gemma3_config(n_layers=7), "F32"),
    "gemma3_mixed_pattern_softcap": (
        lambda: fx.tiny_gemma3_config(n_layers=4, local_layers=(True, False, True, True),
                                      final_softcap=30.0, rope_scaling=RopeScaling("linear", 8.0)),
        {"*": "Q5_0", "v": "Q8_0", "embed": "Q8_0", "down": "F16"}),
    "qwen2_bias_f32": (lambda: fx.tiny_qwen_config("qwen2"), "F32"),
    "qwen3_qk_norm_untied_q8": (lambda: fx.tiny_qwen_config("qwen3", tied=False, n_heads=8),
                                {"*": "Q8_0", "embed": "F16"}),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_synthetic_round_trip(tmp_path, case):
  make_config, types = ROUND_TRIPS[case]
  config = make_config()
  params = fx.random_params(config, seed=zlib.crc32(case.encode()))
  path = fx.write_gguf(tmp_path / f"{case}.gguf", config, params, types=types)

  got_config, got, provenance = gp.load_gguf(path)

  assert got_config == config
  # Exact: re-converting the loaded params gives what gguf itself decodes from the file.
  reference = _file_reference(path)
  reconverted = fx.gguf_tensors(got_config, got)
  assert set(reconverted) | {"rope_freqs.weight"} >= set(reference)
  for name, want in reference.items():
    if name != "rope_freqs.weight":
      np.testing.assert_array_equal(reconverted[name], want, err_msg=name)
  # Close to the original params within each type's quantization error.
  want_leaves, got_leaves = _leaves(params), _leaves(got)
  assert set(want_leaves) == set(got_leaves)
  for leaf, want in want_leaves.items():
    assert got_leaves[leaf].shape == want.shape and got_leaves[leaf].dtype == np.float32, leaf
    err = np.abs(got_leaves[leaf] - want).max()
    assert err <= TOLERANCE[_leaf_type(leaf, types)], (leaf, err)
  assert provenance["tied"] == config.tie_embeddings
  assert provenance["unembed_tensor"] == ("token_embd.weight" if config.tie_embeddings else "output.weight")
  assert sum(provenance["quant_types"].values()) == len(reference)


def test_llama_qk_unpermuted_to_rotate_half(tmp_path):
  # Head 0's rotate-half pair (j, j + Dh/2) must sit in file rows (2j, 2j + 1).
  config = fx.tiny_llama_config()
  params = fx.random_params(config)
  path = fx.write_gguf(tmp_path / "p.gguf", config, params)
  with GGUFFile(path) as f:
    file_q = f.raw("blk.0.attn_q.weight").view(np.float32).reshape(config.n_heads * config.head_dim, -1)
    got = gp.load_gguf_params(f, gp.read_config(f))
  half = config.head_dim // 2
  q0 = got["blocks"]["q"][0][:, 0, :]  # [D, Dh] for head 0
  np.testing.assert_array_equal(q0[:, 3], file_q[6])
  np.testing.assert_array_equal(q0[:, 3 + half], file_q[7])
  np.testing.assert_array_equal(got["blocks"]["q"], params["blocks"]["q"])


def test_gemma_norms_are_multipliers_as_stored(tmp_path):
  config = fx.tiny_gemma3_config(n_layers=2)
  params = fx.random_params(config)
  path = fx.write_gguf(tmp_path / "g.gguf", config, params)
  with GGUFFile(path) as f:
    stored = f.raw("blk.1.attn_q_norm.weight").view(np.float32)
    got = gp.load_gguf_params(f, gp.read_config(f))
  np.testing.assert_array_equal(got["blocks"]["q_norm"][1], stored)
  assert abs(float(stored.mean()) - 1) < 0.2  # multipliers near 1, not offsets near 0


def test_placer_gets_each_leaf_once_in_bfloat16_and_host_blocks_are_dropped(tmp_path):
  """On a mesh the loader fills bfloat16 blocks straight from the file (no float32 leaf), hands each
  finished leaf to the placer once, and keeps no block alive after."""
  config = fx.tiny_gemma3_config(n_layers=3)
  params = fx.random_params(config)
  path = fx.write_gguf(tmp_path / "g.gguf", config, params, types="Q8_0")
  mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
  calls, refs = [], []

  class Watch(sharding.Placer):
    def assemble(self, leaf_path, shape, blocks):
      calls.append(leaf_path)
      assert all(b.dtype == ml_dtypes.bfloat16 for b in blocks.values()), leaf_path
      refs.extend(weakref.ref(b) for b in blocks.values())
      # Copies: on CPU, device_put may alias (and so keep alive) the numpy buffer itself.
      return super().assemble(leaf_path, shape, {k: v.copy() for k, v in blocks.items()})

  with GGUFFile(path) as f:
    got = gp.load_gguf_params(f, gp.read_config(f), placer=Watch(mesh, ml_dtypes.bfloat16))
  gc.collect()
  assert calls[:2] == ["embed", "final_norm"]
  assert sorted(calls) == sorted(_leaves(params))
  assert refs and all(r() is None for r in refs), "loader kept a host block alive"
  embed = got["embed"]
  assert isinstance(embed, jax.Array) and embed.dtype == jax.numpy.bfloat16
  assert embed.sharding.spec == PartitionSpec("model", None) and len(embed.sharding.device_set) == 8
  want = np.asarray(params["embed"]).astype(ml_dtypes.bfloat16).astype(np.float32)
  np.testing.assert_allclose(np.asarray(embed, np.float32)[:config.vocab_size], want, atol=0.02)
  assert got["blocks"]["q"].shape == params["blocks"]["q"].shape


class _FirstHalf(sharding.Placer):
  """The blocks process 0 of 2 holds on ``data:2,model:4`` (half of each leaf's distinct shards);
  ``assemble`` returns the blocks themselves."""

  partial = True

  def blocks(self, path, shape):
    every = super().blocks(path, shape)
    return every[:max(1, len(every) // 2)]

  def assemble(self, path, shape, blocks):
    return blocks


@pytest.mark.parametrize("types", ["F32", "Q8_0"])
def test_a_process_dequantizes_only_the_parts_of_its_blocks(tmp_path, monkeypatch, types):
  """Half the shards (one query head and a quarter of the MLP each): only their rows (Q/K heads,
  RoPE rows put back per head), columns (the output projection, the down projection) and embedding
  rows are dequantized, and every block equals the whole leaf's slice. A column cut inside a Q8_0
  block (one 16-wide head of 32-weight blocks) reads those tensors whole instead, saying so once."""
  config = fx.tiny_llama_config(tied=False, d_ff=128)
  params = fx.random_params(config)
  path = fx.write_gguf(tmp_path / "l.gguf", config, params, types=types)
  with GGUFFile(path) as f:
    want = _leaves(gp.load_gguf_params(f, gp.read_config(f)))
  shapes = {}
  dequantize = gp.dequantize

  def watched(raw, ggml_type, shape, **kw):
    shapes.setdefault(kw["name"].split(".")[-2], []).append(tuple(shape))
    return dequantize(raw, ggml_type, shape, **kw)

  monkeypatch.setattr(gp, "dequantize", watched)
  with GGUFFile(path) as f, warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    placer = _FirstHalf(sharding.make_mesh("data:2,model:4"), np.float32)
    got = _leaves(gp.load_gguf_params(f, gp.read_config(f), placer=placer))
  assert sorted(got) == sorted(want)
  for leaf_path, blocks in got.items():
    whole = np.asarray(want[leaf_path])
    if leaf_path in ("embed", "unembed"):
      whole = np.concatenate([whole, np.zeros((-whole.shape[0] % 4, *whole.shape[1:]), whole.dtype)])
    assert 0 < len(blocks) <= 2
    for index, block in blocks.items():
      np.testing.assert_array_equal(block, whole[tuple(slice(a, b) for a, b in index)], err_msg=leaf_path)
  dh, half_ff = config.head_dim, config.d_ff // 2
  assert set(shapes["attn_q"]) == {(dh, config.d_model)}  # one head's rows per block
  assert all(r <= config.vocab_size // 2 for r, _ in shapes["token_embd"] + shapes["output"])
  assert set(shapes["ffn_gate"]) == {(half_ff // 2, config.d_model)}
  assert set(shapes["ffn_down"]) == {(config.d_model, half_ff // 2)}
  split_head = [str(w.message) for w in caught if "inside a quantization block" in str(w.message)]
  if types == "F32":
    assert set(shapes["attn_output"]) == {(config.d_model, dh)} and not split_head
  else:
    assert set(shapes["attn_output"]) == {(config.d_model, config.n_heads * dh)}  # whole, once per layer
    assert len(shapes["attn_output"]) == config.n_layers
    assert len(split_head) == 1 and "'blk.0.attn_output.weight' (Q8_0)" in split_head[0], split_head


# ----------------------------------------------------------------------------- config


def _gemma_metadata(**over):
  m = {"general.architecture": "gemma3", "gemma3.embedding_length": 5376, "gemma3.block_count": 62,
       "gemma3.feed_forward_length": 21504, "gemma3.attention.head_count": 32,
       "gemma3.attention.head_count_kv": 16, "gemma3.attention.key_length": 128,
       "gemma3.attention.sliding_window": 1024, "gemma3.rope.freq_base": 1e6,
       "tokenizer.ggml.tokens": ["a"] * 1000, "tokenizer.ggml.eos_token_id": 1,
       "tokenizer.ggml.eot_token_id": 106}
  m.update(over)
  return m


def test_gemma3_27b_query_scale_and_defaults():
  config = families.config_from_gguf(_gemma_metadata(), "g27.gguf")
  assert math.isclose(config.query_scale, 168 ** -0.5)
  assert math.isclose(config.embed_scale, math.sqrt(5376))
  assert config.local_layers == tuple((i + 1) % 6 != 0 for i in range(62))
  assert config.rope_local_theta == 10000.0 and config.rope_theta == 1e6
  assert config.final_softcap is None and config.vocab_size == 1000
  assert config.eos_token_ids == (1, 106)
  smaller = families.config_from_gguf(_gemma_metadata(**{"gemma3.block_count": 34}), "g4.gguf")
  assert math.isclose(smaller.query_scale, 128 ** -0.5)


def test_gemma3_integer_sliding_window_pattern():
  config = families.config_from_gguf(_gemma_metadata(**{"gemma3.attention.sliding_window_pattern": 3,
                                                  "gemma3.block_count": 7}), "g.gguf")
  assert config.local_layers == (True, True, False, True, True, False, True)


@pytest.mark.parametrize("low,high,factor", [(1.0, 4.0, 8.0), (1.0, 4.0, 32.0), (2.0, 8.0, 16.0)])
def test_llama3_scaling_recovered_from_rope_freqs(low, high, factor):
  scaling = RopeScaling("llama3", factor, low, high, 8192)
  freqs = fx._llama3_rope_freqs(scaling, 500000.0, 128)
  got = gguf_config.llama3_scaling_from_freqs(freqs.astype(np.float64), 500000.0, 128, 8192)
  assert got.kind == "llama3" and got.factor == factor
  np.testing.assert_allclose(gguf_config.llama3_factors(got, 500000.0, 128), freqs, rtol=1e-5)
  assert math.isclose(got.low_freq_factor, low, rel_tol=1e-3)
  assert math.isclose(got.high_freq_factor, high, rel_tol=1e-3)
  assert gguf_config.llama3_scaling_from_freqs(np.ones(64), 500000.0, 128, 8192) is None


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def tiny_file(tmp_path):
  config = fx.tiny_llama_config(tied=False)
  params = fx.random_params(config)

  def write(name="bad.gguf", config=config, **kwargs):
    return fx.write_gguf(tmp_path / name, config, params, **kwargs)
  return write


def _load_error(path) -> str:
  with pytest.raises(InputError) as info:
    gp.load_gguf(path)
  message = str(info.value)
  assert os.fspath(path) in message
  return message


def test_truncated_file(tiny_file):
  path = tiny_file()
  size = os.path.getsize(path)
  with open(path, "r+b") as fh:
    fh.truncate(size // 2)
  assert "truncated" in _load_error(path)


def test_garbage_bytes(tmp_path):
  path = tmp_path / "garbage.gguf"
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  assert "GGUF" in _load_error(path)


def test_unknown_architecture(tiny_file):
  message = _load_error(tiny_file(metadata={"general.architecture": "mamba"}))
  assert "'mamba'" in message and "llama" in message and "gemma3" in message


def test_unsupported_quant_type(tmp_path):
  config = fx.tiny_llama_config(d_model=256, n_heads=4, head_dim=64)
  params = fx.random_params(config)
  block = gguf.GGML_QUANT_SIZES[T.Q2_K][1]
  raw = {"blk.1.ffn_up.weight": (np.zeros((config.d_ff, block), np.uint8), "Q2_K")}
  path = fx.write_gguf(tmp_path / "q2k.gguf", config, params, raw=raw)
  message = _load_error(path)
  assert "'blk.1.ffn_up.weight'" in message and "Q2_K" in message


def test_shape_mismatch(tiny_file):
  message = _load_error(tiny_file(metadata={"llama.feed_forward_length": 128}))
  assert "'blk.0.ffn_gate.weight'" in message and "(96, 64)" in message and "(128, 64)" in message


def test_missing_tensor(tiny_file):
  message = _load_error(tiny_file(drop=("blk.1.attn_v.weight",)))
  assert "'blk.1.attn_v.weight'" in message and "missing" in message


def test_missing_metadata(tiny_file):
  assert "'llama.block_count'" in _load_error(tiny_file(metadata={"llama.block_count": None}))


def test_inconsistent_or_nonpositive_metadata(tiny_file):
  assert "n_kv_heads" in _load_error(tiny_file("a.gguf", metadata={"llama.attention.head_count_kv": 3}))
  assert "positive" in _load_error(tiny_file("b.gguf", metadata={"llama.attention.head_count": 0}))
  text = ("x", gguf.GGUFValueType.STRING)
  assert "positive" in _load_error(tiny_file("c.gguf", metadata={"llama.embedding_length": text}))


def test_unsupported_rope_scaling(tiny_file):
  assert "yarn" in _load_error(tiny_file(metadata={"llama.rope.scaling.type": "yarn"}))


def test_partial_rotary_rejected(tiny_file):
  assert "partial" in _load_error(tiny_file(metadata={"llama.rope.dimension_count": 8}))


def test_rope_freqs_not_llama3(tiny_file):
  path = tiny_file(replace={"rope_freqs.weight": np.linspace(1, 3, 8).astype(np.float32)[::-1].copy()})
  assert "rope_freqs" in _load_error(path)


def test_config_not_from_this_file(tiny_file):
  path = tiny_file()
  with GGUFFile(path) as f:
    config = families.config_from_gguf(f.metadata, path)  # no tensor index: assumed tied
    assert config.tie_embeddings
    with pytest.raises(InputError, match="output.weight"):
      gp.load_gguf_params(f, config)


# ----------------------------------------------------------------------------- real models

REAL_MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


def _real_path(name):
  from jaxsem.io import assets
  return assets.resolve_model(name).path


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_dequant_matches_gguf_reference(name):
  # A few tensors of every type in the file, decoded by gguf's numpy code and by ours.
  from jaxsem.io.dequant import dequantize
  with GGUFFile(_real_path(name)) as f:
    by_type = {}
    for info in f.tensors.values():
      by_type.setdefault(info.ggml_type, []).append(info)
    assert len(by_type) >= 3
    for infos in by_type.values():
      for info in infos[-3:]:
        raw = f.raw(info.name)
        rows = raw.reshape(int(np.prod(info.shape[:-1])), -1)
        want = gguf.quants.dequantize(rows, T(info.ggml_type)).reshape(info.shape)
        got = dequantize(raw, info.ggml_type, info.shape)
        np.testing.assert_array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32))


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_loads_every_param(name):
  """Timing lives in benchmarks/bench_load.py; here only what is loaded; transformers' copy of the
  same file is compared with it in tests/models/test_parity_real.py."""
  config, params, _ = gp.load_gguf(_real_path(name))
  n = sum(v.size for v in _leaves(params).values())
  assert n == config.n_params


def test_load_reports_progress_up_to_every_param(tmp_path):
  """Loading calls progress(done, total) after each tensor: increasing, ending at n_params."""
  config = fx.tiny_gemma3_config(n_layers=3)
  path = fx.write_gguf(tmp_path / "g.gguf", config, fx.random_params(config))
  calls = []
  with GGUFFile(path) as f:
    gp.load_gguf_params(f, gp.read_config(f), progress=lambda done, total: calls.append((done, total)))
  done = [d for d, _ in calls]
  stacked = [leaf for leaf in families.leaves(config) if leaf.stacked]
  assert len(calls) == 2 + 3 * len(stacked)
  assert all(b > a for a, b in zip(done, done[1:]))
  assert {t for _, t in calls} == {config.n_params} and done[-1] == config.n_params
