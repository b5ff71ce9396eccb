"""How a steered model's judgement of a word is read: prompts, pole tokens, ratings.

A ``Readout`` is one object: what it needs prepared (its template, the tokens whose
logits are computed, a read site and directions) and how the steered forward pass's raw
outputs become ratings ``[N, J]``. Factories build the three kinds:

* ``logodds_readout``: pole log-odds over the first tokens of each scale's direction words
  (``words="direction"``) or of its readout words, disjoint from them
  (``words="disjoint"``); ``concat`` reads several in one pass.
* ``rating_readout``: a 1-7 rating asked in the model's chat format, read as the expected
  answer under the softmax over the answers' tokens.
* ``representation_readout``: the word's state at a read site projected on unit directions.

``Readout.kernel_readout`` hands the steered kernel its part (``kernels.steering.KernelReadout``):
the arrays on the devices and the static choices. ``READOUT_FACTORIES`` names the readouts a
steering run can be asked for (``--readout``): a new readout is one factory there.

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
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.errors import InputError
from jaxsem.kernels import steering as steering_k
from jaxsem.kernels.steering import pole_logodds  # noqa: F401 - the readout's rating, re-exported

# Unsteered pole log-odds of 400 random single-token Warriner words track their valence
# at r = 0.70 on both embedded models with this template; its tail after the word is
# three tokens, so the cached prefix carries most of each prompt.
DEFAULT_TEMPLATE = "Describe each thing in one word.\nThing: {word}\nDescription:"
# A second completion template that plays no part in fitting steering vectors: the methods
# are compared on it too. Fixed before any result was seen; not to be tuned.
HELDOUT_TEMPLATE = "Here is a word and a word that describes it.\nWord: {word}\nDescribed as:"
POLE_WORDS = ("direction", "disjoint")
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


def disjoint_scales(tokenizer, scales: Sequence[Any]) -> tuple[list[Any], dict[str, str], dict[str, dict]]:
  """The scales' readout words (``readout_positive`` / ``readout_negative``) that can be read.

  A readout word counts only when its first token is none of the first tokens of the
  scale's own direction words (else the readout would again read along the direction). A
  scale is left out when it has no readout words, or a pole has none left.

  Returns:
    ``(kept, left_out, dropped)``: ``kept`` are stand-in scales (``name``, ``positive``,
    ``negative`` = the usable readout words) in the given order; ``left_out`` maps a scale
    name to the reason; ``dropped`` maps a kept scale's name to its words dropped, with why.
  """
  kept, left_out, dropped = [], {}, {}
  for s in scales:
    pos = tuple(getattr(s, "readout_positive", ()) or ())
    neg = tuple(getattr(s, "readout_negative", ()) or ())
    if not pos and not neg:
      left_out[s.name] = "the scale file gives it no readout words"
      continue
    direction = {_first_token(tokenizer, w) for w in (*s.positive, *s.negative)}
    why = {w: "its first token is a first token of the scale's direction words" for w in (*pos, *neg)
           if _first_token(tokenizer, w) in direction}
    why.update({w: "it has no token" for w in (*pos, *neg) if _first_token(tokenizer, w) is None})
    first = {w: _first_token(tokenizer, w) for w in (*pos, *neg) if w not in why}
    shared = {first[w] for w in pos if w in first} & {first[w] for w in neg if w in first}
    why.update({w: "its first token is shared with the other pole" for w in first if first[w] in shared})
    p = tuple(w for w in pos if w not in why)
    n = tuple(w for w in neg if w not in why)
    if not p or not n:
      side = "positive" if not p else "negative"
      detail = "; ".join(f"{w!r}: {r}" for w, r in why.items()) or "none given"
      left_out[s.name] = f"no usable readout word on its {side} pole ({detail})"
      continue
    kept.append(types.SimpleNamespace(name=s.name, positive=p, negative=n))
    dropped[s.name] = why
  return kept, left_out, dropped


def merge_poles(*parts: PoleTokens) -> PoleTokens:
  """Pole tokens of several readouts side by side: the columns of ``parts[0]``, then of ``parts[1]``...

  Each token's logit is computed once however many columns read it.
  """
  rows = np.array(sorted({int(t) for p in parts for t in p.rows}), np.int32)
  where = {int(t): i for i, t in enumerate(rows)}
  k = max(p.positive.shape[1] for p in parts)

  def remap(p: PoleTokens, index: np.ndarray) -> np.ndarray:
    out = np.full((index.shape[0], k), -1, np.int32)
    ok = index >= 0
    out[:, :index.shape[1]][ok] = [where[int(t)] for t in p.rows[index[ok]]]
    return out

  return PoleTokens(names=tuple(n for p in parts for n in p.names), rows=rows,
                    positive=np.concatenate([remap(p, p.positive) for p in parts]),
                    negative=np.concatenate([remap(p, p.negative) for p in parts]),
                    report={"parts": [p.report for p in parts]})


def unembedding_directions(model, poles: PoleTokens) -> np.ndarray:
  """``[J, D]`` float64: per readout column, the mean unembedding row of its positive pole
  tokens minus the mean of its negative pole tokens (the output embedding, tied or not).

  A logit change along this vector is what steering moves in the log-odds through the
  output embedding alone, with no transformer block in between.
  """
  matrix, scale = spaces_lib._embedding_source(model, "unembedding")  # noqa: SLF001 - one definition
  rows = np.asarray(jnp.take(matrix, jnp.asarray(poles.rows), axis=0).astype(jnp.float32), np.float64) * scale

  def pole_mean(index: np.ndarray) -> np.ndarray:
    ok = (index >= 0).astype(np.float64)
    return np.einsum("jk,jkd->jd", ok, rows[np.maximum(index, 0)]) / ok.sum(1, keepdims=True)

  return pole_mean(poles.positive) - pole_mean(poles.negative)


# ----------------------------------------------------------------------------- the Readout object


def _logodds_ratings(logodds: np.ndarray, representation: np.ndarray | None) -> np.ndarray:
  del representation
  return logodds


def _representation_ratings(logodds: np.ndarray, representation: np.ndarray | None) -> np.ndarray:
  del logodds
  return representation


def _rating_ratings(logits: np.ndarray, representation: np.ndarray | None) -> np.ndarray:
  del representation
  return expected_rating(logits)[:, None]


@dataclasses.dataclass(frozen=True)
class Readout:
  """How a steered model's judgement is read: what to prepare, and how outputs become ratings.

  The steered kernel (``kernels.steering.steered_readout``) reads ``kernel_readout()``: at
  the prompt's last position, the logits of ``poles.rows`` (as pole log-odds ``[N, J]``,
  or raw ``[N, R]`` with ``raw_logits``) and, with a ``read_site``, the word's state
  projected on ``read_dirs`` ``[N, J]``; ``ratings`` turns those into the readout's ratings.

  Attributes:
    kind: ``"logodds"``, ``"rating"`` or ``"representation"``.
    names: ``[J]`` the rating columns (scale names).
    poles: the tokens whose next-token logits are computed and each column's poles.
    template: the template the readout asks its question in, or None (the run's template).
    read_site: capture site of the representation, or None.
    read_dirs: ``[J, D]`` unit directions at ``read_site``, or None.
    raw_logits: the kernel returns the logits of ``poles.rows``, not log-odds.
    to_ratings: ``(kernel output, representation or None) -> [N, J]`` ratings.
    report: what was chosen (pole tokens, dropped words, the question).
  """

  kind: str
  names: tuple[str, ...]
  poles: PoleTokens
  template: str | None = None
  read_site: str | None = None
  read_dirs: np.ndarray | None = None
  raw_logits: bool = False
  to_ratings: Callable[[np.ndarray, np.ndarray | None], np.ndarray] = _logodds_ratings
  report: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def n_columns(self) -> int:
    """Width of the kernel's first output: ``R`` logits with ``raw_logits``, else ``J`` log-odds."""
    return len(self.poles.rows) if self.raw_logits else len(self.poles.names)

  def ratings(self, outputs: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
    """``Grid.evaluate``'s ``(first, representation)`` -> ratings ``[N, J]``."""
    return self.to_ratings(*outputs)

  def kernel_readout(self, mesh: Mesh | None = None) -> steering_k.KernelReadout:
    """The steered kernel's part of this readout, its arrays replicated over ``mesh`` (if any)."""

    def put(x: np.ndarray, dtype) -> jax.Array:
      x = np.asarray(x, dtype)
      return jnp.asarray(x) if mesh is None else jax.device_put(x, NamedSharding(mesh, P()))

    return steering_k.KernelReadout(
        logit_rows=put(self.poles.rows, np.int32), positive=put(self.poles.positive, np.int32),
        negative=put(self.poles.negative, np.int32),
        read_dirs=None if self.read_dirs is None else put(self.read_dirs, np.float32),
        read_site=self.read_site, raw_logits=self.raw_logits)


def logodds_readout(tokenizer, scales: Sequence[Any], words: str = "direction") -> Readout:
  """Pole log-odds of each scale, over the first tokens of its direction words or readout words.

  Args:
    tokenizer: the model's tokenizer.
    scales: objects with ``name``, ``positive``, ``negative`` (and, for ``"disjoint"``,
      ``readout_positive`` / ``readout_negative``).
    words: ``"direction"`` (the pole words that define the directions) or ``"disjoint"``
      (the readout words, disjoint from them; scales without usable ones are left out,
      named in ``report["left_out"]``).

  Raises:
    InputError: for an unknown ``words``, a direction pole with no usable token, or no
      scale with usable readout words.
  """
  if words not in POLE_WORDS:
    raise InputError(f"Readout words {words!r} are not known; use one of {', '.join(POLE_WORDS)}.")
  if words == "direction":
    poles = pole_tokens(tokenizer, scales)
    return Readout(kind="logodds", names=poles.names, poles=poles,
                   report={"words": "direction", "tokens": poles.report})
  kept, left_out, dropped = disjoint_scales(tokenizer, scales)
  if not kept:
    raise InputError("No scale has readout words (readout_positive, readout_negative) disjoint from its"
                     " direction words; add them to the scale file or read the direction words.")
  poles = pole_tokens(tokenizer, kept)
  for name, why in dropped.items():
    poles.report[name]["dropped"].update(why)
  return Readout(kind="logodds", names=poles.names, poles=poles,
                 report={"words": "disjoint", "tokens": poles.report, "left_out": left_out})


def concat(*parts: Readout) -> Readout:
  """Several log-odds readouts read in one pass: their columns side by side, in order."""
  if not parts or any(p.kind != "logodds" or p.template is not None for p in parts):
    raise InputError("Only log-odds readouts on the run's template can be read together.")
  poles = merge_poles(*(p.poles for p in parts))
  return Readout(kind="logodds", names=poles.names, poles=poles, report={"parts": [p.report for p in parts]})


def representation_readout(tokenizer, scales: Sequence[Any], read_site: str,
                           read_dirs: np.ndarray) -> Readout:
  """The word's last-token state at ``read_site`` projected on ``read_dirs [J, D]`` (unit rows).

  The pole log-odds of the direction words are computed in the same pass (the kernel's
  first output), for validating the unsteered ratings against human norms.
  """
  poles = pole_tokens(tokenizer, scales)
  dirs = np.asarray(read_dirs, np.float32)
  if dirs.shape[0] != len(poles.names):
    raise InputError(f"The representation readout has {dirs.shape[0]} directions for {len(poles.names)}"
                     " scales; give one per scale.")
  return Readout(kind="representation", names=poles.names, poles=poles, read_site=read_site, read_dirs=dirs,
                 to_ratings=_representation_ratings, report={"read_site": read_site, "tokens": poles.report})


def rating_readout(tokenizer, scale: Any, n: int = 7) -> Readout:
  """A 1-``n`` rating of ``scale`` asked in the model's chat format, read as the expected answer.

  Raises:
    InputError: when the model has no known chat format or an answer is not one token.
  """
  digits = digit_tokens(tokenizer, n)
  question = RATING_QUESTION.format(positive=scale.positive[0], negative=scale.negative[0], word="{word}")
  poles = PoleTokens(names=(scale.name,), rows=digits, positive=np.zeros((1, 1), np.int32),
                     negative=np.zeros((1, 1), np.int32), report={})
  return Readout(kind="rating", names=(scale.name,), poles=poles, template=chat_template(tokenizer, question),
                 raw_logits=True, to_ratings=_rating_ratings, report={"question": question, "answers": n})


# ----------------------------------------------------------------------------- readouts by name


@dataclasses.dataclass(frozen=True)
class ReadoutRequest:
  """What a steering run offers the readout it is asked for.

  Attributes:
    model: the ``jaxsem.Model``.
    scales: the run's scales (``name``, ``positive``, ``negative``, ...), one column each.
    site: the steering site.
    units: ``[J, D]`` unit directions of the scales at ``site``.
    read_layer: the layer a representation is read at, or None (at ``site``).
  """

  model: Any
  scales: Sequence[Any]
  site: str
  units: np.ndarray
  read_layer: int | str | None = None


def _requested_logodds(request: ReadoutRequest) -> Readout:
  return logodds_readout(request.model.tokenizer, request.scales, "direction")


def _requested_representation(request: ReadoutRequest) -> Readout:
  model = request.model
  if request.read_layer is None:
    read_site, read_dirs = request.site, request.units
  else:
    layer, read_site = spaces_lib.capture_site(model, request.read_layer)
    space = spaces_lib.make_space(model, "hidden", layer=layer)
    dirs = np.asarray(scale_directions.build(model, space, request.scales, policy="single").vectors)
    read_dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
  if read_site.startswith("resid_pre"):
    raise InputError("--read_layer: read the representation at embed, a block output or -1 (final).")
  return representation_readout(model.tokenizer, request.scales, read_site, read_dirs)


# --readout name -> factory; a new readout is one function here (and one test).
READOUT_FACTORIES: dict[str, Callable[[ReadoutRequest], Readout]] = {
    "logodds": _requested_logodds,
    "representation": _requested_representation,
}
READOUTS = tuple(READOUT_FACTORIES)  # the launcher's choices


def requested_readout(name: str, request: ReadoutRequest) -> Readout:
  """The readout called ``name`` in ``READOUT_FACTORIES``, built for ``request``.

  Raises:
    InputError: naming ``--readout`` and the known names when ``name`` is not one.
  """
  factory = READOUT_FACTORIES.get(name)
  if factory is None:
    raise InputError(f"--readout={name!r} is not known; use one of {', '.join(READOUT_FACTORIES)}.")
  return factory(request)


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
