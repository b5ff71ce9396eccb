"""Phi-3: fused ``qkv_proj`` / ``gate_up_proj`` tensors split into the leaves, config mapping,
refused features, and logits equal to transformers' from safetensors and from GGUF."""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.models import families
from jaxsem.models import params as params_lib
from jaxsem.models.families import leaf_table

SEQ_LEN = 12  # longer than the sliding window of the windowed fixture (5)
LENGTHS = [12, 7, 3, 10]  # right padding, different lengths

# A config.json as transformers writes it for a tiny Phi3Config (grouped-query attention).
_CONFIG_JSON = {
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 256, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "rope_parameters": {"partial_rotary_factor": 1.0, "rope_theta": 10000.0, "rope_type": "default"},
    "hidden_act": "silu", "sliding_window": None, "tie_word_embeddings": False, "bos_token_id": 1,
    "eos_token_id": 2, "pad_token_id": 0, "attention_dropout": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
}


def _config(**changes):
  return families.config_from_hf(dict(_CONFIG_JSON, **changes), "snap/config.json")


def test_config_from_hf():
  config = _config()
  sizes = (config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff)
  assert config.family == "phi3" and sizes == (4, 2, 16, 96)
  assert (config.norm_eps, config.rope_theta, config.rope_scaling) == (1e-5, 10000.0, None)
  assert not config.tie_embeddings and config.sliding_window is None and not any(config.local_layers)
  assert (config.bos_token_id, config.eos_token_ids, config.pad_token_id) == (1, (2,), 0)
  # transformers' Phi3Model applies sliding_window to every layer.
  windowed = _config(sliding_window=5)
  assert windowed.sliding_window == 5 and windowed.local_layers == (True, True)
  # Phi3Config's defaults where config.json leaves a field out.
  bare = {k: v for k, v in _CONFIG_JSON.items() if k not in ("rms_norm_eps", "max_position_embeddings")}
  config = families.config_from_hf(bare, "snap/config.json")
  assert (config.norm_eps, config.max_position) == (1e-5, 4096)


def test_leaves_read_row_ranges_of_the_fused_tensors():
  config = _config()
  table = {leaf.path: leaf for leaf in families.leaves(config)}
  assert list(table) == list(params_lib.param_shapes(config))
  q, k, v, gate, up = (table[f"blocks/{n}"] for n in ("q", "k", "v", "gate", "up"))
  assert {q.hf, k.hf, v.hf} == {"self_attn.qkv_proj.weight"}
  assert {q.gguf, k.gguf, v.gguf} == {"attn_qkv.weight"}
  assert {gate.hf, up.hf} == {"mlp.gate_up_proj.weight"} and {gate.gguf, up.gguf} == {"ffn_up.weight"}
  # [q; k; v] rows: 4 * 16, 2 * 16, 2 * 16; [gate; up] rows: 96, 96.
  assert [leaf.rows(config) for leaf in (q, k, v)] == [(0, 64), (64, 96), (96, 128)]
  assert [leaf.rows(config) for leaf in (gate, up)] == [(0, 96), (96, 192)]
  assert q.tensor_shape(config) == v.tensor_shape(config) == (128, 64)
  assert up.tensor_shape(config) == (192, 64)
  for name in ("o", "down", "attn_norm", "mlp_norm"):
    assert not table[f"blocks/{name}"].fused and table[f"blocks/{name}"].rows(config)[0] == 0
  assert table["blocks/o"].hf == "self_attn.o_proj.weight" and table["unembed"].hf == "lm_head.weight"
  for leaf in table.values():  # sharding sees the same leaves as every other family
    assert sharding.PARAM_AXES[leaf.path] == leaf.axes


def test_fused_split_takes_each_leafs_rows():
  """Slicing a fused tensor as Phi3Attention / Phi3MLP do gives each leaf's weights."""
  config = _config()
  table = {leaf.path: leaf for leaf in families.leaves(config)}
  qkv = np.arange(128 * 64, dtype=np.float32).reshape(128, 64)  # [out, in], rows [q; k; v]
  want = {"q": qkv[:64], "k": qkv[64:96], "v": qkv[96:]}
  for name, rows in want.items():
    leaf = table[f"blocks/{name}"]
    got = leaf_table.convert(leaf, leaf_table.split(leaf, qkv, config), leaf.slot_shape(config))
    n = got.shape[1]
    np.testing.assert_array_equal(got, rows.reshape(n, 16, 64).transpose(2, 0, 1))
  gate_up = np.arange(192 * 64, dtype=np.float32).reshape(192, 64)
  for name, rows in {"gate": gate_up[:96], "up": gate_up[96:]}.items():
    leaf = table[f"blocks/{name}"]
    got = leaf_table.convert(leaf, leaf_table.split(leaf, gate_up, config), leaf.slot_shape(config))
    np.testing.assert_array_equal(got, rows.T)


