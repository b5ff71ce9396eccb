"""OLMo 2: no pre-norms, post-norms on both branches, q/k RMSNorm over the whole projection;
config mapping, leaves, every path of the forward pass, sharding, GGUF round trips, and logits
equal to transformers' on a tiny random checkpoint (those tests are slow: they import torch)."""

from __future__ import annotations

import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGUFValueType

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.models import families
from jaxsem.models import gguf_load
from jaxsem.models import params as params_lib
from jaxsem.models.config import ModelConfig
from jaxsem.models.forward import forward
from jaxsem.models.forward import rms_norm
from jaxsem.models.kv_cache import prefix_cache
from tests import gguf_fixtures as gfx
from tests import word_model

SEQ_LEN = 12
LENGTHS = [12, 7, 3, 10]  # right padding, different lengths

# config.json as transformers writes it for a tiny Olmo2Config (grouped-query attention).
_CONFIG_JSON = {
    "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "vocab_size": 256, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "hidden_act": "silu", "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "attention_bias": False,
    "attention_dropout": 0.0, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
    "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": 2, "pad_token_id": 1}


def _config(**changes) -> ModelConfig:
  return families.config_from_hf(dict(_CONFIG_JSON, **changes), "snap/config.json")


_forward = jax.jit(forward, static_argnames=("config", "logits_at"))


def _batch(vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(len(LENGTHS), SEQ_LEN)).astype(np.int32)
  mask = (np.arange(SEQ_LEN)[None, :] < np.asarray(LENGTHS)[:, None]).astype(np.int32)
  return ids * mask, mask


def _logits(params, config, ids, mask, logits_at="all", **kw) -> np.ndarray:
  return np.asarray(_forward(params, config, jnp.asarray(ids), jnp.asarray(mask), logits_at=logits_at,
                             **kw).logits)


def _max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
  valid = mask.astype(bool)
  return float(np.abs(a[valid] - b[valid]).max())


@pytest.fixture(scope="module")
def model():
  config = _config()
  params = params_lib.init_params(config, jax.random.key(3))
  # Norm multipliers spread wider than init_params' (so that each one's layout matters).
  blocks = dict(params["blocks"])
  for name, key in (("q_proj_norm", 4), ("k_proj_norm", 5)):
    blocks[name] = 1.0 + 0.5 * jax.random.normal(jax.random.key(key), blocks[name].shape)
  return config, dict(params, blocks=blocks)


# ----------------------------------------------------------------------------- config.json


def test_config_from_hf():
  config = _config()
  assert config.family == "olmo2" and config.activation == "silu"
  assert not config.pre_norms and config.post_norms
  assert config.qk_norm and config.qk_norm_scope == "projection"
  assert not config.qkv_bias and not config.tie_embeddings and config.embed_scale == 1.0
  assert (config.n_heads, config.n_kv_heads, config.head_dim, config.d_ff) == (4, 2, 16, 96)
  assert (config.norm_eps, config.rope_theta, config.rope_scaling) == (1e-6, 500000.0, None)
  assert config.sliding_window is None and not any(config.local_layers)
  assert config.query_scale == pytest.approx(16 ** -0.5)
  assert (config.bos_token_id, config.eos_token_ids, config.pad_token_id) == (None, (2,), 1)
  # Olmo2Config's defaults where config.json leaves a field out.
  bare = {k: v for k, v in _CONFIG_JSON.items()
          if k not in ("rms_norm_eps", "max_position_embeddings", "tie_word_embeddings")}
  config = families.config_from_hf(bare, "snap/config.json")
  assert (config.norm_eps, config.max_position, config.tie_embeddings) == (1e-5, 2048, False)


