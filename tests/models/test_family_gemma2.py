"""Gemma 2: config.json and GGUF metadata to ModelConfig, the soft-caps and alternating windows
in every path of the forward pass, sharding, GGUF round trips, and logits equal to transformers'
on a tiny random checkpoint (those tests are slow: they import torch)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGUFValueType

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.models import families
from jaxsem.models import gguf_load
from jaxsem.models import interventions as iv_lib
from jaxsem.models import params as params_lib
from jaxsem.models.config import ModelConfig
from jaxsem.models.families import gemma2
from jaxsem.models.forward import forward
from jaxsem.models.kv_cache import prefix_cache
from tests import gguf_fixtures as gfx

SEQ_LEN = 12  # longer than the window, so the sliding layers see less than the global ones
WINDOW = 4
LENGTHS = [12, 7, 3, 10]  # right padding, different lengths
N_LAYERS = 4

# config.json as transformers writes it for a tiny Gemma2Config (soft-caps small enough to bind).
_CONFIG_JSON = {
    "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "vocab_size": 256, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": N_LAYERS, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "pad_token_id": 0, "eos_token_id": 2,
    "bos_token_id": 1, "tie_word_embeddings": True, "rope_parameters": {"rope_theta": 10000.0,
                                                                        "rope_type": "default"},
    "attention_bias": False, "query_pre_attn_scalar": 24, "sliding_window": WINDOW,
    "layer_types": ["sliding_attention", "full_attention"] * (N_LAYERS // 2),
    "final_logit_softcapping": 20.0, "attn_logit_softcapping": 2.0}


def tiny_config(**overrides) -> ModelConfig:
  """A small Gemma 2 config, as the GGUF loader reads it back (query scale ``head_dim ** -0.5``)."""
  kw = dict(family="gemma2", vocab_size=96, d_model=64, n_layers=N_LAYERS, n_heads=4, n_kv_heads=2,
            head_dim=16, d_ff=128, norm_eps=1e-6, rope_theta=10000.0, sliding_window=WINDOW,
            local_layers=gemma2.alternating_local_layers(N_LAYERS), activation="gelu_tanh",
            post_norms=True, embed_scale=8.0, query_scale=16 ** -0.5, attn_softcap=1.0, final_softcap=5.0,
            tie_embeddings=True, max_position=256, bos_token_id=gfx.BOS, eos_token_ids=(gfx.EOS,),
            pad_token_id=gfx.PAD)
  kw.update(overrides)
  return ModelConfig(**kw)


def _batch(vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(len(LENGTHS), SEQ_LEN)).astype(np.int32)
  mask = (np.arange(SEQ_LEN)[None, :] < np.asarray(LENGTHS)[:, None]).astype(np.int32)
  return ids * mask, mask


_forward = jax.jit(forward, static_argnames=("config", "logits_at"))


def _logits(params, config, ids, mask, logits_at="all", **kw) -> np.ndarray:
  return np.asarray(_forward(params, config, jnp.asarray(ids), jnp.asarray(mask), logits_at=logits_at,
                             **kw).logits)


def _max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
  valid = mask.astype(bool)
  return float(np.abs(a[valid] - b[valid]).max())


def _gguf_metadata(config: ModelConfig) -> dict:
  """The gemma2 keys llama.cpp's converter writes beyond those every architecture has."""
  u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
  meta = {"gemma2.attention.key_length": (config.head_dim, u32),
          "gemma2.attention.value_length": (config.head_dim, u32)}
  if config.sliding_window is not None:
    meta["gemma2.attention.sliding_window"] = (config.sliding_window, u32)
  for key, cap in (("attn_logit_softcapping", config.attn_softcap),
                   ("final_logit_softcapping", config.final_softcap)):
    if cap is not None:
      meta[f"gemma2.{key}"] = (cap, f32)
  return meta


@pytest.fixture(scope="module")
def model():
  config = tiny_config()
  return config, gfx.random_params(config, seed=3)


# ----------------------------------------------------------------------------- config.json


