"""Hugging Face snapshot directories without the reference implementation: configs, layout, bad input.

The snapshots here are written with numpy (``tests/hf_snapshots.py``); the same loader is checked
against transformers' own checkpoints in ``test_hf_checkpoint.py`` (slow).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings

import numpy as np
import pytest
import safetensors.numpy

from jaxsem.errors import InputError
from jaxsem.io import hf_checkpoint as hc
from jaxsem.models import families
from jaxsem.models import hf_load
from jaxsem.models import params as params_lib
from jaxsem.models.config import RopeScaling
from tests import hf_snapshots as snaps

QWEN3_TINY = dict(snaps.LLAMA, model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=24,
                  tie_word_embeddings=True, attention_bias=False, rope_theta=1e6)
GEMMA3_TINY = {
    "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 256, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 4, "max_position_embeddings": 256,
    "rope_theta": 1e6, "rope_local_base_freq": 1e4, "hidden_activation": "gelu_pytorch_tanh",
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """name -> (state dict, snapshot dir), written once per module."""
  configs = {"llama": snaps.LLAMA, "qwen2_bias": snaps.QWEN2, "qwen3": QWEN3_TINY, "gemma3": GEMMA3_TINY}
  cache = {}

  def get(name):
    if name not in cache:
      d, sd = snaps.write(tmp_path_factory.mktemp(name), configs[name])
      cache[name] = (sd, d)
    return cache[name]

  return get


def _copy(src: str, dst) -> str:
  dst = os.fspath(dst)
  shutil.copytree(src, dst)
  return dst


def expected_params(sd: dict[str, np.ndarray], config, prefix: str = "model.") -> dict[str, np.ndarray]:
  """The documented layout, written out independently of the loader."""
  c = config
  D, H, K, Dh = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
  plus = 1.0 if c.family == "gemma3" else 0.0
  flat = {"embed": sd[f"{prefix}embed_tokens.weight"], "final_norm": sd[f"{prefix}norm.weight"] + plus}
  if not c.tie_embeddings:
    flat["unembed"] = sd["lm_head.weight"]
  per_layer = {
      "attn_norm": lambda p: sd[p + "input_layernorm.weight"] + plus,
      "q": lambda p: sd[p + "self_attn.q_proj.weight"].T.reshape(D, H, Dh),
      "k": lambda p: sd[p + "self_attn.k_proj.weight"].T.reshape(D, K, Dh),
      "v": lambda p: sd[p + "self_attn.v_proj.weight"].T.reshape(D, K, Dh),
      "o": lambda p: sd[p + "self_attn.o_proj.weight"].T.reshape(H, Dh, D),
      "gate": lambda p: sd[p + "mlp.gate_proj.weight"].T,
      "up": lambda p: sd[p + "mlp.up_proj.weight"].T,
      "down": lambda p: sd[p + "mlp.down_proj.weight"].T,
  }
  if c.family == "gemma3":
    per_layer.update({
        "q_norm": lambda p: sd[p + "self_attn.q_norm.weight"] + plus,
        "k_norm": lambda p: sd[p + "self_attn.k_norm.weight"] + plus,
        "post_attn_norm": lambda p: sd[p + "post_attention_layernorm.weight"] + plus,
        "mlp_norm": lambda p: sd[p + "pre_feedforward_layernorm.weight"] + plus,
        "post_mlp_norm": lambda p: sd[p + "post_feedforward_layernorm.weight"] + plus,
    })
  else:
    per_layer["mlp_norm"] = lambda p: sd[p + "post_attention_layernorm.weight"]
    if c.qk_norm:  # Qwen 3 stores the multiplier itself
      per_layer.update({"q_norm": lambda p: sd[p + "self_attn.q_norm.weight"],
                        "k_norm": lambda p: sd[p + "self_attn.k_norm.weight"]})
  if c.qkv_bias:
    per_layer.update({
        "q_bias": lambda p: sd[p + "self_attn.q_proj.bias"].reshape(H, Dh),
        "k_bias": lambda p: sd[p + "self_attn.k_proj.bias"].reshape(K, Dh),
        "v_bias": lambda p: sd[p + "self_attn.v_proj.bias"].reshape(K, Dh),
    })
  for leaf, get in per_layer.items():
    flat[f"blocks/{leaf}"] = np.stack([get(f"{prefix}layers.{i}.") for i in range(c.n_layers)])
  return flat


def _assert_equal_flat(params: dict, expected: dict) -> None:
  flat = params_lib.flatten(params)
  assert sorted(flat) == sorted(expected)
  for path, want in expected.items():
    got = np.asarray(flat[path])
    assert got.shape == want.shape, path
    np.testing.assert_array_equal(got, want, err_msg=path)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", ["llama", "qwen2_bias", "qwen3", "gemma3"])
def test_params_follow_the_documented_layout(saved, name):
  sd, d = saved(name)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every tensor is used, nothing is unsupported
    config = families.config_from_hf(hc.read_hf_dir(d)[0], d)
    params = hf_load.load_hf_params(d, config)
  assert config.qkv_bias == (name == "qwen2_bias") and config.tie_embeddings == (name != "llama")
  assert config.qk_norm == (name in ("qwen3", "gemma3"))
  _assert_equal_flat(params, expected_params(sd, config))


def test_sharded_snapshot_loads_the_same(saved, tmp_path):
  sd, d = saved("gemma3")
  sharded, _ = snaps.write(tmp_path / "sharded", GEMMA3_TINY, shards=4)
  files = hc.read_hf_dir(sharded)[2]
  assert len(files) == 4 and os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
  config = families.config_from_hf(hc.read_hf_dir(d)[0], d)
  _assert_equal_flat(hf_load.load_hf_params(sharded, config), expected_params(sd, config))


# ----------------------------------------------------------------------------- configs

GEMMA3_1B_STYLE = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attn_logit_softcapping": None,
    "bos_token_id": 2, "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "intermediate_size": 6912,
    "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
    "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16", "vocab_size": 262144,
}

GEMMA3_4B_STYLE = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "boi_token_index": 255999,
    "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
    "mm_tokens_per_image": 256,
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152},
}

LLAMA31_STYLE = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256,
}


def test_gemma3_old_form_config():
  c = families.config_from_hf(GEMMA3_1B_STYLE, "config.json")
  assert c.local_layers == tuple((i + 1) % 6 != 0 for i in range(26))
  assert (c.rope_theta, c.rope_local_theta, c.rope_scaling) == (1e6, 1e4, None)
  assert c.embed_scale == pytest.approx(math.sqrt(1152)) and c.query_scale == pytest.approx(1 / 16)
  assert (c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size) == (4, 1, 256, 262144)
  assert c.eos_token_ids == (1, 106) and c.bos_token_id == 2 and c.tie_embeddings
  assert c.sliding_window == 512 and c.activation == "gelu_tanh" and c.qk_norm and c.post_norms


def test_llama31_old_rope_form():
  old = families.config_from_hf(LLAMA31_STYLE, "config.json")
  assert old.rope_scaling == RopeScaling("llama3", 32.0, 1.0, 4.0, 8192) and old.rope_theta == 5e5
  assert old.head_dim == 64 and old.n_kv_heads == 8 and old.eos_token_ids == (128001, 128008, 128009)


@pytest.mark.parametrize("change, words", [
    ({"model_type": "gpt2"}, "gemma3_text"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "gelu"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_unsupported_configs(change, words):
  bad = dict(LLAMA31_STYLE, **change)
  with pytest.raises(InputError, match=words) as e:
    families.config_from_hf(bad, "/snap/config.json")
  assert "/snap/config.json" in str(e.value)


def test_gemma3_attn_softcap_ignored_like_the_reference():
  with pytest.warns(UserWarning, match="attn_logit_softcapping"):
    c = families.config_from_hf(dict(GEMMA3_1B_STYLE, attn_logit_softcapping=50.0,
                               final_logit_softcapping=30.0), "c.json")
  assert c.attn_softcap is None and c.final_softcap == 30.0


def test_dynamic_rope_warns_and_is_default():
  with pytest.warns(UserWarning, match="dynamic"):
    dynamic = dict(LLAMA31_STYLE, rope_scaling={"type": "dynamic", "factor": 2.0})
    c = families.config_from_hf(dynamic, "c.json")
  assert c.rope_scaling is None


# ----------------------------------------------------------------------------- bad input


def test_missing_directory(tmp_path):
  with pytest.raises(InputError, match="not a directory") as e:
    hc.read_hf_dir(tmp_path / "nope")
  assert "nope" in str(e.value)


def test_missing_config(saved, tmp_path):
  d = _copy(saved("llama")[1], tmp_path / "snap")
  os.remove(os.path.join(d, "config.json"))
  with pytest.raises(InputError, match="config.json"):
    hc.read_hf_dir(d)


def test_truncated_safetensors(saved, tmp_path):
  d = _copy(saved("llama")[1], tmp_path / "snap")
  path = os.path.join(d, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  config = families.config_from_hf(hc.read_hf_dir(d)[0], d)
  with pytest.raises(InputError, match="model.safetensors") as e:
    hf_load.load_hf_params(d, config)
  assert "re-download" in str(e.value)


def test_garbage_safetensors(saved, tmp_path):
  d = _copy(saved("llama")[1], tmp_path / "snap")
  with open(os.path.join(d, "model.safetensors"), "wb") as f:
    f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
  with pytest.raises(InputError, match="model.safetensors"):
    hf_load.load_hf(d)


def test_shape_mismatch_names_file_tensor_and_shapes(saved, tmp_path):
  d = _copy(saved("llama")[1], tmp_path / "snap")
  cfg_path = os.path.join(d, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["intermediate_size"] = 96
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(InputError) as e:
    hf_load.load_hf(d)
  msg = str(e.value)
  assert "model.safetensors" in msg and "mlp.gate_proj.weight" in msg
  assert "[128, 64]" in msg and "[96, 64]" in msg


def test_missing_tensor(saved, tmp_path):
  d = _copy(saved("qwen2_bias")[1], tmp_path / "snap")
  _rewrite(os.path.join(d, "model.safetensors"), lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
  with pytest.raises(InputError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias is missing"):
    hf_load.load_hf(d)


def _rewrite(path: str, change) -> None:
  with safetensors.safe_open(path, "numpy") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  change(tensors)
  safetensors.numpy.save_file(tensors, path)


def test_unused_tensor_warns(saved, tmp_path):
  d = _copy(saved("llama")[1], tmp_path / "snap")
  _rewrite(os.path.join(d, "model.safetensors"),
           lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
  with pytest.warns(UserWarning, match=r"1 tensors were not used \(e.g. model.layers.0.self_attn.o_proj.bias"):
    hf_load.load_hf(d)


def test_tied_checkpoint_with_stored_head_loads_silently(saved, tmp_path):
  sd, src = saved("qwen2_bias")
  d = _copy(src, tmp_path / "snap")
  _rewrite(os.path.join(d, "model.safetensors"),
           lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    config, params, _ = hf_load.load_hf(d)
  assert config.tie_embeddings and "unembed" not in params
  np.testing.assert_array_equal(params["embed"], sd["model.embed_tokens.weight"])


def test_missing_shard(tmp_path):
  d, _ = snaps.write(tmp_path / "sharded", snaps.LLAMA, shards=3)
  shard = sorted(n for n in os.listdir(d) if n.endswith(".safetensors"))[-1]
  os.remove(os.path.join(d, shard))
  with pytest.raises(InputError, match=shard):
    hc.read_hf_dir(d)


def test_pickle_only_directory(saved, tmp_path):
  d = _copy(saved("llama")[1], tmp_path / "snap")
  os.remove(os.path.join(d, "model.safetensors"))
  with open(os.path.join(d, "pytorch_model.bin"), "wb") as f:
    f.write(b"not loaded")
  with pytest.raises(InputError, match="pickle checkpoints are not loaded; convert to safetensors") as e:
    hc.read_hf_dir(d)
  assert "pytorch_model.bin" in str(e.value)


def test_no_weights_at_all(saved, tmp_path):
  d = _copy(saved("llama")[1], tmp_path / "snap")
  os.remove(os.path.join(d, "model.safetensors"))
  with pytest.raises(InputError, match="no \\*.safetensors"):
    hc.read_hf_dir(d)


def test_unsupported_model_type_in_directory(saved, tmp_path):
  d = _copy(saved("llama")[1], tmp_path / "snap")
  cfg_path = os.path.join(d, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  with open(cfg_path, "w") as f:
    json.dump(dict(cfg, model_type="falcon"), f)
  with pytest.raises(InputError, match="'falcon' is not supported; supported: llama, mistral") as e:
    hf_load.load_hf(d)
  assert "config.json" in str(e.value)
