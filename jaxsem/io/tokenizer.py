"""Tokenizers rebuilt from GGUF metadata or read from a Hugging Face ``tokenizer.json``.

Everything runs on the Hugging Face ``tokenizers`` library; this module only assembles
its parts. Two kinds of vocabulary are stored in GGUF files:

* ``tokenizer.ggml.model = gpt2``: byte-level BPE (SmolLM2, Llama 3, Qwen2). Tokens are
  spelled in GPT-2's byte alphabet (``Ġ`` is a space) and the merges are stored. How text
  is cut into words before BPE is not stored; ``tokenizer.ggml.pre`` names the original
  model's scheme (``_PRE_TOKENIZERS``). SmolLM2's ``smollm`` isolates every digit before
  GPT-2's split (transformers' GGUF loader skips that step, so it tokenizes a numeral
  after whitespace differently from SmolLM2's own tokenizer); Llama 3's ``llama-bpe`` uses
  its own split regex and looks whole words up before merging (``ignore_merges``); Qwen2
  applies NFC, then its own regex. An unknown name warns and falls back to GPT-2's split.
* ``tokenizer.ggml.model = llama``: SentencePiece BPE (Gemma 3). Pieces with scores and
  token types, no merges: spaces become ``▁``, a piece's merge rank is its score (for
  Gemma, its position in the file, see ``_rank_by_position``), unknown characters fall
  back to ``<0xNN>`` byte pieces, and a leading ``▁`` is added only when
  ``tokenizer.ggml.add_space_prefix`` is not False.

In both, control tokens (GGUF token type 3) become special added tokens and user-defined
tokens (type 4) plain added tokens, so both are matched whole in raw text. BOS/EOS are
added as ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` say (for ``llama``
vocabularies BOS defaults to on).

Building Gemma 3's 262,144-piece tokenizer (deriving about 515k merges) takes about 1 s,
about as long as parsing a saved ``tokenizer.json`` of it, so nothing is cached.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from jaxsem.errors import InputError
from jaxsem.io import gguf_file
from jaxsem.io import safe_json

BYTE_LEVEL_MARKER = "\u0120"  # "Ġ", a space in GPT-2's byte alphabet.
SENTENCEPIECE_MARKER = "\u2581"  # "▁", SentencePiece's space.

# GGUF token types (tokenizer.ggml.token_type).
_NORMAL, _CONTROL, _USER_DEFINED, _BYTE = 1, 3, 4, 6

# Regexes of the original models' tokenizer.json files (word splits before BPE).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre (llama.cpp's names) -> the family of word splitting it stands for.
_PRE_TOKENIZERS = {
    "default": "gpt2", "gpt-2": "gpt2", "gpt2": "gpt2",
    "smollm": "digits+gpt2", "starcoder": "digits+gpt2", "refact": "digits+gpt2",
    "llama-bpe": "llama3", "llama3": "llama3", "llama-v3": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2",
}

# Architectures whose SentencePiece pieces are stored in merge order (see _rank_by_position).
_POSITION_RANKED_ARCHS = frozenset({"gemma", "gemma2", "gemma3", "gemma3n"})


class Tokenizer:
  """A ``tokenizers.Tokenizer`` plus the facts about it that analyses need.

  Attributes:
    backend: The underlying ``tokenizers.Tokenizer``.
    bos_id: Id of the beginning-of-sequence token, or None.
    eos_ids: Ids that end a sequence (possibly empty).
    pad_id: Id of the padding token, or None.
  """

  def __init__(self, backend: Backend, *, kind: str, source: str, pre_tokenizer: str,
               word_initial_marker: str, bos_id: int | None = None,
               eos_ids: Sequence[int] = (), pad_id: int | None = None):
    self.backend = backend
    self.bos_id = bos_id
    self.eos_ids = tuple(int(i) for i in eos_ids)
    self.pad_id = pad_id
    self._kind = kind
    self._source = source
    self._pre_tokenizer = pre_tokenizer
    self._marker = word_initial_marker

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text``, with BOS/EOS added as the model's tokenizer adds them by default."""
    return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = True) -> list[list[int]]:
    """``encode`` for many texts (in parallel, in the ``tokenizers`` library)."""
    encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    return [e.ids for e in encodings]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """Text of ``ids``; special tokens are written out unless ``skip_special_tokens``."""
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def id_to_token(self, token_id: int) -> str | None:
    """The vocabulary entry of ``token_id`` (spelled with the word-initial marker), or None."""
    return self.backend.id_to_token(int(token_id))

  def token_to_id(self, token: str) -> int | None:
    """The id of a vocabulary entry (e.g. ``"Ġcat"`` or ``"▁cat"``), or None."""
    return self.backend.token_to_id(token)

  @property
  def vocab_size(self) -> int:
    """Number of token ids, added tokens included."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  @property
  def word_initial_marker(self) -> str:
    """``"Ġ"`` for byte-level BPE, ``"▁"`` for SentencePiece, ``""`` if there is none."""
    return self._marker

  def provenance(self) -> dict[str, Any]:
    """Where the tokenizer came from: kind, source file, vocabulary size, pre-tokenizer."""
    return {"kind": self._kind, "source": self._source, "vocab_size": self.vocab_size,
            "pre_tokenizer": self._pre_tokenizer}

  def __repr__(self) -> str:
    return f"Tokenizer({self._kind}, {self.vocab_size} tokens, from {self._source})"


# ---------------------------------------------------------------------------------------
# GGUF.


def tokenizer_from_gguf(metadata: dict[str, Any], path: str) -> Tokenizer:
  """Rebuilds the tokenizer that a GGUF file's metadata describes.

  Args:
    metadata: The file's metadata, e.g. ``GGUFFile(path).metadata``.
    path: The file's path, for provenance and error messages.

  Returns:
    The tokenizer, encoding exactly as the model's own tokenizer does.

  Raises:
    InputError: If the tokenizer metadata is missing, inconsistent or of an unsupported kind.
  """
  path = os.fspath(path)
  kind = metadata.get("tokenizer.ggml.model")
  tokens = metadata.get("tokenizer.ggml.tokens")
  if kind is None or not tokens:
    raise InputError(f"{path}: GGUF file has no tokenizer (tokenizer.ggml.model or .tokens is missing);"
                     " use a GGUF file converted with its tokenizer.")
  if not isinstance(tokens, (list, gguf_file.StringArray)) or not all(isinstance(t, str) for t in tokens):
    raise InputError(f"{path}: tokenizer.ggml.tokens is not a list of strings; the file is corrupt.")
  tokens = list(tokens)
  n = len(tokens)
  types = _per_token_array(metadata, "tokenizer.ggml.token_type", n, path)
  types = np.full(n, _NORMAL, np.int32) if types is None else types.astype(np.int32)
  scores = _per_token_array(metadata, "tokenizer.ggml.scores", n, path)
  ids = {name: _token_id(metadata, name, n, path) for name in ("bos", "eos", "padding", "unknown")}
  if kind == "gpt2":
    backend, pre = _byte_level(metadata, tokens, types, path)
    marker, add_bos_default = BYTE_LEVEL_MARKER, False
  elif kind == "llama":
    backend = _sentencepiece(metadata, tokens, types, scores, ids["unknown"], path)
    pre, marker, add_bos_default = "sentencepiece", SENTENCEPIECE_MARKER, True
  else:
    raise InputError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (gpt2 and llama are);"
                     " use a model with a BPE or SentencePiece-BPE vocabulary.")
  add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default))
  add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
  bos = (tokens[ids["bos"]], ids["bos"]) if add_bos and ids["bos"] is not None else None
  eos = (tokens[ids["eos"]], ids["eos"]) if add_eos and ids["eos"] is not None else None
  backend.post_processor = _template(bos, eos)
  eos_ids = [ids["eos"]] + [_token_id(metadata, k, n, path) for k in ("eot", "eom")]
  return Tokenizer(
      backend, kind=f"gguf-{kind}", source=path, pre_tokenizer=pre, word_initial_marker=marker,
      bos_id=ids["bos"], eos_ids=tuple(dict.fromkeys(i for i in eos_ids if i is not None)),
      pad_id=ids["padding"])


def _per_token_array(metadata: dict, key: str, n: int, path: str) -> np.ndarray | None:
  """A numeric per-token array, checked to have one entry per token."""
  value = metadata.get(key)
  if value is None:
    return None
  value = np.asarray(value)
  if value.ndim != 1 or len(value) != n or value.dtype.kind not in "iuf":
    raise InputError(f"{path}: {key} has {value.size} entries for {n} tokens in tokenizer.ggml.tokens;"
                     " the tokenizer metadata is inconsistent, re-convert the file.")
  return value


def _token_id(metadata: dict, name: str, n: int, path: str) -> int | None:
  """``tokenizer.ggml.<name>_token_id`` checked to be in range, or None when absent."""
  value = metadata.get(f"tokenizer.ggml.{name}_token_id")
  if value is None:
    return None
  if not 0 <= int(value) < n:
    raise InputError(f"{path}: tokenizer.ggml.{name}_token_id is {value} but there are {n} tokens;"
                     " the tokenizer metadata is inconsistent, re-convert the file.")
  return int(value)


def _template(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> processors.TemplateProcessing:
  """A post-processor adding ``bos`` before and ``eos`` after each sequence (either may be None)."""
  head = f"{bos[0]}:0 " if bos else ""
  tail = f" {eos[0]}:0" if eos else ""
  second_head = f"{bos[0]}:1 " if bos else ""
  second_tail = f" {eos[0]}:1" if eos else ""
  return processors.TemplateProcessing(
      single=f"{head}$A:0{tail}", pair=f"{head}$A:0{tail} {second_head}$B:1{second_tail}",
      special_tokens=[t for t in (bos, eos) if t is not None])


def _added_tokens(backend: Backend, tokens: list[str], types: np.ndarray, vocab: dict[str, int]) -> None:
  """Adds control tokens as special and user-defined ones as plain added tokens, matched in raw text."""
  def kept(token_type: int) -> list[AddedToken]:
    return [AddedToken(tokens[i], normalized=False, special=token_type == _CONTROL)
            for i in np.flatnonzero(types == token_type) if vocab.get(tokens[i]) == i]
  backend.add_special_tokens(kept(_CONTROL))
  backend.add_tokens(kept(_USER_DEFINED))


def _build_bpe(path: str, **kwargs) -> models.BPE:
  try:
    return models.BPE(**kwargs)
  except Exception as e:  # tokenizers raises a bare Exception for bad vocabularies.
    raise InputError(f"{path}: the tokenizer's vocabulary and merges do not fit together ({e});"
                     " the tokenizer metadata is inconsistent, re-convert the file.") from None


# ---------------------------------------------------------------------------------------
# Byte-level BPE.


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> character map: printable bytes stand for themselves, the rest shift past 255."""
  printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
  others = [b for b in range(256) if b not in printable]
  table = {b: chr(b) for b in printable}
  table.update({b: chr(256 + k) for k, b in enumerate(others)})
  return table


