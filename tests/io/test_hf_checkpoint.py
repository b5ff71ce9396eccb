"""Loading Hugging Face snapshots that transformers itself saved: the layout against its state dicts
(``jaxsem.io.hf_checkpoint`` reads the files, ``jaxsem.models.hf_load`` maps them).

Slow: needs torch and transformers (the reference). The same loader's configs, layout and bad
input are checked without them in ``test_hf_checkpoint_input.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxsem import sharding  # noqa: E402
from jaxsem.io import hf_checkpoint as hc  # noqa: E402
from jaxsem.models import families  # noqa: E402
from jaxsem.models import hf_load  # noqa: E402
from jaxsem.models import params as params_lib  # noqa: E402
from jaxsem.models.config import RopeScaling  # noqa: E402
from tests import hf_fixtures as fx  # noqa: E402
from tests.io.test_hf_checkpoint_input import GEMMA3_1B_STYLE  # noqa: E402
from tests.io.test_hf_checkpoint_input import GEMMA3_4B_STYLE  # noqa: E402
from tests.io.test_hf_checkpoint_input import LLAMA31_STYLE  # noqa: E402
from tests.io.test_hf_checkpoint_input import _assert_equal_flat  # noqa: E402
from tests.io.test_hf_checkpoint_input import expected_params as _expected_common  # noqa: E402

pytestmark = pytest.mark.slow


def expected_params(sd: dict[str, np.ndarray], config, prefix: str = "model.") -> dict[str, np.ndarray]:
  """The documented layout written out independently of the loader, with Qwen 3's q/k norms
  (the multiplier itself, no ``+1``)."""
  flat = _expected_common(sd, config, prefix)
  if config.qk_norm and config.family != "gemma3":
    for name in ("q_norm", "k_norm"):
      flat[f"blocks/{name}"] = np.stack([sd[f"{prefix}layers.{i}.self_attn.{name}.weight"]
                                         for i in range(config.n_layers)])
  return flat


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """name -> (model, snapshot dir), built once per module."""
  cache = {}

  def get(name):
    if name not in cache:
      model = fx.build(name)
      cache[name] = (model, fx.save(model, str(tmp_path_factory.mktemp(name))))
    return cache[name]

  return get


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("name", sorted(fx.CONFIGS))
def test_params_equal_state_dict(saved, name):
  model, d = saved(name)
  config_json, tokenizer, files = hc.read_hf_dir(d)
  assert tokenizer is None and files == [os.path.join(d, "model.safetensors")]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every tensor is used, nothing is unsupported
    config = families.config_from_hf(config_json, d)
    calls = []
    params = hf_load.load_hf_params(d, config, progress=lambda done, total: calls.append((done, total)))
  expected = expected_params(fx.state_dict(model), config)
  assert [t for _, t in calls] == [config.n_params] * len(calls) and calls[-1][0] == config.n_params
  assert all(b[0] > a[0] for a, b in zip(calls, calls[1:]))
  _assert_equal_flat(params, expected)
  assert params_lib.param_shapes(config) == {k: v.shape for k, v in expected.items()}
  assert all(np.asarray(v).dtype == np.float32 for v in params_lib.flatten(params).values())


def test_sharded_checkpoint_loads_the_same(saved, tmp_path):
  model, d = saved("gemma3")
  sharded = fx.save(model, str(tmp_path / "sharded"), max_shard_size="40KB")
  _, _, files = hc.read_hf_dir(sharded)
  assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
  assert len(files) > 3
  config = families.config_from_hf(hc.read_hf_dir(d)[0], d)
  want = params_lib.flatten(hf_load.load_hf_params(d, config))
  _assert_equal_flat(hf_load.load_hf_params(sharded, config), want)


def test_placer_gets_each_leaf_once_and_complete(saved):
  model, d = saved("qwen2_bias")
  config = families.config_from_hf(hc.read_hf_dir(d)[0], d)
  expected = expected_params(fx.state_dict(model), config)
  calls = []

  class Watch(sharding.Placer):
    def assemble(self, path, shape, blocks):
      (block,) = blocks.values()
      np.testing.assert_array_equal(block, expected[path], err_msg=path)  # complete when handed over
      calls.append(path)
      return ("placed", path)

  params = hf_load.load_hf_params(d, config, placer=Watch(None, np.float32, host=True))
  assert sorted(calls) == sorted(expected)
  assert all(v == ("placed", k) for k, v in params_lib.flatten(params).items())


def test_a_process_reads_only_the_rows_and_layers_of_its_blocks(saved, monkeypatch):
  """A placer holding half the shards of every leaf (process 0 of 2 on ``data:2,model:4``, one head and
  a quarter of the MLP per shard): the other heads' rows and columns, MLP rows and embedding rows are
  never read, every block equals the whole leaf's slice (vocabulary padding zero), and the progress
  total counts only what this process reads."""
  model, d = saved("qwen2_bias")
  config = families.config_from_hf(hc.read_hf_dir(d)[0], d)
  expected = expected_params(fx.state_dict(model), config)
  mesh = sharding.make_mesh("data:2,model:4")

  class FirstHalf(sharding.Placer):
    def blocks(self, path, shape):
      every = super().blocks(path, shape)
      return every[:max(1, len(every) // 2)]

    def assemble(self, path, shape, blocks):
      return blocks

  rows_read = []
  get = hc.Tensors.get

  def watched(self, name, shape, region=None):
    rows_read.append((name, region))
    return get(self, name, shape, region=region)

  monkeypatch.setattr(hc.Tensors, "get", watched)
  totals = []
  params = hf_load.load_hf_params(d, config, placer=FirstHalf(mesh, np.float32),
                                  progress=lambda done, total: totals.append((done, total)))
  v = config.vocab_size
  padded = -(-v // 4) * 4
  regions = {}
  for name, region in rows_read:
    regions.setdefault(name.split(".")[-2], []).append(region)  # "model.layers.0.mlp.up_proj.weight": up_proj
  assert regions["embed_tokens"] and all(r[0][1] <= padded // 2 for r in regions["embed_tokens"]), regions
  half_heads = config.n_heads // 2 * config.head_dim
  assert all(r[0][1] <= half_heads for r in regions["q_proj"]), regions["q_proj"]  # rows of heads 0, 1
  assert all(r[1][1] <= half_heads for r in regions["o_proj"]), regions["o_proj"]  # their columns
  assert all(r[0][1] <= config.d_ff // 2 for r in regions["gate_proj"] + regions["up_proj"])
  assert all(r[1][1] <= config.d_ff // 2 for r in regions["down_proj"])
  assert all(r is None for r in regions["k_proj"])  # 2 kv heads over 4 shards: replicated, read whole
  placed = {**{k: v for k, v in params.items() if k != "blocks"},
            **{f"blocks/{k}": v for k, v in params["blocks"].items()}}
  assert sorted(placed) == sorted(expected)
  for path, blocks in placed.items():
    want = expected[path]
    if path in ("embed", "unembed"):
      want = np.concatenate([want, np.zeros((padded - v, *want.shape[1:]), want.dtype)])
    for index, block in blocks.items():
      np.testing.assert_array_equal(block, want[tuple(slice(a, b) for a, b in index)], err_msg=path)
  # Every layer tensor is read whole (once), but only half the embedding's rows.
  embed = config.vocab_size * config.d_model
  assert totals[-1][0] == totals[-1][1] <= config.n_params - embed // 2 + config.d_model * 8, totals[-1]


def test_bfloat16_checkpoint(saved, tmp_path):
  model, _ = saved("gemma3")
  bf16 = fx.build("gemma3").to(torch.bfloat16)
  d = fx.save(bf16, str(tmp_path / "bf16"))
  config = families.config_from_hf(hc.read_hf_dir(d)[0], d)
  sd = fx.state_dict(bf16)  # bf16 values, widened exactly to float32
  _assert_equal_flat(hf_load.load_hf_params(d, config), expected_params(sd, config))
  params = params_lib.flatten(hf_load.load_hf_params(d, config, dtype=ml_dtypes.bfloat16))
  assert params["blocks/q"].dtype == ml_dtypes.bfloat16
  want = sd["model.layers.1.self_attn.q_proj.weight"].T.reshape(64, 4, 16)
  np.testing.assert_array_equal(params["blocks/q"][1].astype(np.float32), want)
  del model


def test_gemma3_multimodal_text_weights(tmp_path):
  text = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4, head_dim=16,
              num_hidden_layers=2, num_key_value_heads=2, sliding_window=4, query_pre_attn_scalar=16)
  vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, image_size=16, patch_size=8)
  cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                  image_token_index=255, boi_token_index=253, eoi_token_index=254)
  torch.manual_seed(0)
  model = transformers.Gemma3ForConditionalGeneration(cfg)
  fx.randomize(model, 0)
  d = fx.save(model, str(tmp_path / "mm"))
  config = families.config_from_hf(hc.read_hf_dir(d)[0], d)
  assert config.family == "gemma3" and config.n_layers == 2 and config.tie_embeddings
  text_sd = {f"model.{k}": v for k, v in fx.state_dict(model.model.language_model).items()}
  expected = expected_params(text_sd, config)
  _assert_equal_flat(hf_load.load_hf_params(d, config), expected)
  # The newer layout names the text model "model.language_model.*"; both load the same.
  renamed = tmp_path / "renamed"
  renamed.mkdir()
  shutil.copy(os.path.join(d, "config.json"), renamed / "config.json")
  with safetensors.safe_open(os.path.join(d, "model.safetensors"), "numpy") as f:
    tensors = {k.replace("language_model.model.", "model.language_model."): f.get_tensor(k) for k in f.keys()}
  safetensors.numpy.save_file(tensors, str(renamed / "model.safetensors"))
  _assert_equal_flat(hf_load.load_hf_params(renamed, config), expected)


# ----------------------------------------------------------------------------- configs


def test_gemma3_old_form_layer_types_match_the_reference():
  """The old form's sliding_window_pattern gives the layer types transformers reads from it."""
  c = families.config_from_hf(GEMMA3_1B_STYLE, "config.json")
  ref = transformers.Gemma3TextConfig(**{k: v for k, v in GEMMA3_1B_STYLE.items() if k != "torch_dtype"})
  assert c.local_layers == tuple(t == "sliding_attention" for t in ref.layer_types)
  assert not all(c.local_layers) and any(c.local_layers)


def test_gemma3_multimodal_config_defaults():
  c = families.config_from_hf(GEMMA3_4B_STYLE, "config.json")
  ref = transformers.Gemma3Config(**GEMMA3_4B_STYLE).text_config
  assert (c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size) == (
      ref.num_attention_heads, ref.num_key_value_heads, ref.head_dim, ref.vocab_size)
  assert c.rope_scaling == RopeScaling("linear", 8.0)
  assert c.rope_theta == ref.rope_parameters["full_attention"]["rope_theta"]
  assert c.rope_local_theta == ref.rope_parameters["sliding_attention"]["rope_theta"]
  assert c.local_layers == tuple(t == "sliding_attention" for t in ref.layer_types)
  assert c.eos_token_ids == (1, 106) and c.tie_embeddings


def test_llama31_old_and_new_rope_forms_agree():
  old = families.config_from_hf(LLAMA31_STYLE, "config.json")
  new_json = json.loads(transformers.LlamaConfig(**LLAMA31_STYLE).to_json_string())
  assert "rope_parameters" in new_json
  assert families.config_from_hf(new_json, "config.json") == old