@pytest.mark.parametrize("change, words", [
    ({"attention_bias": True}, ("attention_bias", "olmo2")),
    ({"hidden_act": "gelu"}, ("activation 'gelu'", "olmo2", "silu")),
    ({"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 2.0}}, ("rope type 'yarn'",)),
    ({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}, ("partial_rotary_factor",)),
    ({"model_type": "olmo3"}, ("model_type 'olmo3' is not supported", "olmo2")),
])
def test_unsupported_feature_is_one_line(change, words):
  with pytest.raises(InputError) as info:
    _config(**change)
  message = str(info.value)
  assert "\n" not in message and message.startswith("snap/config.json")
  assert all(w in message for w in words), message


def test_model_config_refuses_an_unknown_qk_norm_scope():
  with pytest.raises(ValueError, match="qk_norm_scope"):
    dataclasses.replace(_config(), qk_norm_scope="heads")


def test_leaves():
  config = _config()
  table = {leaf.path: leaf for leaf in families.leaves(config)}
  shapes = params_lib.param_shapes(config)
  assert list(table) == list(shapes)
  assert not {"blocks/attn_norm", "blocks/mlp_norm", "blocks/q_norm", "blocks/k_norm"} & set(table)
  assert {"blocks/post_attn_norm", "blocks/post_mlp_norm", "unembed"} <= set(table)
  assert shapes["blocks/q_proj_norm"] == (2, 4, 16) and shapes["blocks/k_proj_norm"] == (2, 2, 16)
  q_norm, k_norm = table["blocks/q_proj_norm"], table["blocks/k_proj_norm"]
  assert (q_norm.hf, k_norm.hf) == ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
  assert q_norm.file_shape(config) == (64,) and k_norm.file_shape(config) == (32,)  # the projection's width
  assert sharding.PARAM_AXES["blocks/q_proj_norm"] == ("layers", "heads", "head_dim")
  assert table["blocks/post_attn_norm"].hf == "post_attention_layernorm.weight"
  assert table["blocks/post_mlp_norm"].hf == "post_feedforward_layernorm.weight"
  assert all(leaf.hf_offset == 0.0 and not leaf.gguf_permuted for leaf in table.values())
  assert config.n_params == sum(int(np.prod(s)) for s in shapes.values())


# ----------------------------------------------------------------------------- the forward pass


def test_projection_norm_is_one_norm_over_all_heads():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 8)) * jnp.arange(1.0, 5.0)[:, None]
  scale = 1.0 + jax.random.normal(jax.random.key(1), (4, 8))
  want = rms_norm(x.reshape(2, 3, 32), scale.reshape(32), 1e-6).reshape(x.shape)
  np.testing.assert_allclose(rms_norm(x, scale, 1e-6, axis=(-2, -1)), want, atol=1e-6)
  assert np.abs(np.asarray(rms_norm(x, scale, 1e-6)) - np.asarray(want)).max() > 1e-2  # per head differs


def test_each_feature_changes_the_logits(model):
  config, params = model
  ids, mask = _batch(config.vocab_size)
  base = _logits(params, config, ids, mask)
  ones = lambda n: jnp.ones((config.n_layers, n), jnp.float32)  # noqa: E731
  blocks = params["blocks"]
  variants = {
      "no post-norms": (dataclasses.replace(config, post_norms=False), params),
      "no q/k norm": (dataclasses.replace(config, qk_norm=False), params),
      "pre-norms too": (dataclasses.replace(config, pre_norms=True),
                        dict(params, blocks=dict(blocks, attn_norm=ones(config.d_model),
                                                 mlp_norm=ones(config.d_model)))),
  }
  for name, (changed, changed_params) in variants.items():
    assert _max_diff(_logits(changed_params, changed, ids, mask), base, mask) > 1e-3, name
  # Per-head q/k norms differ from one norm over the projection, even with unit multipliers.
  unit = dict(params, blocks=dict(blocks, q_proj_norm=jnp.ones_like(blocks["q_proj_norm"]),
                                  k_proj_norm=jnp.ones_like(blocks["k_proj_norm"])))
  per_head = dict(params, blocks={**{k: v for k, v in blocks.items() if not k.endswith("proj_norm")},
                                  "q_norm": ones(config.head_dim), "k_norm": ones(config.head_dim)})
  head_config = dataclasses.replace(config, qk_norm_scope="head")
  assert _max_diff(_logits(per_head, head_config, ids, mask), _logits(unit, config, ids, mask), mask) > 1e-3


def test_every_path_gives_the_full_pass_logits(model):
  """Last-position, selected-rows and cached-prefix runs agree with the full pass."""
  config, params = model
  ids, mask = _batch(config.vocab_size)
  full = _logits(params, config, ids, mask)
  rows = np.arange(len(LENGTHS))
  last = np.asarray(LENGTHS) - 1
  np.testing.assert_allclose(_logits(params, config, ids, mask, "last"), full[rows, last], atol=1e-5)
  pick = jnp.asarray([5, 17, 40], jnp.int32)
  sub = np.asarray(forward(params, config, jnp.asarray(ids), jnp.asarray(mask), logit_rows=pick).logits)
  np.testing.assert_allclose(sub, full[rows, last][:, [5, 17, 40]], atol=1e-5)
  p = 3
  cache = prefix_cache(params, config, jnp.asarray(ids[0, :p]))
  suffix = np.broadcast_to(ids[0, p:], (2, SEQ_LEN - p))
  cached = np.asarray(forward(params, config, jnp.asarray(suffix), jnp.ones(suffix.shape, jnp.int32),
                              logits_at="all", prefix=cache).logits)
  np.testing.assert_allclose(cached[0], full[0, p:], atol=1e-4)