@pytest.mark.parametrize("changes, words", [
    ({"rope_scaling": {"type": "su", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}},
     ("'su'", "LongRoPE")),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                          "long_factor": [2.0] * 8}}, ("'longrope'", "LongRoPE")),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}},
     ("partial_rotary_factor",)),
    ({"rope_parameters": None, "rope_theta": 10000.0, "partial_rotary_factor": 0.75}, ("partial_rotary_factor",)),
    ({"hidden_act": "gelu"}, ("activation 'gelu'", "phi3")),
])
def test_unsupported_feature_is_one_line(changes, words):
  with pytest.raises(InputError) as info:
    _config(**changes)
  message = str(info.value)
  assert "\n" not in message and message.startswith("snap/config.json")
  assert all(w in message for w in words), message


def _gguf_metadata(**extra):
  m = {"general.architecture": "phi3", "phi3.context_length": 256, "phi3.embedding_length": 64,
       "phi3.block_count": 2, "phi3.feed_forward_length": 96, "phi3.attention.head_count": 4,
       "phi3.attention.head_count_kv": 2, "phi3.attention.layer_norm_rms_epsilon": np.float32(1e-5),
       "phi3.rope.dimension_count": 16, "phi3.rope.freq_base": np.float32(10000.0), "phi3.vocab_size": 256}
  m.update(extra)
  return m


def test_config_from_gguf():
  tensors = {"token_embd.weight": types.SimpleNamespace(shape=(256, 64)),
             "output.weight": types.SimpleNamespace(shape=(256, 64))}
  config = families.config_from_gguf(_gguf_metadata(), "m.gguf", tensors)
  assert dataclasses.replace(config, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0) == _config()
  windowed = families.config_from_gguf(_gguf_metadata(**{"phi3.attention.sliding_window": 5}), "m.gguf",
                                       tensors)
  assert windowed.sliding_window == 5 and windowed.local_layers == (True, True)
  long_rope = dict(tensors, **{"rope_factors_long.weight": types.SimpleNamespace(shape=(8,))})
  with pytest.raises(InputError) as info:
    families.config_from_gguf(_gguf_metadata(), "m.gguf", long_rope)
  message = str(info.value)
  assert "\n" not in message and "LongRoPE" in message and message.startswith("m.gguf")


# ----------------------------------------------------------------------------- against transformers


