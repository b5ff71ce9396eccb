"""Checks at load and at use: tokenizer ids against embedding rows, prompts past the trained context."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tokenizers
from tokenizers import models as tok_models
from tokenizers import pre_tokenizers

import jaxsem
from tests import gguf_fixtures as gf
from tests import hf_snapshots

REPO = Path(__file__).resolve().parents[2]
ROWS = 64  # embedding rows of the snapshots built here


def _word_tokenizer(n_ids: int) -> tokenizers.Tokenizer:
  """Ids 0..n_ids-1: ``<pad> <bos> <eos>`` then ``w3 w4 ...``, split on whitespace."""
  vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, n_ids)}}
  tok = tokenizers.Tokenizer(tok_models.WordLevel(vocab=vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return tok


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
  """A tiny random llama snapshot (``ROWS`` embedding rows, 16-token context), no tokenizer yet."""
  config = dict(hf_snapshots.LLAMA, vocab_size=ROWS, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                head_dim=8, max_position_embeddings=16, tie_word_embeddings=True)
  return Path(hf_snapshots.write(tmp_path_factory.mktemp("weights"), config)[0])


def _snapshot(weights_dir: Path, tmp_path: Path, n_ids: int) -> Path:
  """``weights_dir`` beside a ``tokenizer.json`` of ``n_ids`` ids."""
  snap = tmp_path / f"snap{n_ids}"
  snap.mkdir()
  for f in weights_dir.iterdir():
    (snap / f.name).symlink_to(f)
  _word_tokenizer(n_ids).save(str(snap / "tokenizer.json"))
  (snap / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "pad_token": "<pad>"}))
  return snap


def _vocab_warnings(record) -> list[str]:
  return [str(w.message) for w in record if "token ids" in str(w.message)]


def test_tokenizer_with_ids_past_the_rows_is_refused(weights_dir, tmp_path):
  snap = _snapshot(weights_dir, tmp_path, ROWS + 936)
  with pytest.raises(jaxsem.InputError) as e:
    jaxsem.load(snap)
  msg = str(e.value)
  assert "\n" not in msg
  assert str(snap / "tokenizer.json") in msg and "1000 token ids" in msg and f"only {ROWS} rows" in msg
  assert "config.json" in msg and "use the tokenizer" in msg


def test_padded_vocabulary_loads_with_one_warning(weights_dir, tmp_path):
  snap = _snapshot(weights_dir, tmp_path, ROWS - 14)
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    model = jaxsem.load(snap)
  found = _vocab_warnings(record)
  assert len(found) == 1
  assert f"{ROWS} rows" in found[0] and f"{ROWS - 14} token ids" in found[0] and "14 rows" in found[0]
  assert model.next_token_logits(["w3 w4"]).shape == (1, ROWS)


def test_matching_vocabulary_loads_silently(weights_dir, tmp_path):
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    jaxsem.load(_snapshot(weights_dir, tmp_path, ROWS))
  assert _vocab_warnings(record) == []


def _toy_gguf(tmp_path: Path, n_tokens: int) -> str:
  config = gf.tiny_gemma3_config(vocab_size=96, n_layers=1)
  arr = gf.GGUFValueType.ARRAY
  meta = {"tokenizer.ggml.tokens": ([f"<t{i}>" for i in range(n_tokens)], arr),
          "tokenizer.ggml.token_type": ([1] * n_tokens, arr),
          "tokenizer.ggml.scores": ([0.0] * n_tokens, arr)}
  return gf.write_gguf(tmp_path / f"toy{n_tokens}.gguf", config, gf.random_params(config), metadata=meta)


def test_gguf_token_list_longer_than_the_embedding_is_refused(tmp_path):
  path = _toy_gguf(tmp_path, 100)
  with pytest.raises(jaxsem.InputError) as e:
    jaxsem.load(path)
  msg = str(e.value)
  assert "\n" not in msg and path in msg and "100 token ids" in msg and "only 96 rows" in msg


def test_gguf_token_list_shorter_than_the_embedding_warns(tmp_path):
  with pytest.warns(UserWarning, match="96 rows .* but the tokenizer only 90 token ids"):
    jaxsem.load(_toy_gguf(tmp_path, 90))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m-instruct"])
def test_embedded_models_have_no_unused_rows(embedded_models, name):
  model = embedded_models(name)
  assert [w for w in embedded_models.load_warnings(name) if "token ids" in w] == []
  assert model.tokenizer.vocab_size == model.config.vocab_size


# --------------------------------------------------------------------------- trained context


@pytest.fixture
def short_context_model(weights_dir, tmp_path):
  model = jaxsem.load(_snapshot(weights_dir, tmp_path, ROWS))
  assert model.config.max_position == 16
  return model


def _context_warnings(record) -> list[str]:
  return [str(w.message) for w in record if "max_position" in str(w.message)]


def test_generate_past_the_context_warns_once_per_model(short_context_model, weights_dir, tmp_path):
  prompt = " ".join(f"w{i}" for i in range(3, 13))  # 10 tokens
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    short_context_model.generate(prompt, max_new_tokens=8)
    short_context_model.generate(prompt, max_new_tokens=8)
    short_context_model.next_token_logits([prompt * 2])
  found = _context_warnings(record)
  assert len(found) == 1
  assert "10 tokens plus max_new_tokens=8" in found[0] and "18 tokens" in found[0] and "16" in found[0]


def test_prompt_within_the_context_does_not_warn(short_context_model):
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    short_context_model.generate("w3 w4 w5 w6", max_new_tokens=12)  # 16 tokens: just fits
    short_context_model.next_token_logits(["w3 " * 16])
  assert _context_warnings(record) == []


def test_next_token_logits_past_the_context_warns(short_context_model):
  with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    logits = short_context_model.next_token_logits(["w3 " * 20, "w4"])
  found = _context_warnings(record)
  assert len(found) == 1 and "20 tokens" in found[0]
  assert logits.shape == (2, ROWS)


def test_forward_past_the_context_warns(short_context_model):
  ids, mask = short_context_model.encode(["w5 " * 17])
  with pytest.warns(UserWarning, match="17 tokens, more than the 16"):
    short_context_model.forward(ids, mask, logits_at="last")
  assert dataclasses.replace(short_context_model)._context_warned is False  # a copy warns afresh


def test_generate_launcher_refuses_the_mismatch_in_one_line(weights_dir, tmp_path):
  snap = _snapshot(weights_dir, tmp_path, ROWS + 1)
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSEM_PARAMS_CACHE="0")
  proc = subprocess.run([sys.executable, "-m", "launch.generate", f"--model={snap}", "--prompt=w3 w4"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"{ROWS + 1} token ids" in errors[0], proc.stderr[-2000:]
  assert proc.stdout == ""
