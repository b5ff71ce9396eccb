"""The tokenizer cache: the JSON copy encodes as the rebuilt tokenizer; damage, switches, keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxsem.io import assets, params_cache, tokenizer_cache
from jaxsem.io import tokenizer as tokenizer_lib
from jaxsem.io.gguf_file import GGUFFile
from tests import gguf_fixtures as fx

TEXTS = ["<t5><t7> <t9>", "The capital of France is", "  two  spaces\tand a tab\n", "naïve café 東京 🤖", ""]



@pytest.fixture
def toy(tmp_path: Path) -> str:
  config = fx.tiny_gemma3_config(vocab_size=40, n_layers=1)
  return fx.write_gguf(tmp_path / "toy.gguf", config, fx.random_params(config), types="F16")


class _Builder:
  """``build`` for ``cached_tokenizer`` that counts its calls."""

  def __init__(self, path: str):
    self.path, self.calls = path, 0

  def __call__(self) -> tokenizer_lib.Tokenizer:
    self.calls += 1
    with GGUFFile(self.path) as f:
      return tokenizer_lib.tokenizer_from_gguf(f.metadata, self.path)


def _assert_same(a: tokenizer_lib.Tokenizer, b: tokenizer_lib.Tokenizer) -> None:
  assert {k: v for k, v in vars(a).items() if k != "backend"} == {k: v for k, v in vars(b).items()
                                                                    if k != "backend"}
  for special in (True, False):
    want = b.encode_batch(TEXTS, add_special_tokens=special)
    assert a.encode_batch(TEXTS, add_special_tokens=special) == want
  assert a.decode(a.encode(TEXTS[0])) == b.decode(b.encode(TEXTS[0]))
  assert a.vocab_size == b.vocab_size


def _cached_files(root: Path) -> list[Path]:
  return sorted((root / "tokenizers").glob("*.json")) if (root / "tokenizers").is_dir() else []


def test_second_call_reads_the_cached_copy(cache_root, toy, capsys):
  build = _Builder(toy)
  built = tokenizer_cache.cached_tokenizer(toy, build)
  (path,) = _cached_files(cache_root)
  assert path == tokenizer_cache.path_for(params_cache.source_sha256(toy))
  cached = tokenizer_cache.cached_tokenizer(toy, build)
  assert build.calls == 1
  _assert_same(cached, built)
  assert "warning" not in capsys.readouterr().err


def test_damaged_file_warns_once_and_is_rewritten(cache_root, toy, capsys):
  build = _Builder(toy)
  built = tokenizer_cache.cached_tokenizer(toy, build)
  (path,) = _cached_files(cache_root)
  path.write_text(json.dumps({"format": tokenizer_cache.FORMAT_VERSION, "fields": {}, "backend": "{"}))
  rebuilt = tokenizer_cache.cached_tokenizer(toy, build)
  err = capsys.readouterr().err
  assert build.calls == 2 and err.count("warning") == 1 and str(path) in err and "Traceback" not in err
  _assert_same(rebuilt, built)
  _assert_same(tokenizer_cache.cached_tokenizer(toy, build), built)
  assert build.calls == 2


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_disabled_cache_writes_nothing(cache_root, toy, how, monkeypatch):
  if how == "environment":
    monkeypatch.setenv(params_cache.ENV, "off")
  build = _Builder(toy)
  tokenizer_cache.cached_tokenizer(toy, build, use_cache=how != "argument")
  tokenizer_cache.cached_tokenizer(toy, build, use_cache=how != "argument")
  assert build.calls == 2 and not _cached_files(cache_root)


def test_new_fingerprint_replaces_the_stale_file(cache_root, toy, monkeypatch):
  tokenizer_cache.cached_tokenizer(toy, _Builder(toy))
  (old,) = _cached_files(cache_root)
  monkeypatch.setattr(tokenizer_cache, "FORMAT_VERSION", tokenizer_cache.FORMAT_VERSION + 1)
  build = _Builder(toy)
  tokenizer_cache.cached_tokenizer(toy, build)
  (new,) = _cached_files(cache_root)
  assert build.calls == 1 and new != old and new.name.split("-")[0] == old.name.split("-")[0]


def test_tokenizer_that_does_not_round_trip_is_not_cached(cache_root, toy):
  def build():
    tokenizer = _Builder(toy)()
    tokenizer.extra_state = "not in the record"  # a field the cache would lose
    return tokenizer

  assert tokenizer_cache.cached_tokenizer(toy, build).extra_state == "not in the record"
  assert not _cached_files(cache_root)


@pytest.mark.slow
def test_embedded_bpe_tokenizer_round_trips(cache_root):
  path = str(assets.resolve_model("smollm2-135m-instruct").path)
  build = _Builder(path)
  built = tokenizer_cache.cached_tokenizer(path, build)
  cached = tokenizer_cache.cached_tokenizer(path, build)
  assert build.calls == 1
  _assert_same(cached, built)
  text = "Steering vectors shift 1,234 tokens — naïvely? <|im_start|>user\nHi<|im_end|>"
  assert cached.encode(text) == built.encode(text)


def test_merges_are_kept_as_strings_unless_a_piece_holds_a_space():
  from tokenizers import Tokenizer as Backend
  from tokenizers.models import BPE

  vocab = {"a": 0, "b": 1, "ab": 2, "c": 3, "abc": 4, " ": 5, " a": 6}
  plain = Backend(BPE(vocab=vocab, merges=[("a", "b"), ("ab", "c")])).to_str()
  compact = json.loads(tokenizer_cache._compact_merges(plain))
  assert compact["model"]["merges"] == ["a b", "ab c"]
  assert Backend.from_str(json.dumps(compact)).encode("abc").ids == Backend.from_str(plain).encode("abc").ids
  spaced = Backend(BPE(vocab=vocab, merges=[("a", "b"), (" ", "a")])).to_str()
  assert tokenizer_cache._compact_merges(spaced) == spaced