def test_sharded_equals_unsharded(model):
  config, params = model
  ids, mask = _batch(config.vocab_size)
  mesh = sharding.make_mesh("data:2,model:4")
  placed = sharding.shard_params(params, mesh)
  assert placed["blocks"]["q_proj_norm"].sharding.spec[1] == "model"  # the norm's heads are split too
  batch = sharding.batch_sharding(mesh)
  want = _logits(params, config, ids, mask)
  ids_s, mask_s = (jax.device_put(jnp.asarray(x), batch) for x in (ids, mask))
  got = _logits(placed, config, ids_s, mask_s)
  err = np.abs(got - want).max()
  assert err <= 1e-5 * np.abs(want).max(), f"max abs diff {err:.3g}"


# ----------------------------------------------------------------------------- GGUF


def _write_gguf(path, config: ModelConfig, params: dict) -> str:
  """An F32 ``olmo2`` GGUF of ``params`` with llama.cpp's tensor names and metadata."""
  flat = {k: np.asarray(v, np.float32) for k, v in params_lib.flatten(params).items()}
  writer = gguf.GGUFWriter(str(path), "olmo2")
  for key, (value, vtype) in gfx.gguf_metadata(config).items():
    if key == "general.architecture":
      continue
    if vtype == GGUFValueType.ARRAY:
      writer.add_array(key, value)
    else:
      writer.add_key_value(key, value, vtype)
  for name, tensor in word_model.checkpoint_tensors(config, flat, hf=False).items():
    writer.add_tensor(name, tensor)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


def _with_file_tokens(config: ModelConfig) -> ModelConfig:
  return dataclasses.replace(config, bos_token_id=gfx.BOS, eos_token_ids=(gfx.EOS,), pad_token_id=gfx.PAD)


def test_gguf_round_trip(tmp_path, model):
  config, params = model
  got_config, got_params, provenance = gguf_load.load_gguf(_write_gguf(tmp_path / "o2.gguf", config, params))
  assert got_config == _with_file_tokens(config)
  assert provenance["architecture"] == "olmo2" and not provenance["qk_unpermuted"]
  assert provenance["unused_tensors"] == []
  got_flat = params_lib.flatten(got_params)
  assert set(got_flat) == set(params_lib.flatten(params))
  for leaf_path, want in params_lib.flatten(params).items():
    np.testing.assert_array_equal(got_flat[leaf_path], np.asarray(want), err_msg=leaf_path)
  ids, mask = _batch(config.vocab_size)
  want = _logits(params, config, ids, mask)
  np.testing.assert_array_equal(_logits(got_params, got_config, ids, mask), want)


# ----------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory):
  """(torch model, snapshot directory) of a tiny random OLMo 2 with ``_CONFIG_JSON``'s sizes."""
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tests import hf_fixtures as hfx

  keys = {k: v for k, v in _CONFIG_JSON.items() if k not in ("model_type", "architectures")}
  model = hfx.build(transformers.Olmo2Config(**keys), seed=11)
  return model, hfx.save(model, str(tmp_path_factory.mktemp("olmo2")))


@pytest.mark.slow
def test_logits_match_transformers(hf_case):
  from jaxsem.models import hf_load
  from tests import hf_fixtures as hfx

  torch_model, snap = hf_case
  config, params, _ = hf_load.load_hf(snap)
  assert config == _config()
  ids, mask = hfx.batch(LENGTHS, SEQ_LEN, seed=12)
  ref = hfx.hf_logits(torch_model, ids, mask)
  got = _logits(params, config, ids, mask)
  assert got.shape == ref.shape == (len(LENGTHS), SEQ_LEN, config.vocab_size)
  assert _max_diff(got, ref, mask) < 1e-4
  assert np.abs(ref[mask.astype(bool)]).max() > 1.0  # the reference logits are not trivially small
  rows = np.arange(len(LENGTHS))
  np.testing.assert_allclose(_logits(params, config, ids, mask, "last"), ref[rows, np.asarray(LENGTHS) - 1],
                             rtol=0, atol=1e-4)
  # Each distinguishing feature matters on this batch, so the parity above is meaningful.
  for change in ({"post_norms": False}, {"qk_norm": False}):
    assert _max_diff(_logits(params, dataclasses.replace(config, **change), ids, mask), ref, mask) > 1e-3


@pytest.mark.slow
def test_gguf_of_the_tiny_hf_weights_gives_transformers_logits(hf_case, tmp_path):
  from jaxsem.models import hf_load
  from tests import hf_fixtures as hfx

  torch_model, snap = hf_case
  config, params, _ = hf_load.load_hf(snap)
  got_config, got_params, _ = gguf_load.load_gguf(_write_gguf(tmp_path / "o2.gguf", config, params))
  assert got_config == _with_file_tokens(config)
  ids, mask = hfx.batch(LENGTHS, SEQ_LEN, seed=13)
  ref = hfx.hf_logits(torch_model, ids, mask)
  assert _max_diff(_logits(got_params, got_config, ids, mask), ref, mask) < 1e-4
