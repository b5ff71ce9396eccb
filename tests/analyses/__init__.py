"""Shared helpers for analysis tests: a tiny tokenizer with a word-initial marker, and a
toy Gemma-3-like model that speaks it."""

import jax
import numpy as np
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from jaxsem import sharding
from jaxsem.io.tokenizer import Tokenizer
from jaxsem.models.model import Model
from tests import toy

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")
# Pieces of the toy vocabulary ("_" stands for the word-initial marker); every prefix of
# a piece is added too, so BPE can build each piece one character at a time.
PIECES = ("_kind", "_cruel", "_good", "_bad", "_hot", "_cold", "_Happy", "_SAD", "_ice", "_cream",
          "_word", "_the", "_un", "kind", "ness", "The", "ly")
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPRSTUVWXYZ"  # no "Q"


def toy_tokenizer(marker: str = "\u2581") -> Tokenizer:
  """A BPE tokenizer spelling word-initial pieces with ``marker`` ("▁" or "Ġ").

  "▁" behaves like Gemma's tokenizer (spaces become "▁", ``<bos>`` is prepended);
  "Ġ" like byte-level BPE (GPT-2 split, no BOS). Letters outside ``LETTERS`` are unknown.
  """
  vocab: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
  vocab.setdefault(marker, len(vocab))
  for ch in LETTERS:
    vocab.setdefault(ch, len(vocab))
  merges = []
  for piece in PIECES:
    piece = piece.replace("_", marker)
    for k in range(2, len(piece) + 1):
      if piece[:k] not in vocab:
        vocab[piece[:k]] = len(vocab)
        merges.append((piece[:k - 1], piece[k - 1]))
  backend = Backend(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
  if marker == "\u2581":
    backend.normalizer = normalizers.Replace(" ", marker)
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    backend.decoder = decoders.Replace(marker, " ")
  else:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
  backend.add_special_tokens(list(SPECIALS))
  return Tokenizer(backend, kind="toy", source="toy", pre_tokenizer="toy", word_initial_marker=marker,
                   bos_id=2, eos_ids=(1,), pad_id=0)


def toy_model(mesh=None, seed: int = 1, embed_offset: float = 0.0) -> Model:
  """The toy gemma3 config with random params (seed ``seed``) and ``toy_tokenizer``.

  Args:
    mesh: shard the params on it (None: one device).
    seed: params seed.
    embed_offset: added to every embedding entry (a large vocabulary mean).
  """
  cfg = toy.CONFIGS["gemma3"]()
  params = toy.params_for(cfg, seed=seed)
  if embed_offset:
    params = {k: (v + embed_offset if k == "embed" else v) for k, v in params.items()}
  if mesh is not None:
    params = sharding.shard_params(jax.tree.map(np.asarray, params), mesh)
  return Model(config=cfg, params=params, tokenizer=toy_tokenizer(), provenance={"name": "toy"}, mesh=mesh)