def _byte_level(metadata: dict, tokens: list[str], types: np.ndarray, path: str) -> tuple[Backend, str]:
  """A byte-level BPE tokenizer from stored merges; returns it and its pre-tokenizer name."""
  merges = metadata.get("tokenizer.ggml.merges")
  if not merges:
    raise InputError(f"{path}: byte-level BPE tokenizer has no tokenizer.ggml.merges; re-convert the file"
                     " with its merges.")
  pairs = [tuple(m.split(" ")) for m in merges]
  if any(len(p) != 2 for p in pairs):
    raise InputError(f"{path}: tokenizer.ggml.merges holds entries that are not two tokens separated by"
                     " one space; the file is corrupt.")
  table = _byte_alphabet()
  alphabet = frozenset(table.values())
  respell = lambda t: "".join(table[b] for b in t.encode("utf-8"))  # noqa: E731
  kept = (_CONTROL, _USER_DEFINED)
  spelled = [t if kind in kept or alphabet.issuperset(t) else respell(t)
             for t, kind in zip(tokens, types.tolist())]
  vocab = {t: i for i, t in enumerate(spelled)}
  pre = str(metadata.get("tokenizer.ggml.pre", "default"))
  family = _PRE_TOKENIZERS.get(pre)
  if family is None:
    warnings.warn(f"{path}: unknown tokenizer.ggml.pre {pre!r}; splitting words as GPT-2 does, which may"
                  " differ from the original tokenizer.", stacklevel=3)
    family = "gpt2"
  backend = Backend(_build_bpe(path, vocab=vocab, merges=pairs, ignore_merges=family == "llama3"))
  backend.normalizer, backend.pre_tokenizer = _byte_level_split(family)
  backend.decoder = decoders.ByteLevel()
  _added_tokens(backend, spelled, types, vocab)
  return backend, pre


