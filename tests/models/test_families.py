"""Model families as data: the leaf table, config mapping per family, and GGUF files written
from tiny Hugging Face weights loading to transformers' logits."""

from __future__ import annotations

import ast
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.errors import InputError
from jaxsem.models import families
from jaxsem.models import params as params_lib
from jaxsem.models.families import leaf_table
from tests import gguf_fixtures as gfx
from tests import toy

_QWEN3 = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 256, "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 24, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
          "rope_theta": 1e6,
          "hidden_act": "silu", "tie_word_embeddings": True, "attention_bias": False,
          "use_sliding_window": False, "sliding_window": None, "max_window_layers": 2}
_CONFIGS = {"llama": toy.llama_config(),
            "qwen2": gfx.tiny_qwen_config("qwen2", tied=False), "qwen3": gfx.tiny_qwen_config("qwen3"),
            "gemma3": gfx.tiny_gemma3_config(n_layers=2)}


def _configs():
  return list(_CONFIGS.values()) + [gfx.tiny_llama_config(tied=False, qkv_bias=True)]


@pytest.mark.parametrize("config", _configs(),
                         ids=lambda c: f"{c.family}-bias{c.qkv_bias}-tied{c.tie_embeddings}")
def test_leaf_table_gives_shapes_axes_and_names(config):
  table = families.leaves(config)
  shapes = params_lib.param_shapes(config)
  assert list(shapes) == [leaf.path for leaf in table]
  abstract = jax.eval_shape(lambda k: params_lib.init_params(config, k), jax.random.key(0))
  abstract = params_lib.flatten(abstract)
  assert {path: tuple(x.shape) for path, x in abstract.items()} == shapes
  for leaf in table:
    assert len(leaf.axes) == len(shapes[leaf.path]) and sharding.PARAM_AXES[leaf.path] == leaf.axes
    assert (leaf.axes[0] == "layers") == leaf.stacked
    assert int(np.prod(leaf.file_shape(config))) * (config.n_layers if leaf.stacked else 1) == \
        int(np.prod(shapes[leaf.path]))
  assert len({leaf.hf for leaf in table}) == len({leaf.gguf for leaf in table}) == len(table)
  assert ("blocks/q_bias" in shapes) == config.qkv_bias and ("blocks/q_norm" in shapes) == config.qk_norm
  assert ("unembed" in shapes) == (not config.tie_embeddings)


def test_family_conventions():
  gemma, qwen3 = families.get("gemma3"), families.get("qwen3")
  norms = {leaf.path: leaf.hf_offset for leaf in gemma.leaves(_CONFIGS["gemma3"]) if leaf.norm}
  assert set(norms.values()) == {1.0} and "blocks/q_norm" in norms  # Gemma stores w for 1 + w
  # Qwen 3 stores the multiplier itself.
  assert all(leaf.hf_offset == 0.0 for leaf in qwen3.leaves(_CONFIGS["qwen3"]))
  permuted = {leaf.path for leaf in families.get("llama").leaves(gfx.tiny_llama_config(qkv_bias=True))
              if leaf.gguf_permuted}
  assert permuted == {"blocks/q", "blocks/k", "blocks/q_bias", "blocks/k_bias"}
  assert not any(leaf.gguf_permuted for name in ("qwen2", "qwen3", "gemma3")
                 for leaf in families.get(name).leaves(_CONFIGS[name]))


