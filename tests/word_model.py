"""A tiny llama-style GGUF model that speaks every word the analyses ask for.

Launcher tests that check plumbing (resume after kill -9, out_dir locks, layouts,
provenance, error lines) need a model that loads in a moment and covers the rated words,
the pole words and the readout words as single tokens, not a real one. This file writes
one: random weights (``d_model`` 64, two layers) and a byte-level BPE vocabulary in which
every ASCII word of the norm tables and scale files is one word-initial token (``Ġword``),
built by a chain of merges through its prefixes. Any other text still tokenizes, byte by
byte. Its numbers mean nothing; two runs of the same command must still agree exactly.

Typical use::

    path = word_model.write(tmp_path / "words.gguf")
    subprocess.run([sys.executable, "-m", "launch.align", f"--model={path}", ...])
"""

from __future__ import annotations

import os

import numpy as np

from jaxsem.io import assets
from jaxsem.io import scales as scales_io
from jaxsem.io.tokenizer import _byte_alphabet
from tests import gguf_fixtures

MARKER = "\u0120"  # "Ġ": byte-level BPE's spelling of a leading space
SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2: gguf_fixtures' PAD, BOS, EOS
ROWS_MULTIPLE = 128  # unused tokens pad the vocabulary to this, as real ones are padded, so it shards
_NORMAL, _CONTROL = 1, 3


# The norm tables whose rated words are spelled. brysbaert and lancaster (about 40k words each)
# would double the vocabulary and every load of it; tests on this model name these tables.
SPELLED_NORMS = ("warriner", "anew", "dal")


def words() -> list[str]:
  """The words given one token each: rated words and scale words that are plain ASCII letters."""
  found: set[str] = set()
  for name in SPELLED_NORMS:
    found.update(assets.read_norms(name)[0])
  for set_name in scales_io.SCALE_SETS:
    for scale in scales_io.load_scales(set_name):
      for side in (scale.positive, scale.negative, scale.readout_positive, scale.readout_negative):
        found.update(side or ())
  return sorted(w for w in found if w.isascii() and w.isalpha())


def vocabulary(word_list: list[str]) -> tuple[list[str], list[int], list[str]]:
  """(tokens, token types, merges): specials, the 256 byte characters, each word's prefix chain, unused."""
  byte_alphabet = _byte_alphabet()  # GPT-2's byte -> character map, as the GGUF reader spells bytes
  alphabet = [byte_alphabet[b] for b in range(256)]
  tokens = [*SPECIALS, *alphabet]
  types = [_CONTROL] * len(SPECIALS) + [_NORMAL] * len(alphabet)
  known = set(tokens)
  merges = []
  for word in word_list:
    piece = MARKER
    for ch in word:
      longer = piece + ch
      if longer not in known:
        known.add(longer)
        tokens.append(longer)
        types.append(_NORMAL)
        merges.append(f"{piece} {ch}")
      piece = longer
  while len(tokens) % ROWS_MULTIPLE:
    tokens.append(f"<unused{len(tokens)}>")
    types.append(_CONTROL)
  return tokens, types, merges


def write(path: str | os.PathLike, *, seed: int = 0, d_model: int = 64, n_layers: int = 2) -> str:
  """Writes the word model to ``path`` (about 9 MB) and returns ``str(path)``."""
  tokens, types, merges = vocabulary(words())
  config = gguf_fixtures.tiny_llama_config(tied=True, n_layers=n_layers, vocab_size=len(tokens),
                                           d_model=d_model, n_heads=4, n_kv_heads=2, head_dim=d_model // 4,
                                           d_ff=2 * d_model)
  params = gguf_fixtures.random_params(config, seed=seed)
  # Small embeddings (the tied unembedding too) and small weights give logits of a trained model's size
  # (a few units), so float32 sums in another order stay as close as they do on a real model.
  rng = np.random.default_rng(seed + 1)
  params["embed"] = (0.3 * rng.standard_normal(params["embed"].shape)).astype(np.float32)
  params["blocks"] = {k: (v if k.endswith("norm") else 0.2 * v) for k, v in params["blocks"].items()}
  metadata = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
              "tokenizer.ggml.merges": merges, "tokenizer.ggml.pre": "gpt2",
              "tokenizer.ggml.add_bos_token": True}
  return gguf_fixtures.write_gguf(path, config, params, types={"*": "F32", "embed": "F16"}, name="word-model",
                                  metadata=metadata)
