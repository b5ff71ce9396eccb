"""Malformed and hostile model files give one InputError naming the file, never a traceback."""

import json
import os
import re
import struct

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models

from jaxsem.errors import InputError
from jaxsem.io import gguf_file
from jaxsem.io import hf_checkpoint
from jaxsem.io import safe_json
from jaxsem.io import scales
from jaxsem.io import tokenizer as tokenizer_lib
from jaxsem.models import families
from jaxsem.models import model_configs
from tests.test_launch import _assert_one_line_error, _run

DEEP = 100_000

LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 96, "max_position_embeddings": 256}


def _one_sentence(message: str, *needles: str) -> None:
  assert "\n" not in message and message.rstrip().endswith("."), message
  for needle in needles:
    assert needle in message, message


def _snapshot(directory, config: dict | str) -> str:
  """A snapshot directory that gets as far as reading config.json (the weights are never opened)."""
  directory.mkdir(exist_ok=True)
  text = config if isinstance(config, str) else json.dumps(config)
  (directory / "config.json").write_text(text)
  (directory / "model.safetensors").write_bytes(b"")
  (directory / "tokenizer.json").write_text(_backend().to_str())
  return str(directory)


def _backend() -> Backend:
  return Backend(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))


# ----------------------------------------------------------------------------- config.json values


@pytest.mark.parametrize("overrides, needles", [
    ({"num_hidden_layers": -1}, ("num_hidden_layers", "-1", "positive whole number")),
    ({"num_hidden_layers": 2.5}, ("num_hidden_layers", "2.5", "positive whole number")),
    ({"num_hidden_layers": "2"}, ("num_hidden_layers", "'2'")),
    ({"num_hidden_layers": True}, ("num_hidden_layers", "True")),
    ({"num_attention_heads": 0}, ("num_attention_heads",)),
    ({"num_key_value_heads": 3}, ("inconsistent architecture", "n_heads=4", "n_kv_heads=3")),
    ({"eos_token_id": 1.5}, ("eos_token_id", "1.5")),
    ({"rope_scaling": "linear"}, ("config.json",)),
    ({"layer_types": 7}, ("config.json",)),
])
def test_bad_config_values_are_refused(overrides, needles):
  path = "/snap/config.json"
  with pytest.raises(InputError) as info:
    families.config_from_hf({**LLAMA, **overrides}, path)
  _one_sentence(str(info.value), path, *needles)


def test_whole_floats_are_accepted_and_not_truncated():
  config = families.config_from_hf({**LLAMA, "num_hidden_layers": 2.0}, "config.json")
  assert config.n_layers == 2 and isinstance(config.n_layers, int)


def test_model_config_reuses_the_same_checks(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({**LLAMA, "num_key_value_heads": 3}))
  with pytest.raises(InputError) as info:
    model_configs.load_model_config(path)
  _one_sentence(str(info.value), f"--model_config={path}", "n_kv_heads=3")


def test_snapshot_with_negative_layers(tmp_path):
  from jaxsem.models.load import load

  directory = _snapshot(tmp_path / "snap", {**LLAMA, "num_hidden_layers": -1})
  with pytest.raises(InputError) as info:
    load(directory, params_cache=False)
  _one_sentence(str(info.value), directory, "num_hidden_layers", "-1")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/abs/model.safetensors", 3, ["a"]])
def test_index_shards_must_be_file_names(tmp_path, shard):
  directory = _snapshot(tmp_path / "snap", LLAMA)
  index = os.path.join(directory, "model.safetensors.index.json")
  with open(index, "w") as f:
    json.dump({"weight_map": {"model.embed_tokens.weight": shard}}, f)
  with pytest.raises(InputError) as info:
    hf_checkpoint.read_hf_dir(directory)
  _one_sentence(str(info.value), index, "weight_map")


# ----------------------------------------------------------------------------- nesting and size


def test_nesting_depth_ignores_brackets_in_strings():
  assert safe_json.nesting_depth('{"a": [1, {"b": "[[[\\"[{"}], "c": "\\\\"}') == 3
  assert safe_json.nesting_depth("[" * DEEP + "]" * DEEP) == DEEP
  assert safe_json.nesting_depth('"[[["') == 0


def test_deep_config_json(tmp_path):
  directory = _snapshot(tmp_path / "snap", "[" * DEEP + "]" * DEEP)
  with pytest.raises(InputError) as info:
    hf_checkpoint.read_hf_dir(directory)
  _one_sentence(str(info.value), os.path.join(directory, "config.json"), f"nested {DEEP} levels")


def test_deep_model_config(tmp_path):
  path = tmp_path / "arch.json"
  path.write_text('{"a": ' + "[" * DEEP + "]" * DEEP + "}")
  with pytest.raises(InputError) as info:
    model_configs.load_model_config(path)
  _one_sentence(str(info.value), f"--model_config={path}", "nested")


def test_deep_scale_file(tmp_path):
  path = tmp_path / "scales.json"
  path.write_text('{"scales": ' + "[" * DEEP + "]" * DEEP + "}")
  with pytest.raises(InputError) as info:
    scales.read_json(path)
  _one_sentence(str(info.value), str(path), "nested")


def _tokenizer_dir(directory):
  directory.mkdir()
  (directory / "tokenizer.json").write_text(_backend().to_str())
  return directory