def test_config_from_hf():
  config = families.config_from_hf(_CONFIG_JSON, "config.json")
  assert config.family == "gemma2" and config.activation == "gelu_tanh"
  assert config.post_norms and not config.qk_norm and not config.qkv_bias and config.tie_embeddings
  assert config.local_layers == (True, False, True, False) and config.sliding_window == WINDOW
  assert config.rope_theta == 10000.0 and config.rope_local_theta is None and config.rope_scaling is None
  assert config.query_scale == pytest.approx(24 ** -0.5) and config.embed_scale == pytest.approx(8.0)
  assert (config.attn_softcap, config.final_softcap) == (2.0, 20.0)
  assert (config.bos_token_id, config.eos_token_ids, config.pad_token_id) == (1, (2,), 0)


def test_config_defaults_and_switches():
  """Absent keys take transformers' defaults; a null soft-cap or window turns it off."""
  bare = {k: v for k, v in _CONFIG_JSON.items()
          if k not in ("layer_types", "sliding_window", "attn_logit_softcapping", "final_logit_softcapping",
                       "query_pre_attn_scalar", "rope_parameters")}
  config = families.config_from_hf(bare, "config.json")
  assert (config.attn_softcap, config.final_softcap, config.sliding_window) == (50.0, 30.0, 4096)
  assert config.local_layers == (True, False, True, False) and config.rope_theta == 10000.0
  assert config.query_scale == pytest.approx(256 ** -0.5)
  off = families.config_from_hf(dict(_CONFIG_JSON, attn_logit_softcapping=None, final_logit_softcapping=None,
                                     sliding_window=None), "config.json")
  assert (off.attn_softcap, off.final_softcap, off.sliding_window) == (None, None, None)
  assert not any(off.local_layers)
  odd = families.config_from_hf(dict(_CONFIG_JSON, layer_types=["full_attention", "sliding_attention"] * 2),
                                "config.json")
  assert odd.local_layers == (False, True, False, True)


@pytest.mark.parametrize("change, words", [
    ({"hidden_activation": "gelu"}, ("activation 'gelu'", "gelu_pytorch_tanh")),
    ({"attention_bias": True}, ("attention_bias", "gemma2")),
    ({"attn_logit_softcapping": 0}, ("attn_logit_softcapping", "positive")),
    ({"final_logit_softcapping": "30"}, ("final_logit_softcapping", "positive")),
    ({"query_pre_attn_scalar": -1}, ("query_pre_attn_scalar", "positive")),
    ({"layer_types": ["sliding_attention"]}, ("layer_types",)),
])
def test_unsupported_or_malformed_config_is_one_line(change, words):
  with pytest.raises(InputError) as info:
    families.config_from_hf(dict(_CONFIG_JSON, **change), "snap/config.json")
  message = str(info.value)
  assert "\n" not in message and message.startswith("snap/config.json")
  assert all(w in message for w in words), message


def test_model_config_refuses_a_non_positive_cap():
  with pytest.raises(ValueError, match="attn_softcap"):
    tiny_config(attn_softcap=0.0)
  with pytest.raises(ValueError, match="final_softcap"):
    tiny_config(final_softcap=-1.0)


def test_leaves():
  config = tiny_config()
  table = {leaf.path: leaf for leaf in families.leaves(config)}
  assert list(table) == list(params_lib.param_shapes(config))
  assert {"blocks/post_attn_norm", "blocks/post_mlp_norm"} <= set(table)
  assert not {"blocks/q_norm", "blocks/k_norm", "blocks/q_bias", "unembed"} & set(table)
  assert {p for p, leaf in table.items() if leaf.hf_offset == 1.0} == {p for p, leaf in table.items()
                                                                        if leaf.norm}
  assert table["blocks/mlp_norm"].hf == "pre_feedforward_layernorm.weight"
  assert table["blocks/post_attn_norm"].hf == "post_attention_layernorm.weight"
  assert table["blocks/post_mlp_norm"].gguf == "post_ffw_norm.weight"
  assert not any(leaf.gguf_permuted for leaf in table.values())


# ----------------------------------------------------------------------------- the forward pass


@pytest.mark.parametrize("change", [{"attn_softcap": None}, {"final_softcap": None},
                                    {"sliding_window": SEQ_LEN}])
def test_each_feature_changes_the_logits(model, change):
  config, params = model
  ids, mask = _batch(config.vocab_size)
  base = _logits(params, config, ids, mask)
  assert _max_diff(_logits(params, dataclasses.replace(config, **change), ids, mask), base, mask) > 1e-3


