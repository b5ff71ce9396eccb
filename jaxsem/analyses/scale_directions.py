"""Scales -> semantic directions in a space, with every dropped word reported.

A direction points from the negative pole to the positive one (positive minus
negative). Methods:

    pole_mean   mean(positive vectors) - mean(negative vectors)        (default)
    pair_mean   mean of aligned pair differences (poles of equal size)
    semaxis     each pole grown by its k nearest vocabulary neighbours (An et al.,
                2018), then pole_mean; embedding spaces only
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.analyses import lexicon
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.errors import InputError
from jaxsem.kernels import directions as dir_k

METHODS = ("pole_mean", "pair_mean", "semaxis")


@dataclasses.dataclass(frozen=True)
class Directions:
  """Directions of a set of scales in one space.

  Attributes:
    names: scale names, one per row.
    vectors: ``[S, D]`` float32 directions (positive minus negative, not normalised).
    factors: hypothesised factor per scale ("E"/"P"/"A") or None.
    norms: the human-norm column each scale should track (e.g. "warriner:valence") or None.
    method: construction method (see ``METHODS``).
    policy: word -> token policy used for the pole words.
    poles: per scale, the pole words used and dropped (with reasons), and for
      semaxis the neighbours added.
    asked: number of scales asked for (``len(names)`` may be smaller when missing
      scales were dropped).
    dropped: scale name -> reason, for scales that could not be built.
    pole_vectors: scale name -> (``[P, D]`` positive, ``[M, D]`` negative) float32 vectors
      of the pole words averaged into its direction, in the space (for semaxis the
      expanded poles), so the pole words can be resampled; empty when not known.
  """

  names: tuple[str, ...]
  vectors: jax.Array
  factors: tuple[str | None, ...]
  norms: tuple[str | None, ...]
  method: str
  policy: str
  poles: dict[str, dict[str, Any]]
  asked: int
  dropped: dict[str, str]
  pole_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

  @property
  def coverage(self) -> float:
    """Scales built / scales asked."""
    return len(self.names) / self.asked if self.asked else 0.0

  def report(self) -> dict[str, Any]:
    """JSON-friendly summary: method, sign convention, coverage, dropped scales and pole words.

    ``dropped_pole_words`` maps every built scale that lost a pole word to
    ``{word: reason}``; scales dropped whole are in ``dropped_scales``.
    """
    words_asked = sum(p["asked"] for p in self.poles.values())
    words_used = sum(len(p["positive"]) + len(p["negative"]) for p in self.poles.values())
    return {
        "method": self.method,
        "sign": "positive pole minus negative pole",
        "policy": self.policy,
        "scales_asked": self.asked,
        "scales_used": len(self.names),
        "scale_coverage": self.coverage,
        "pole_words_asked": words_asked,
        "pole_words_used": words_used,
        "dropped_scales": dict(list(self.dropped.items())[:20]),
        "n_dropped_scales": len(self.dropped),
        "dropped_pole_words": {name: dict(p["dropped"]) for name, p in self.poles.items()
                               if p.get("dropped")},
    }


def _all_word_vectors(model, scales, policy: str, space, case_variants: bool):
  """Resolves every pole word once; returns (word -> row, [n_used, D] vectors, dropped)."""
  words = list(dict.fromkeys(w for s in scales for w in (*s.positive, *s.negative)))
  wt = lexicon.resolve_words(model.tokenizer, words, policy, case_variants=case_variants)
  rows = {w: i for i, w in enumerate(wt.used_words)}
  vectors = spaces_lib.word_vectors(model, wt, space) if wt.n_used else None
  return rows, vectors, wt


def build(model, space, scales: Sequence[Any], *, policy: str = "single", method: str = "pole_mean",
          semaxis_k: int = 10, missing: str = "error", case_variants: bool = False,
          min_coverage: float = 0.0, what: str = "scales") -> Directions:
  """Builds one direction per scale.

  Args:
    model: a ``jaxsem.Model``.
    space: a ``spaces.Space`` (its centring/whitening is applied to the pole vectors).
    scales: objects with ``name``, ``positive``, ``negative`` and optionally
      ``factor`` and ``norm`` (``jaxsem.io.scales.Scale``).
    policy: word -> token policy for pole words.
    method: one of ``METHODS``.
    semaxis_k: neighbours added to each pole by "semaxis".
    missing: "error" (curated scale sets: a pole with no usable word is an error that
      names the scale and its words) or "drop" (large sets such as WordNet: the scale
      is dropped and reported).
    case_variants: let the single-token policy use capitalised forms.
    min_coverage: with ``missing="drop"``, the least share of scales that must remain.
    what: name of the scale set, for messages.

  Returns:
    Directions.

  Raises:
    InputError: unknown method, a pole without usable words (``missing="error"``),
      coverage below ``min_coverage``, semaxis in a hidden-state space.
  """
  if method not in METHODS:
    raise InputError(f"--method={method!r} is not known; use one of {', '.join(METHODS)}.")
  if missing not in ("error", "drop"):
    raise ValueError(f"missing must be 'error' or 'drop', got {missing!r}")
  vocab = None
  if method == "semaxis":
    if space.name == "hidden":
      raise InputError("--method=semaxis needs a vocabulary matrix; use it with an embedding --space.")
    vocab = spaces_lib.vocab_matrix(model, space.name)
    if space.transform is not None:
      vocab = spaces_lib.apply(space.transform, vocab)
  names, vecs, factors, norms, poles, dropped, pole_vectors = [], [], [], [], {}, {}, {}
  seen = set()
  rows, vectors, wt = _all_word_vectors(model, scales, policy, space, case_variants)
  # Pole means are computed on the host: thousands of scales (WordNet) would otherwise cost
  # thousands of tiny device dispatches and syncs.
  host = np.asarray(vectors, np.float32) if vectors is not None else None
  for scale in scales:
    if scale.name in seen:
      raise InputError(f"{what}: scale {scale.name!r} is listed twice; give each scale a unique name.")
    seen.add(scale.name)
    pos_words = [w for w in scale.positive if w in rows]
    neg_words = [w for w in scale.negative if w in rows]
    info = {"positive": pos_words, "negative": neg_words,
            "dropped": {w: wt.dropped[w] for w in (*scale.positive, *scale.negative) if w in wt.dropped},
            "asked": len(scale.positive) + len(scale.negative)}
    if not pos_words or not neg_words:
      side, pole = ("positive", scale.positive) if not pos_words else ("negative", scale.negative)
      reason = "; ".join(f"{w!r} {wt.dropped.get(w, 'unusable')}" for w in list(pole)[:3])
      if missing == "error":
        raise InputError(f"{what}: scale {scale.name!r} has no usable {side} pole word under "
                         f"--policy={policy} ({reason}); add single-token synonyms or use --policy=mean.")
      dropped[scale.name] = f"no usable {side} pole word ({reason})"
      continue
    pos = host[np.array([rows[w] for w in pos_words])]
    neg = host[np.array([rows[w] for w in neg_words])]
    # Checked here, before the kernels, whose own zero-direction error cannot name the scale.
    if not np.any(pos.mean(axis=0) != neg.mean(axis=0)):
      raise InputError(f"{what}: scale {scale.name!r} has identical poles in this space "
                       f"({info['positive']} vs {info['negative']}); its direction is zero.")
    if method == "pair_mean" and pos.shape[0] != neg.shape[0]:
      raise InputError(f"{what}: scale {scale.name!r} has {pos.shape[0]} usable positive and "
                       f"{neg.shape[0]} negative words; --method=pair_mean needs aligned pairs.")
    if method == "semaxis":
      ids = dict(zip(wt.used_words, wt.used_token_ids))
      seeds = [ids[w][0] for w in (*pos_words, *neg_words)]
      pos_x = dir_k.semaxis_expand(pos, vocab, semaxis_k, exclude=seeds)
      neg_x = dir_k.semaxis_expand(neg, vocab, semaxis_k, exclude=seeds)
      info["positive_neighbours"] = [model.tokenizer.id_to_token(int(i)) for i in np.asarray(pos_x.indices)]
      info["negative_neighbours"] = [model.tokenizer.id_to_token(int(i)) for i in np.asarray(neg_x.indices)]
      d = np.asarray(dir_k.pole_mean_difference(pos_x.vectors, neg_x.vectors))
      pos, neg = np.asarray(pos_x.vectors, np.float32), np.asarray(neg_x.vectors, np.float32)
    else:
      # pole_mean, and pair_mean without pair normalisation, are both mean(pos) - mean(neg).
      d = pos.mean(axis=0) - neg.mean(axis=0)
    names.append(scale.name)
    vecs.append(d)
    factors.append(getattr(scale, "factor", None))
    norms.append(getattr(scale, "norm", None))
    poles[scale.name] = info
    pole_vectors[scale.name] = (pos, neg)
  asked = len(seen)
  if not names:
    raise InputError(f"{what}: none of the {asked} scales has usable words on both poles under "
                     f"--policy={policy}; use --policy=mean.")
  if asked and len(names) / asked < min_coverage:
    raise InputError(f"{what}: only {len(names)} of {asked} scales ({len(names) / asked:.1%}) have usable "
                     f"pole words under --policy={policy}, below --min_coverage={min_coverage}; "
                     "use --policy=mean or lower --min_coverage.")
  return Directions(names=tuple(names), vectors=jnp.asarray(np.stack(vecs), jnp.float32),
                    factors=tuple(factors), norms=tuple(norms), method=method, policy=policy,
                    poles=poles, asked=asked, dropped=dropped, pole_vectors=pole_vectors)
