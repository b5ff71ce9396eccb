"""GGUF string arrays: long ones are decoded only when read, and read back exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxsem.errors import InputError
from jaxsem.io import gguf_file
from tests import gguf_fixtures as fx


def _write(tmp_path: Path, strings: list[str]) -> str:
  config = fx.tiny_llama_config(vocab_size=16, n_layers=1)
  return fx.write_gguf(tmp_path / "s.gguf", config, fx.random_params(config),
                       metadata={"test.strings": (strings, fx.GGUFValueType.ARRAY)})


def test_long_array_is_lazy_and_reads_back_exactly(tmp_path):
  strings = [f"piece{i}-ü東{'x' * (i % 7)}" for i in range(gguf_file._LAZY_STRINGS + 37)] + ["", "a b"]
  with gguf_file.GGUFFile(_write(tmp_path, strings)) as f:
    value = f.metadata["test.strings"]
    assert isinstance(value, gguf_file.StringArray)
    assert len(value) == len(strings) and value._list is None  # len() decodes nothing
    assert value[5] == strings[5] and value[-1] == "a b"
    assert list(value) == strings and value == strings
    assert f.metadata["general.architecture"] == "llama"  # what follows the array is read right
    assert set(f.tensors) >= {"token_embd.weight"}


def test_short_array_stays_a_list(tmp_path):
  with gguf_file.GGUFFile(_write(tmp_path, ["a", "bb", "ccc"])) as f:
    assert f.metadata["test.strings"] == ["a", "bb", "ccc"]
    assert isinstance(f.metadata["test.strings"], list)


def test_truncated_long_array_is_refused_with_one_line(tmp_path):
  strings = ["y" * 50] * (gguf_file._LAZY_STRINGS + 1)
  path = Path(_write(tmp_path, strings))
  data = path.read_bytes()
  start = data.index(b"test.strings")
  path.write_bytes(data[:start + 12 + 4 + 8 + 100 * 58])  # cut inside the array
  with pytest.raises(InputError, match="truncated") as e:
    gguf_file.GGUFFile(path)
  assert "\n" not in str(e.value)