def _byte_level_split(family: str) -> tuple[normalizers.Normalizer | None, pre_tokenizers.PreTokenizer]:
  """(normalizer, pre-tokenizer) of the original tokenizers of a ``_PRE_TOKENIZERS`` family."""
  gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if family == "gpt2":
    return None, gpt2
  if family == "digits+gpt2":
    return None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
  split = _LLAMA3_SPLIT if family == "llama3" else _QWEN2_SPLIT
  pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  return (normalizers.NFC() if family == "qwen2" else None), pre


# ---------------------------------------------------------------------------------------
# SentencePiece BPE.


def _sentencepiece(metadata: dict, tokens: list[str], types: np.ndarray, scores: np.ndarray | None,
                   unk_id: int | None, path: str) -> Backend:
  """A SentencePiece-style BPE tokenizer with merges derived from the pieces."""
  # Pieces of two or more spaces are stored with real spaces; text reaches BPE with "▁".
  pieces = [SENTENCEPIECE_MARKER * len(t) if len(t) > 1 and not t.strip(" ") else t for t in tokens]
  vocab = {p: i for i, p in enumerate(pieces)}
  arch = metadata.get("general.architecture")
  if arch in _POSITION_RANKED_ARCHS:
    merges = _rank_by_position(pieces, vocab)
  else:
    if scores is None:
      raise InputError(f"{path}: SentencePiece tokenizer has no tokenizer.ggml.scores; re-convert the file"
                       " with its scores.")
    merges = _rank_by_score(pieces, vocab, scores)
  unk = tokens[unk_id] if unk_id is not None else ("<unk>" if "<unk>" in vocab else None)
  model = _build_bpe(path, vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                     byte_fallback=bool(np.any(types == _BYTE)))
  backend = Backend(model)
  steps = [decoders.Replace(SENTENCEPIECE_MARKER, " "), decoders.ByteFallback(), decoders.Fuse()]
  if metadata.get("tokenizer.ggml.add_space_prefix", True):
    backend.pre_tokenizer = pre_tokenizers.Metaspace(SENTENCEPIECE_MARKER, prepend_scheme="first",
                                                     split=False)
    steps.append(decoders.Strip(" ", 1, 0))
  else:
    backend.normalizer = normalizers.Replace(" ", SENTENCEPIECE_MARKER)
  backend.decoder = decoders.Sequence(steps)
  _added_tokens(backend, tokens, types, vocab)
  return backend