def _hf_config(**changes):
  import transformers
  args = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0,
              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
  args.update(changes)
  return transformers.Phi3Config(**args)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
  """name -> (model, snapshot dir, config, numpy params, token_ids, mask, reference logits)."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from jaxsem.models import hf_load
  from tests import hf_fixtures as fx

  variants = {"gqa": {}, "window": {"sliding_window": 5}, "mha": {"num_key_value_heads": 4}}
  cache = {}

  def get(name):
    if name not in cache:
      model = fx.build(_hf_config(**variants[name]), seed=1)
      d = fx.save(model, str(tmp_path_factory.mktemp(name)))
      config, params, _ = hf_load.load_hf(d)
      ids, mask = fx.batch(LENGTHS, SEQ_LEN, seed=2)
      cache[name] = (model, d, config, params, ids, mask, fx.hf_logits(model, ids, mask))
    return cache[name]

  return get


def _run(params, config, ids, mask, logits_at="all"):
  from jaxsem.models.forward import forward
  fn = jax.jit(forward, static_argnames=("config", "logits_at"))
  return np.asarray(fn(params, config, jnp.asarray(ids), jnp.asarray(mask), logits_at=logits_at).logits)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gqa", "window"])
def test_logits_match_transformers(case, name):
  _, _, config, params, ids, mask, ref = case(name)
  assert config.family == "phi3" and (config.sliding_window is not None) == (name == "window")
  got = _run(params, config, ids, mask)
  valid = mask.astype(bool)
  err = np.abs(got[valid] - ref[valid]).max()
  assert err < 1e-4, f"{name}: max abs diff {err:.3g}"
  assert np.abs(ref[valid]).max() > 1.0
  last = _run(params, config, ids, mask, "last")
  np.testing.assert_allclose(last, ref[np.arange(len(LENGTHS)), np.asarray(LENGTHS) - 1], rtol=0, atol=1e-4)
  if name == "window":  # the window matters for this batch
    unwindowed = dataclasses.replace(config, sliding_window=None, local_layers=(False,) * config.n_layers)
    assert np.abs(_run(params, unwindowed, ids, mask)[valid] - ref[valid]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name, tensor, a, b", [
    ("mha", "self_attn.qkv_proj.weight", (0, 64), (64, 128)),      # q <-> k
    ("gqa", "self_attn.qkv_proj.weight", (64, 96), (96, 128)),     # k <-> v
    ("gqa", "mlp.gate_up_proj.weight", (0, 96), (96, 192)),        # gate <-> up
])
def test_fused_split_matters(case, tmp_path, name, tensor, a, b):
  """Swapping two row blocks of a fused tensor changes transformers' logits, and the loaded
  model follows the swap: each leaf reads its own rows."""
  import torch
  from jaxsem.models import hf_load
  from tests import hf_fixtures as fx

  model, _, _, _, ids, mask, ref = case(name)
  swapped = fx.build(model.config, seed=1)
  swapped.load_state_dict(model.state_dict())
  with torch.no_grad():
    for layer in swapped.model.layers:
      w = layer.get_submodule(tensor.rsplit(".", 1)[0]).weight
      rows_a, rows_b = w[a[0]:a[1]].clone(), w[b[0]:b[1]].clone()
      w[a[0]:a[1]], w[b[0]:b[1]] = rows_b, rows_a
  config, params, _ = hf_load.load_hf(fx.save(swapped, str(tmp_path / "snap")))
  want = fx.hf_logits(swapped, ids, mask)
  valid = mask.astype(bool)
  assert np.abs(want[valid] - ref[valid]).max() > 1e-3  # the swap changes the model
  assert np.abs(_run(params, config, ids, mask)[valid] - want[valid]).max() < 1e-4


@pytest.mark.slow
def test_sharded_equals_unsharded(case):
  _, _, config, params, ids, mask, _ = case("gqa")
  mesh = sharding.make_mesh("data:2,model:4")
  placed = sharding.shard_params(params, mesh)
  assert placed["blocks"]["q"].sharding.spec[2] == "model"  # heads really are split
  batch_sharding = sharding.batch_sharding(mesh)
  got = _run(placed, config, jax.device_put(jnp.asarray(ids), batch_sharding),
             jax.device_put(jnp.asarray(mask), batch_sharding))
  want = _run(params, config, ids, mask)
  err = np.abs(got - want).max()
  assert err <= 1e-5 * np.abs(want).max(), f"max abs diff {err:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("name, quant", [("window", "F32"), ("gqa", "F32"), ("gqa", "Q8_0")])
def test_gguf_of_the_same_weights_gives_the_same_logits(case, tmp_path, name, quant):
  """A GGUF laid out as llama.cpp's phi3 converter writes it (``attn_qkv`` and ``ffn_up`` copied
  from ``qkv_proj`` and ``gate_up_proj``) loads to the same config and logits (F32), or to
  every weight within a Q8_0 step (quantized blocks of a fused tensor split cleanly)."""
  from jaxsem.models import gguf_load
  from tests import gguf_fixtures as gfx
  from tests import hf_fixtures as fx

  model, _, config, params, ids, mask, ref = case(name)
  state = fx.state_dict(model)
  fused, drop = {}, []
  for i in range(config.n_layers):
    fused[f"blk.{i}.attn_qkv.weight"] = state[f"model.layers.{i}.self_attn.qkv_proj.weight"]
    fused[f"blk.{i}.ffn_up.weight"] = state[f"model.layers.{i}.mlp.gate_up_proj.weight"]
    drop += [f"blk.{i}.{t}.weight" for t in ("attn_q", "attn_k", "attn_v", "ffn_gate")]
  window = {} if config.sliding_window is None else {
      "phi3.attention.sliding_window": (config.sliding_window, gfx.GGUFValueType.UINT32)}
  path = gfx.write_gguf(tmp_path / "phi3.gguf", config, params, types=quant, replace=fused, drop=tuple(drop),
                        metadata=window)
  got_config, got_params, provenance = gguf_load.load_gguf(path)
  assert got_config == config
  assert provenance["architecture"] == "phi3" and provenance["unused_tensors"] == []
  assert provenance["quant_types"].get(quant, 0) > 0
  if quant == "Q8_0":
    for path, want in params_lib.flatten(params).items():
      got = np.asarray(params_lib.flatten(got_params)[path])
      step = np.abs(want).max() / 127  # Q8_0 rounds to half a step of its block's absmax / 127
      assert np.abs(got - want).max() <= step, path
    return
  got = _run(got_params, got_config, ids, mask)
  valid = mask.astype(bool)
  err = np.abs(got[valid] - ref[valid]).max()
  assert err < 1e-4, f"max abs diff {err:.3g}"