def test_good_tokenizer_json_still_loads(tmp_path):
  directory = _tokenizer_dir(tmp_path / "tok")
  (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "a"}))
  assert tokenizer_lib.tokenizer_from_json(directory).eos_ids == (0,)


def test_deep_tokenizer_config_json(tmp_path):
  directory = _tokenizer_dir(tmp_path / "tok")
  path = directory / "tokenizer_config.json"
  path.write_text("[" * DEEP + "]" * DEEP)
  with pytest.raises(InputError) as info:
    tokenizer_lib.tokenizer_from_json(directory)
  _one_sentence(str(info.value), str(path), "nested")


def test_deep_tokenizer_json(tmp_path):
  directory = tmp_path / "tok"
  directory.mkdir()
  path = directory / "tokenizer.json"
  path.write_text('{"model": ' + "{\"a\": " * DEEP + "0" + "}" * DEEP + "}")
  with pytest.raises(InputError) as info:
    tokenizer_lib.tokenizer_from_json(directory)
  _one_sentence(str(info.value), str(path), "nested")


def test_tokenizer_json_is_capped(tmp_path, monkeypatch):
  directory = _tokenizer_dir(tmp_path / "tok")
  monkeypatch.setattr(safe_json, "MAX_TOKENIZER_BYTES", 64)
  with pytest.raises(InputError) as info:
    tokenizer_lib.tokenizer_from_json(directory)
  _one_sentence(str(info.value), str(directory / "tokenizer.json"), "bytes", "64")


def test_side_files_are_capped_and_must_be_regular(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(LLAMA))
  with pytest.raises(InputError, match=re.escape(str(path)) + ".* more than the 10 allowed"):
    safe_json.read_object(path, max_bytes=10)
  assert safe_json.read_object(path) == LLAMA
  pipe = tmp_path / "pipe.json"
  os.mkfifo(pipe)  # opening it would wait for a writer forever
  with pytest.raises(InputError, match="not a regular file"):
    safe_json.read_object(pipe)


def test_top_level_must_be_an_object(tmp_path):
  path = tmp_path / "config.json"
  path.write_text("[1, 2]")
  with pytest.raises(InputError, match="holds a JSON array"):
    safe_json.read_object(path)


# ----------------------------------------------------------------------------- GGUF headers


def _s(text: str) -> bytes:
  raw = text.encode()
  return struct.pack("<Q", len(raw)) + raw


def _u32(key: str, value: int) -> bytes:
  return _s(key) + struct.pack("<II", 4, value)


def _gguf(path, kv: list[bytes], tensors: list[tuple[str, tuple[int, ...]]] = ()) -> str:
  """A GGUF v3 file with raw metadata entries and F32 tensors of the given GGUF dims (data zeros)."""
  header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
  for name, dims in tensors:
    header += _s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
    header += struct.pack("<IQ", 0, 0)
  path.write_bytes(header + bytes(64))
  return str(path)


def _gguf_error(path) -> str:
  with pytest.raises(InputError) as info:
    gguf_file.GGUFFile(path)
  message = str(info.value)
  _one_sentence(message, path)
  return message


def test_gguf_arrays_nested_deep(tmp_path):
  nested = _s("x.nested") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 200_000 + struct.pack("<IQ", 4, 0)
  assert "nested more than" in _gguf_error(_gguf(tmp_path / "deep.gguf", [nested]))


def test_gguf_array_count_beyond_the_file(tmp_path):
  huge = _s("x.huge") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1 << 60)
  assert "claims" in _gguf_error(_gguf(tmp_path / "huge.gguf", [huge]))


@pytest.mark.parametrize("value", [
    struct.pack("<II", 4, 0),  # 0: a division by zero
    struct.pack("<I", 8) + _s("32"),  # a string
    struct.pack("<I?", 7, True),  # a bool
])
def test_gguf_bad_alignment(tmp_path, value):
  path = _gguf(tmp_path / "align.gguf", [_s("general.alignment") + value], [("t", (4,))])
  assert "general.alignment" in _gguf_error(path)


def test_gguf_good_alignment_still_reads(tmp_path):
  path = _gguf(tmp_path / "ok.gguf", [_u32("general.alignment", 16)], [("t", (4,))])
  with gguf_file.GGUFFile(path) as f:
    assert f.tensors["t"].shape == (4,) and f.tensors["t"].nbytes == 16


def test_gguf_dims_whose_product_overflows_int64(tmp_path):
  # 2**32 * 2**32 elements wraps to 0 in int64, which used to pass the size check.
  path = _gguf(tmp_path / "overflow.gguf", [], [("t", (1 << 32, 1 << 32))])
  assert "needs" in _gguf_error(path)


# ----------------------------------------------------------------------------- launchers


def test_launchers_print_one_line(tmp_path):
  config = tmp_path / "config.json"
  config.write_text(json.dumps({**LLAMA, "num_hidden_layers": 2.5}))
  _assert_one_line_error(_run("launch.plan", f"--model_config={config}", "--mesh=model:1"),
                         str(config), "num_hidden_layers")
  bad = _gguf(tmp_path / "align.gguf", [_u32("general.alignment", 0)], [("t", (4,))])
  _assert_one_line_error(_run("launch.generate", f"--model={bad}", "--max_new_tokens=1"), bad,
                         "general.alignment")
