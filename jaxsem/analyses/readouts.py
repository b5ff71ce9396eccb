"""How a steered model's judgement of a word is read: prompts, pole tokens, ratings.

Pole log-odds (the default readout): the word sits in a completion template whose next
token is a describing word, e.g. ``"... {word} is"``; the rating of the word on scale
``j`` is

    log P(positive pole words of j) - log P(negative pole words of j)

at the next token, each pole's probability the log-sum-exp over its words' first tokens
(as after a space). The softmax normaliser cancels, so only the pole tokens' logits are
computed (``forward(..., logit_rows=...)``). A first token shared by both poles of a
scale says nothing about it and is dropped from both (reported).

Prompts are split for the prefix cache: ``prefix`` (special tokens and the template's
text before the word, shared by every prompt), then per word its tokens and the
template's text after the word (``suffix``). The word's own tokens carry the space
before it (the word-initial marker), as in the embedding spaces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxsem.analyses import spaces as spaces_lib
from jaxsem.errors import InputError
from jaxsem.kernels.steering import pole_logodds  # noqa: F401 - the readout's rating, re-exported

# Unsteered pole log-odds of 400 random single-token Warriner words track their valence
# at r = 0.70 on both embedded models with this template; its tail after the word is
# three tokens, so the cached prefix carries most of each prompt.
DEFAULT_TEMPLATE = "Describe each thing in one word.\nThing: {word}\nDescription:"
READOUTS = ("logodds", "representation")
# The Warriner column each hypothesised factor is validated against (osgood28 has no
# per-scale norm tags; the norms set tags its own).
FACTOR_NORMS = {"E": "warriner:valence", "P": "warriner:dominance", "A": "warriner:arousal"}


@dataclasses.dataclass(frozen=True)
class Prompts:
  """Token ids of one template filled with many words.

  Attributes:
    template: the text with one ``{word}`` slot.
    prefix: ``[P]`` ids shared by every prompt (specials and the text before the slot).
    suffixes: per word, its tokens followed by the template's text after the slot.
    word_positions: per word, the positions of its tokens within its suffix.
  """

  template: str
  prefix: tuple[int, ...]
  suffixes: tuple[tuple[int, ...], ...]
  word_positions: tuple[tuple[int, ...], ...]


def build_prompts(tokenizer, template: str, word_token_ids: Sequence[Sequence[int]]) -> Prompts:
  """Fills ``template`` with each word (given as its token ids, as after a space).

  Raises:
    InputError: when the template has no ``{word}`` slot, or nothing before it to share.
  """
  prefix, after = spaces_lib._template_parts(tokenizer, template)  # noqa: SLF001 - one tokenisation rule
  if not prefix:
    raise InputError(f"--template={template!r} has nothing before {{word}} to share between prompts;"
                     " start it with some text, e.g. 'The word {word} is'.")
  suffixes, positions = [], []
  for ids in word_token_ids:
    ids = tuple(int(i) for i in ids)
    suffixes.append(ids + tuple(after))
    positions.append(tuple(range(len(ids))))
  return Prompts(template=template, prefix=tuple(prefix), suffixes=tuple(suffixes),
                 word_positions=tuple(positions))


@dataclasses.dataclass(frozen=True)
class PoleTokens:
  """First tokens of each scale's pole words, for the log-odds readout.

  Attributes:
    names: readout scale names.
    rows: ``[R]`` int32 distinct token ids whose logits are computed.
    positive: ``[J, K]`` int32 indices into ``rows`` (-1 = unused slot).
    negative: ``[J, K]`` same for the negative poles.
    report: per scale, the tokens used and the ones dropped (with reasons).
  """

  names: tuple[str, ...]
  rows: np.ndarray
  positive: np.ndarray
  negative: np.ndarray
  report: dict[str, Any]


def _first_token(tokenizer, word: str) -> int | None:
  ids = tokenizer.encode(" " + word.strip(), add_special_tokens=False)
  marker = getattr(tokenizer, "word_initial_marker", None)
  if ids and marker and tokenizer.id_to_token(ids[0]) == marker and len(ids) > 1:
    return int(ids[1])  # a lone marker token says nothing about the word
  return int(ids[0]) if ids else None


def pole_tokens(tokenizer, scales: Sequence[Any]) -> PoleTokens:
  """Pole first tokens of each scale (objects with ``name``, ``positive``, ``negative``).

  Raises:
    InputError: naming the scale when one of its poles has no token left.
  """
  per_scale, report = [], {}
  for s in scales:
    pos = {w: _first_token(tokenizer, w) for w in s.positive}
    neg = {w: _first_token(tokenizer, w) for w in s.negative}
    shared = set(pos.values()) & set(neg.values())
    dropped = {w: "its first token is shared with the other pole" for w, t in {**pos, **neg}.items()
               if t in shared}
    p = sorted({t for t in pos.values() if t is not None and t not in shared})
    n = sorted({t for t in neg.values() if t is not None and t not in shared})
    if not p or not n:
      side = "positive" if not p else "negative"
      raise InputError(f"Readout scale {s.name!r}: no usable first token for its {side} pole "
                       f"({list(s.positive if not p else s.negative)}); its pole words share first tokens "
                       "with the other pole. Give the pole other words.")
    per_scale.append((p, n))
    report[s.name] = {"positive": [tokenizer.id_to_token(t) for t in p],
                      "negative": [tokenizer.id_to_token(t) for t in n], "dropped": dropped}
  rows = np.array(sorted({t for p, n in per_scale for t in (*p, *n)}), np.int32)
  where = {int(t): i for i, t in enumerate(rows)}
  k = max(max(len(p), len(n)) for p, n in per_scale)
  positive = np.full((len(per_scale), k), -1, np.int32)
  negative = np.full((len(per_scale), k), -1, np.int32)
  for j, (p, n) in enumerate(per_scale):
    positive[j, :len(p)] = [where[t] for t in p]
    negative[j, :len(n)] = [where[t] for t in n]
  return PoleTokens(names=tuple(s.name for s in scales), rows=rows, positive=positive, negative=negative,
                    report=report)


def validation_targets(scales: Sequence[Any]) -> dict[str, str]:
  """Scale name -> the human-norm column its unsteered ratings should track."""
  out = {}
  for s in scales:
    target = getattr(s, "norm", None) or FACTOR_NORMS.get(getattr(s, "factor", None))
    if target:
      out[s.name] = target
  return out


# ----------------------------------------------------------------------------- rating prompts

RATING_QUESTION = ("On a scale from 1 (very {negative}) to 7 (very {positive}), how {positive} is"
                   " {word}? Answer with a single number.")
_CHAT_FORMATS = {  # marker token in the vocabulary -> (user turn opening, closing + assistant opening)
    "<|im_start|>": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "<start_of_turn>": ("<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"),
}


def chat_template(tokenizer, question: str) -> str:
  """``question`` (with its ``{word}`` slot) wrapped in the model's chat turn format.

  The format is recognised from the vocabulary's turn markers (ChatML, Gemma); the
  model file's own template is never executed.

  Raises:
    InputError: when the vocabulary has no known chat turn markers.
  """
  vocab = tokenizer.backend.get_vocab()
  for marker, (head, tail) in _CHAT_FORMATS.items():
    if marker in vocab:
      return head + question + tail
  raise InputError("--readout=rating needs a chat model (ChatML or Gemma turn markers); this model has"
                   " neither. Use --readout=logodds.")


def digit_tokens(tokenizer, n: int = 7) -> np.ndarray:
  """``[n]`` token ids of the answers "1".."n" (each must be one token)."""
  out = []
  for k in range(1, n + 1):
    ids = tokenizer.encode(str(k), add_special_tokens=False)
    if len(ids) != 1:
      raise InputError(f"The answer {k!r} is not a single token for this tokenizer; --readout=rating"
                       " cannot read a 1-7 rating from it.")
    out.append(int(ids[0]))
  return np.asarray(out, np.int32)


def expected_rating(logits: np.ndarray) -> np.ndarray:
  """``[..., n]`` logits of the answers 1..n -> the expected answer ``[...]`` under their softmax."""
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max(axis=-1, keepdims=True))
  p /= p.sum(axis=-1, keepdims=True)
  return p @ np.arange(1, z.shape[-1] + 1)