def _splits(pieces: list[str], vocab: dict[str, int]) -> list[tuple[int, str, str]]:
  """(piece id, left, right) for every cut of a piece into two pieces, longer left part first."""
  return [(i, p[:k], p[k:]) for i, p in enumerate(pieces) for k in range(len(p) - 1, 0, -1)
          if p[:k] in vocab and p[k:] in vocab]


def _rank_by_position(pieces: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
  """Merges ranked by the merged piece's position in the file, earlier first.

  Gemma's pieces are stored in the order BPE learned them, but the scores of its
  user-defined pieces (runs of spaces) are -1000 although SentencePiece matches those
  whole before any merge; their early positions give them that priority.
  """
  return [(left, right) for _, left, right in _splits(pieces, vocab)]


def _rank_by_score(pieces: list[str], vocab: dict[str, int], scores: np.ndarray) -> list[tuple[str, str]]:
  """Merges ranked by the merged piece's score, highest first (ties: longer left part, lower id)."""
  cuts = _splits(pieces, vocab)
  score = scores.tolist()
  cuts.sort(key=lambda c: (-score[c[0]], -len(c[1]), -len(c[2]), c[0]))
  return [(left, right) for _, left, right in cuts]


# ---------------------------------------------------------------------------------------
# Hugging Face tokenizer.json.


def tokenizer_from_json(path: str | os.PathLike[str]) -> Tokenizer:
  """Loads a Hugging Face ``tokenizer.json``; ``tokenizer_config.json`` beside it names BOS/EOS/pad.

  Special tokens are added exactly as the post-processor in ``tokenizer.json`` says. As in
  ``transformers`` (5.x), ``add_bos_token`` / ``add_eos_token`` in ``tokenizer_config.json``
  do not change that when a ``tokenizer.json`` exists. Both files are read within
  ``safe_json``'s limits: ``tokenizer.json`` up to ``safe_json.MAX_TOKENIZER_BYTES``,
  ``tokenizer_config.json`` up to ``safe_json.MAX_BYTES``, and no further than their
  listed sizes.

  Args:
    path: A snapshot directory holding ``tokenizer.json``, or that file itself.

  Raises:
    InputError: If the file is missing or not a valid ``tokenizer.json``.
  """
  path = os.fspath(path)
  file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise InputError(f"{file}: no such file; give a Hugging Face snapshot directory with tokenizer.json.")
  fix = "re-download it"
  text = safe_json.read_text(file, max_bytes=safe_json.MAX_TOKENIZER_BYTES, fix=fix)
  spec = safe_json.loads(text, file, fix)  # first: its nesting limit guards the parser below too
  if not isinstance(spec, dict):
    raise InputError(f"{file}: not a tokenizer.json (the top level is not a JSON object); {fix}.")
  try:
    backend = Backend.from_str(text)
  except Exception as e:
    raise InputError(f"{file}: not a valid tokenizer.json ({str(e)[:200]}); re-download it.") from None
  config = _read_config(os.path.join(os.path.dirname(file), "tokenizer_config.json"))
  bos, eos, pad = (_config_token(backend, config.get(k)) for k in ("bos_token", "eos_token", "pad_token"))
  marker = _marker_of(spec)
  pre = (spec.get("pre_tokenizer") or {}).get("type", "none")
  return Tokenizer(backend, kind="tokenizer.json", source=file, pre_tokenizer=pre,
                   word_initial_marker=marker, bos_id=bos and bos[1], eos_ids=(eos[1],) if eos else (),
                   pad_id=pad and pad[1])


def _marker_of(spec: dict[str, Any]) -> str:
  """The word-initial marker a tokenizer.json's normalizer, pre-tokenizer and decoder imply."""
  parts = json.dumps([spec.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")], ensure_ascii=False)
  if '"ByteLevel"' in parts:
    return BYTE_LEVEL_MARKER
  return SENTENCEPIECE_MARKER if SENTENCEPIECE_MARKER in parts else ""


def _read_config(file: str) -> dict[str, Any]:
  if not os.path.isfile(file):
    return {}
  return safe_json.read_object(file, fix="re-download it")


def _config_token(backend: Backend, entry: Any) -> tuple[str, int] | None:
  """(text, id) of a special token named in tokenizer_config.json, or None if unnamed or unknown."""
  text = entry.get("content") if isinstance(entry, dict) else entry
  if not isinstance(text, str):
    return None
  token_id = backend.token_to_id(text)
  return None if token_id is None else (text, token_id)
