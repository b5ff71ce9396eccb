"""Words -> token ids under an explicit policy, with every dropped word reported.

A word is always looked up *as it appears after a space*: the tokenizer encodes
``" " + word`` without special tokens, so SentencePiece vocabularies give ``"▁word"``
and byte-level BPE vocabularies ``"Ġword"`` (the word-initial marker). Policies:

* ``"single"`` (default): the word must be exactly one token carrying the
  word-initial marker. With ``case_variants=True`` a word whose lowercase form is not
  one token may use its Capitalised or UPPER form instead (``WordTokens.variant`` says
  which). Multiword strings ("ice cream") are dropped.
* ``"mean"``: all sub-tokens of the word; spaces average their vectors.
* ``"first"``: the first sub-token only.

Underscores are read as spaces (WordNet writes multiword lemmas as ``ice_cream``), and
surrounding whitespace is ignored. A word that encodes to nothing or to the unknown
token is dropped under every policy. Nothing is dropped silently: ``WordTokens.dropped``
maps each dropped word to the reason, and ``report()`` summarises coverage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxsem.errors import InputError

POLICIES = ("single", "mean", "first")
_REPORT_EXAMPLES = 5


@dataclasses.dataclass(frozen=True)
class WordTokens:
  """Token ids of a list of words under one policy.

  Attributes:
    words: the words asked for, in order, as given.
    used: ``[n_words]`` bool, True where the word has token ids.
    token_ids: per word, the ids to aggregate (``()`` where dropped).
    variant: per word, the surface form that was tokenized (after a space), e.g.
      ``"Kind"`` when a case variant was used; None where dropped.
    dropped: dropped word -> why, e.g. ``"splits into 2 tokens: ▁kind, ness"``.
    policy: ``"single"``, ``"mean"`` or ``"first"``.
    case_variants: whether Capitalised/UPPER forms were allowed.
    tokens: per word, the vocabulary spellings of ``token_ids`` (for reports).
    all_ids: per word, every sub-token id of ``variant`` after a space (equal to
      ``token_ids`` except under ``"first"``); the hidden space runs these.
  """

  words: tuple[str, ...]
  used: np.ndarray
  token_ids: tuple[tuple[int, ...], ...]
  variant: tuple[str | None, ...]
  dropped: dict[str, str]
  policy: str
  case_variants: bool = False
  tokens: tuple[tuple[str, ...], ...] = ()
  all_ids: tuple[tuple[int, ...], ...] = ()

  @property
  def n_asked(self) -> int:
    return len(self.words)

  @property
  def n_used(self) -> int:
    return int(np.sum(self.used))

  @property
  def coverage(self) -> float:
    """Fraction of the words asked for that have token ids (0.0 for no words)."""
    return self.n_used / self.n_asked if self.n_asked else 0.0

  @property
  def used_words(self) -> list[str]:
    """The words that have token ids, in order."""
    return [w for w, u in zip(self.words, self.used) if u]

  @property
  def used_token_ids(self) -> list[tuple[int, ...]]:
    """Token ids of the used words, in order (one entry per row of a word-vector matrix)."""
    return [t for t, u in zip(self.token_ids, self.used) if u]

  @property
  def used_all_ids(self) -> list[tuple[int, ...]]:
    """All sub-token ids of the used words, in order."""
    return [t for t, u in zip(self.all_ids, self.used) if u]

  @property
  def used_variants(self) -> list[str]:
    """Surface forms of the used words, in order."""
    return [v for v, u in zip(self.variant, self.used) if u]

  def report(self) -> dict[str, Any]:
    """Summary for logs and result files.

    Returns:
      dict with ``policy``, ``case_variants``, ``asked``, ``used``, ``coverage``,
      ``n_dropped``, ``dropped_examples`` (up to five ``{word: reason}``) and
      ``case_variants_used`` (``{word: variant}`` where the surface form differs).
    """
    examples = dict(list(self.dropped.items())[:_REPORT_EXAMPLES])
    changed = {w: v for w, v, u in zip(self.words, self.variant, self.used)
               if u and v != _normalise(w)}
    return {"policy": self.policy, "case_variants": self.case_variants, "asked": self.n_asked,
            "used": self.n_used, "coverage": self.coverage, "n_dropped": len(self.dropped),
            "dropped_examples": examples, "case_variants_used": changed}


def _normalise(word: str) -> str:
  """The surface form looked up: underscores as spaces, outer whitespace stripped."""
  return " ".join(word.replace("_", " ").split())


def _unk_id(tokenizer) -> int | None:
  """Id of the tokenizer's unknown token, or None when it has none."""
  unk = getattr(tokenizer.backend.model, "unk_token", None)
  return None if unk is None else tokenizer.token_to_id(unk)


def _encode_after_space(tokenizer, form: str) -> list[int]:
  return list(tokenizer.encode(" " + form, add_special_tokens=False))


def _spell(tokenizer, ids: Sequence[int]) -> tuple[str, ...]:
  return tuple(str(tokenizer.id_to_token(i)) for i in ids)