def test_final_softcap_bounds_the_logits(model):
  config, params = model
  ids, mask = _batch(config.vocab_size)
  capped = _logits(params, config, ids, mask)
  free = _logits(params, dataclasses.replace(config, final_softcap=None), ids, mask)
  assert np.abs(free).max() > config.final_softcap  # the cap binds on this batch
  assert np.abs(capped).max() < config.final_softcap
  np.testing.assert_allclose(capped, config.final_softcap * np.tanh(free / config.final_softcap), atol=1e-5)


def test_the_window_acts_on_the_even_layers_beyond_its_reach(model):
  config, params = model
  ids, mask = _batch(config.vocab_size)
  base = _logits(params, config, ids, mask)
  # Every layer global differs, and so does windowing the odd layers instead of the even ones.
  assert _max_diff(_logits(params, dataclasses.replace(config, local_layers=(False,) * N_LAYERS), ids, mask),
                   base, mask) > 1e-3
  odd = (False, True) * (N_LAYERS // 2)
  odd_logits = _logits(params, dataclasses.replace(config, local_layers=odd), ids, mask)
  assert _max_diff(odd_logits, base, mask) > 1e-3
  # Positions inside the window see the same keys either way.
  early = np.zeros_like(mask)
  early[:, :WINDOW] = mask[:, :WINDOW]
  wide = _logits(params, dataclasses.replace(config, sliding_window=SEQ_LEN), ids, mask)
  assert _max_diff(wide, base, early) < 1e-5


def test_caps_apply_on_every_path(model):
  """Last-position, selected-rows and cached-prefix runs give the full pass's capped logits."""
  config, params = model
  ids, mask = _batch(config.vocab_size)
  full = _logits(params, config, ids, mask)
  rows = np.arange(len(LENGTHS))
  last = np.asarray(LENGTHS) - 1
  np.testing.assert_allclose(_logits(params, config, ids, mask, "last"), full[rows, last], atol=1e-5)
  pick = jnp.asarray([5, 17, 40], jnp.int32)
  sub = np.asarray(forward(params, config, jnp.asarray(ids), jnp.asarray(mask), logit_rows=pick).logits)
  np.testing.assert_allclose(sub, full[rows, last][:, [5, 17, 40]], atol=1e-5)
  # A shared prefix of 3 tokens, cached: the window (4) reaches back into it.
  p = 3
  cache = prefix_cache(params, config, jnp.asarray(ids[0, :p]))
  suffix = np.broadcast_to(ids[0, p:], (2, SEQ_LEN - p))
  cached = np.asarray(forward(params, config, jnp.asarray(suffix), jnp.ones(suffix.shape, jnp.int32),
                              logits_at="all", prefix=cache).logits)
  np.testing.assert_allclose(cached[0], full[0, p:], atol=1e-4)


def test_steering_intervention_runs_through_the_caps(model):
  """An added direction moves the logits, and the moved logits stay inside the final cap."""
  config, params = model
  ids, mask = _batch(config.vocab_size)
  direction = jnp.asarray(np.random.default_rng(5).standard_normal(config.d_model), jnp.float32)
  iv = iv_lib.Intervention(mask=jnp.asarray(mask, jnp.float32), vector=direction,
                           strength=jnp.asarray(50.0, jnp.float32), site="resid_post.1")
  base = _logits(params, config, ids, mask)
  steered = np.asarray(forward(params, config, jnp.asarray(ids), jnp.asarray(mask), logits_at="all",
                               interventions=(iv,)).logits)
  assert _max_diff(steered, base, mask) > 1e-2
  assert np.abs(steered).max() < config.final_softcap


def test_sharded_equals_unsharded(model):
  config, params = model
  ids, mask = _batch(config.vocab_size)
  mesh = sharding.make_mesh("data:2,model:4")
  placed = sharding.shard_params(params, mesh)
  assert placed["blocks"]["q"].sharding.spec[2] == "model"  # heads really are split
  batch = sharding.batch_sharding(mesh)
  want = _logits(params, config, ids, mask)
  ids_s, mask_s = (jax.device_put(jnp.asarray(x), batch) for x in (ids, mask))
  got = _logits(placed, config, ids_s, mask_s)
  err = np.abs(got - want).max()
  assert err <= 1e-5 * np.abs(want).max(), f"max abs diff {err:.3g}"


# ----------------------------------------------------------------------------- GGUF


def test_gguf_round_trip(tmp_path, model):
  config, params = model
  path = gfx.write_gguf(tmp_path / "g2.gguf", config, params, metadata=_gguf_metadata(config))
  got_config, got_params, provenance = gguf_load.load_gguf(path)
  assert got_config == config
  assert provenance["architecture"] == "gemma2" and not provenance["qk_unpermuted"]
  assert provenance["unused_tensors"] == []
  for leaf_path, want in params_lib.flatten(params).items():
    np.testing.assert_array_equal(params_lib.flatten(got_params)[leaf_path], want, err_msg=leaf_path)
  ids, mask = _batch(config.vocab_size)
  want = _logits(params, config, ids, mask)
  np.testing.assert_array_equal(_logits(got_params, got_config, ids, mask), want)


def test_gguf_metadata_switches():
  """No window or caps in the file: all-global, uncapped; the 27B model's query scale."""
  config = tiny_config(sliding_window=None, local_layers=(), attn_softcap=None, final_softcap=None)
  meta = {key: value for key, (value, _) in gfx.gguf_metadata(config).items()}
  got = families.config_from_gguf(meta, "m.gguf")
  assert got == config
  big = dict(meta, **{"gemma2.block_count": 46, "gemma2.embedding_length": 4608,
                      "gemma2.attention.head_count": 32, "gemma2.attention.key_length": 128,
                      "gemma2.attention.value_length": 128, "gemma2.rope.dimension_count": 128,
                      "gemma2.attention.sliding_window": 4096})
  got = families.config_from_gguf(big, "m.gguf")
  assert got.query_scale == pytest.approx(144 ** -0.5) and got.head_dim == 128
  assert got.local_layers == gemma2.alternating_local_layers(46) and got.sliding_window == 4096


# ----------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory):
  """(torch model, snapshot directory) of a tiny random Gemma 2 with ``_CONFIG_JSON``'s sizes."""
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tests import hf_fixtures as hfx

  def build(**overrides):
    keys = {k: v for k, v in _CONFIG_JSON.items() if k not in ("model_type", "architectures")}
    keys.update(overrides)
    model = hfx.build(transformers.Gemma2Config(**keys), seed=11)
    return model, hfx.save(model, str(tmp_path_factory.mktemp("gemma2")))

  return build


@pytest.mark.slow
def test_logits_match_transformers(hf_case):
  from jaxsem.models import hf_load
  from tests import hf_fixtures as hfx

  torch_model, snap = hf_case()
  config, params, _ = hf_load.load_hf(snap)
  assert config == families.config_from_hf(_CONFIG_JSON, "config.json")
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
  for change in ({"attn_softcap": None}, {"final_softcap": None}, {"sliding_window": SEQ_LEN},
                 {"query_scale": 16 ** -0.5}, {"embed_scale": 1.0}, {"post_norms": False}):
    changed = _logits(params, dataclasses.replace(config, **change), ids, mask)
    assert _max_diff(changed, ref, mask) > 1e-3, change


@pytest.mark.slow
def test_gguf_of_the_tiny_hf_weights_gives_transformers_logits(hf_case, tmp_path):
  from jaxsem.models import hf_load
  from tests import hf_fixtures as hfx

  # GGUF has no query_pre_attn_scalar (llama.cpp scales by head_dim), so the checkpoint uses that.
  torch_model, snap = hf_case(query_pre_attn_scalar=16)
  config, params, _ = hf_load.load_hf(snap)
  path = gfx.write_gguf(tmp_path / "g2.gguf", config, params, types="F32", metadata=_gguf_metadata(config))
  got_config, got_params, provenance = gguf_load.load_gguf(path)
  assert got_config == config
  assert provenance["architecture"] == "gemma2" and provenance["norms_include_plus_one"]
  ids, mask = hfx.batch(LENGTHS, SEQ_LEN, seed=13)
  ref = hfx.hf_logits(torch_model, ids, mask)
  assert _max_diff(_logits(got_params, got_config, ids, mask), ref, mask) < 1e-4
  assert math.isclose(got_config.query_scale, 16 ** -0.5)