def test_heads_converter_undoes_the_interleaved_rope_order():
  """File rows ``2j + p`` of each head are rotate-half rows ``p * Dh/2 + j``."""
  n, dh, d = 3, 8, 5
  slot = np.arange(d * n * dh, dtype=np.float32).reshape(d, n, dh)  # [D, n, Dh]
  rotate_half = slot.transpose(1, 2, 0)  # [n, Dh, D]: Hugging Face rows per head
  interleaved = rotate_half.reshape(n, 2, dh // 2, d).swapaxes(1, 2).reshape(n * dh, d)
  leaf = leaf_table.Q
  np.testing.assert_array_equal(leaf_table.convert(leaf, rotate_half.reshape(n * dh, d), slot.shape), slot)
  np.testing.assert_array_equal(leaf_table.convert(leaf, interleaved, slot.shape, permuted=True), slot)
  assert not np.array_equal(leaf_table.convert(leaf, interleaved, slot.shape), slot)


def test_qwen3_config_from_hf():
  config = families.config_from_hf(_QWEN3, "config.json")
  assert (config.family, config.qk_norm, config.qkv_bias, config.head_dim) == ("qwen3", True, False, 24)
  assert config.rope_theta == 1e6 and config.tie_embeddings and not any(config.local_layers)
  qwen2 = families.config_from_hf(dict(_QWEN3, model_type="qwen2"), "config.json")
  assert (qwen2.family, qwen2.qkv_bias, qwen2.qk_norm) == ("qwen2", True, False)


@pytest.mark.parametrize("config_json, words", [
    (dict(_QWEN3, attention_bias=True), ("attention_bias", "qwen3")),
    (dict(_QWEN3, model_type="llama", attention_bias=True), ("attention_bias", "llama")),
    (dict(_QWEN3, model_type="falcon"), ("model_type 'falcon' is not supported", "qwen3")),
])
def test_unsupported_family_or_feature_is_one_line(config_json, words):
  with pytest.raises(InputError) as info:
    families.config_from_hf(config_json, "snap/config.json")
  message = str(info.value)
  assert "\n" not in message and message.startswith("snap/config.json")
  assert all(w in message for w in words), message


def test_unsupported_gguf_architecture_is_one_line():
  with pytest.raises(InputError, match=r"architecture 'falcon' is not supported.*qwen2, qwen3"):
    families.config_from_gguf({"general.architecture": "falcon"}, "m.gguf")


_IO = pathlib.Path(__file__).parents[2] / "jaxsem" / "io"
_MODELS = re.compile(r"jaxsem\.models(\.\w+)*")


def _models_imports(source: str, package: str = "jaxsem.io") -> list[str]:
  """What ``source`` (a module of ``package``) imports from ``jaxsem.models``, in any form.

  Import statements, from-imports (absolute or relative, of the package or a name in it),
  and strings naming a module of it (``importlib.import_module("jaxsem.models.x")``, a
  table of lazily imported modules); docstrings are prose and may name it.
  """
  tree = ast.parse(source)
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [a.name for a in node.names if _MODELS.fullmatch(a.name)]
    elif isinstance(node, ast.ImportFrom):
      base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
      module = ".".join(base + ([node.module] if node.module else []))
      found += [f"{module}.{a.name}" for a in node.names if _MODELS.fullmatch(f"{module}.{a.name}")]
      found += [module] if _MODELS.fullmatch(module) else []
    elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
          and _MODELS.fullmatch(node.value.strip())):
      found.append(node.value)
  return found


@pytest.mark.parametrize("source, caught", [
    ("import jaxsem.models.params", True), ("import jaxsem.models as m", True),
    ("from jaxsem.models import params", True), ("from jaxsem.models.config import ModelConfig", True),
    ("from jaxsem import models", True), ("from .. import models", True), ("from ..models import load", True),
    ("import importlib\nimportlib.import_module('jaxsem.models.families')", True),
    ("_MOVED = {'load_hf': 'jaxsem.models.hf_load'}", True),
    ('"""Readers; ``jaxsem.models.hf_load`` maps their tensors."""', False),
    ("from jaxsem.io import gguf_file\nfrom . import dequant\nimport jaxsem.errors", False),
])
def test_models_import_check_catches_every_form(source, caught):
  assert bool(_models_imports(source)) == caught


@pytest.mark.parametrize("path", sorted(_IO.rglob("*.py")), ids=lambda p: p.name)
def test_io_imports_nothing_from_models(path):
  assert _models_imports(path.read_text(encoding="utf-8")) == [], path.name


# ----------------------------------------------------------------------------- GGUF from HF weights


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_bias", "qwen3_qk_norm", "mistral_window"])
def test_gguf_of_the_tiny_hf_weights_gives_transformers_logits(tmp_path, name):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from jaxsem.models import gguf_load
  from jaxsem.models import hf_load
  from jaxsem.models.forward import forward
  from tests import hf_fixtures as hfx

  model = hfx.build(name, seed=7)
  config, params, _ = hf_load.load_hf(hfx.save(model, str(tmp_path / "snap")))
  path = gfx.write_gguf(tmp_path / f"{name}.gguf", config, params, types="F32")
  got_config, got_params, provenance = gguf_load.load_gguf(path)
  assert got_config == config
  if name == "mistral_window":  # the window, on every layer, survives the GGUF (llama architecture)
    assert got_config.sliding_window and all(got_config.local_layers)
  assert provenance["architecture"] == config.family
  assert provenance["qk_unpermuted"] == (config.family == "llama")
  ids, mask = hfx.batch([9, 4, 7], 9, seed=8)
  ref = hfx.hf_logits(model, ids, mask)
  fn = jax.jit(forward, static_argnames=("config", "logits_at"))
  got = np.asarray(fn(got_params, got_config, jnp.asarray(ids), jnp.asarray(mask), logits_at="all").logits)
  valid = mask.astype(bool)
  assert np.abs(got[valid] - ref[valid]).max() < 1e-4