def _single_reason(tokenizer, form: str, ids: list[int]) -> str | None:
  """None when ``ids`` is one word-initial token, else why not."""
  marker = tokenizer.word_initial_marker
  if len(ids) != 1:
    reason = f"splits into {len(ids)} tokens: {', '.join(_spell(tokenizer, ids))}"
    if marker and tokenizer.token_to_id(form) is not None:
      reason += f" ({form!r} is a token only without the word-initial marker {marker!r})"
    return reason
  if marker and not str(tokenizer.id_to_token(ids[0])).startswith(marker):
    return f"its one token {tokenizer.id_to_token(ids[0])!r} lacks the word-initial marker {marker!r}"
  return None


def _case_forms(form: str) -> list[str]:
  """The form, then its Capitalised and UPPER variants (distinct, in that order)."""
  forms = [form, form[:1].upper() + form[1:], form.upper()]
  return list(dict.fromkeys(forms))


def _resolve_one(tokenizer, word: str, policy: str, case_variants: bool,
                 unk: int | None) -> tuple[tuple[int, ...], tuple[int, ...], str | None, str | None]:
  """(token ids, all sub-token ids, surface form, drop reason) for one word."""
  form = _normalise(word)
  if not form:
    return (), (), None, "is empty"
  if policy == "single" and " " in form:
    return (), (), None, (f"is a multiword expression ({len(form.split())} words); "
                      "the single-token policy needs one word")
  ids = _encode_after_space(tokenizer, form)
  if not ids:
    return (), (), None, "encodes to no tokens"
  if unk is not None and unk in ids:
    return (), (), None, f"contains the unknown token: {', '.join(_spell(tokenizer, ids))}"
  if policy == "mean":
    return tuple(ids), tuple(ids), form, None
  if policy == "first":
    return (ids[0],), tuple(ids), form, None
  reason = _single_reason(tokenizer, form, ids)
  if reason is None:
    return (ids[0],), (ids[0],), form, None
  if case_variants:
    for other in _case_forms(form)[1:]:
      other_ids = _encode_after_space(tokenizer, other)
      if _single_reason(tokenizer, other, other_ids) is None and other_ids[0] != unk:
        return (other_ids[0],), (other_ids[0],), other, None
    reason += "; no Capitalised or UPPER variant is one token either"
  return (), (), None, reason


def resolve_words(tokenizer, words: Sequence[str], policy: str = "single",
                  case_variants: bool = False) -> WordTokens:
  """Token ids of ``words`` under ``policy``, reporting every word it cannot use.

  Args:
    tokenizer: a ``jaxsem.io.tokenizer.Tokenizer``.
    words: words or short phrases (underscores read as spaces).
    policy: ``"single"``, ``"mean"`` or ``"first"`` (see the module docstring).
    case_variants: under ``"single"``, also accept the Capitalised or UPPER form when
      the word as given is not one word-initial token. Ignored by other policies.

  Returns:
    WordTokens, one entry per word in ``words``.

  Raises:
    InputError: naming ``--policy`` when ``policy`` is unknown.
  """
  if policy not in POLICIES:
    raise InputError(f"--policy={policy!r} is not a word-to-token policy; use one of {', '.join(POLICIES)}.")
  if isinstance(words, str):
    words = [words]
  unk = _unk_id(tokenizer)
  case_variants = bool(case_variants and policy == "single")
  token_ids, all_ids, variants, tokens, dropped = [], [], [], [], {}
  for word in words:
    ids, every, form, reason = _resolve_one(tokenizer, word, policy, case_variants, unk)
    token_ids.append(ids)
    all_ids.append(every)
    variants.append(form)
    tokens.append(_spell(tokenizer, ids))
    if reason is not None:
      dropped[word] = reason
  used = np.array([len(t) > 0 for t in token_ids], bool)
  return WordTokens(words=tuple(words), used=used, token_ids=tuple(token_ids), variant=tuple(variants),
                    dropped=dropped, policy=policy, case_variants=case_variants,
                    tokens=tuple(tokens), all_ids=tuple(all_ids))


def require_coverage(word_tokens: WordTokens, minimum: float, what: str) -> None:
  """Raises unless at least ``minimum`` of the words in ``what`` are usable.

  Args:
    word_tokens: the result of ``resolve_words``.
    minimum: required coverage in [0, 1] (``--min_coverage``).
    what: the data set the words came from, named in the error (e.g. "Osgood scales").

  Raises:
    InputError: naming the data set, the coverage, the minimum, the policy and an
      example of a dropped word, suggesting ``--policy=mean`` or a lower ``--min_coverage``.
  """
  if word_tokens.n_asked and word_tokens.coverage >= minimum:
    return
  wt = word_tokens
  example = ""
  if wt.dropped:
    word, reason = next(iter(wt.dropped.items()))
    example = f" (e.g. {word!r} {reason})"
  alternative = "use --policy=mean or " if wt.policy == "single" else ""
  raise InputError(
      f"{what}: only {wt.n_used} of {wt.n_asked} words ({wt.coverage:.1%}) can be used under "
      f"--policy={wt.policy}, below --min_coverage={minimum:g}{example}; "
      f"{alternative}lower --min_coverage.")
