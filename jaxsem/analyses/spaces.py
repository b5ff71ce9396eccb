"""The spaces word vectors come from, with optional centring and whitening.

Three spaces:

* ``"input_embedding"``: rows of ``params["embed"]`` **times** ``config.embed_scale``,
  i.e. exactly what enters the residual stream (the forward pass's ``"embed"`` site).
  Gemma scales by sqrt(d_model); llama-like models by 1. Directions, projections up to
  a common factor, centring and whitening are unaffected by the scale; absolute norms
  are not, and ``Space.provenance()["embed_scale_applied"]`` records it.
* ``"unembedding"``: rows of the matrix the logits are dotted with, unscaled:
  ``params["unembed"]`` when untied, else ``params["embed"]`` (``provenance()["tied"]``
  is then True and this space equals the input embedding up to ``embed_scale``).
* ``"hidden"``: the residual stream leaving block ``layer`` (site ``resid_post.{layer}``),
  or after the final norm (site ``final``) for ``layer=-1`` / ``"final"``, read at the
  word's last token while the word sits in a short template (``DEFAULT_TEMPLATE``).

The word is spliced into the template as the token ids the lexicon resolved (as after a
space, so the hidden space sees the same tokens as the embedding spaces; the space before
``{word}`` is carried by the word-initial marker): ``[leading special tokens] + prefix +
word + suffix``. The position read follows from those token counts. The default template
keeps the word off position 0, which models without ``<bos>`` use as an attention sink.

Centring subtracts the mean vector over the vocabulary; whitening multiplies by the
inverse square root of the vocabulary covariance, the "causal inner product" estimate
of Park, Choe and Veitch (2024), *The Linear Representation Hypothesis and the Geometry
of Large Language Models* (ICML), where ``<x, y>_C = x^T Cov(gamma)^{-1} y`` for
unembedding vectors ``gamma``. Embedding-space statistics use every true vocabulary
row; hidden-space statistics use hidden states of a seeded random sample of
non-special vocabulary tokens run through the same template.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.analyses.lexicon import WordTokens
from jaxsem.errors import InputError
from jaxsem.models.model import pad_batch
from jaxsem.progress import Progress

SPACES = ("input_embedding", "unembedding", "hidden")
DEFAULT_TEMPLATE = "The word {word}"
DEFAULT_STATS_SAMPLE = 4096
DEFAULT_EPS = 1e-6
_SLOT = "{word}"
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- transforms


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Transform:
  """The affine map ``x -> (x - mean) @ W`` that ``apply`` performs.

  Attributes:
    mean: ``[D]`` float32, the vocabulary mean (zeros unless centring).
    W: ``[D, D]`` float32 symmetric, the regularised ``Cov^(-1/2)`` (identity unless whitening).
  """

  mean: jax.Array
  W: jax.Array


@functools.partial(jax.jit, static_argnames=("n_rows",))
def _moments(matrix: jax.Array, scale: jax.Array, n_rows: int) -> tuple[jax.Array, jax.Array]:
  """Mean ``[D]`` and covariance ``[D, D]`` (over ``n_rows``) of the first ``n_rows`` rows.

  Padding rows past ``n_rows`` are masked, not sliced off, so row-sharded input stays sharded.
  """
  valid = (jnp.arange(matrix.shape[0]) < n_rows)[:, None]
  x = jnp.where(valid, matrix.astype(jnp.float32) * scale, 0.0)
  mean = jnp.sum(x, axis=0) / n_rows
  centred = jnp.where(valid, x - mean, 0.0)
  cov = jnp.einsum("vd,ve->de", centred, centred, precision=_HIGHEST) / n_rows
  return mean, cov


def inverse_sqrt(cov: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
  """``(C + eps * mean_eigenvalue * I)^(-1/2)`` of a symmetric PSD ``[D, D]`` matrix.

  ``numpy.linalg.eigh`` in float64 on the host (only ``D x D``); round-off negative
  eigenvalues are clipped to 0. ``eps`` is relative to the mean eigenvalue, so it does not
  depend on the vectors' scale and keeps rank-deficient covariances (fewer samples than
  dimensions, unused vocabulary rows) invertible. Returns float64 ``[D, D]``.
  """
  c = np.asarray(cov, np.float64)
  c = (c + c.T) / 2
  lam, u = np.linalg.eigh(c)
  lam = np.clip(lam, 0.0, None)
  floor = eps * max(float(lam.mean()), np.finfo(np.float64).tiny)
  return (u / np.sqrt(lam + floor)) @ u.T


def fit_transform(matrix: jax.Array | np.ndarray, centre: bool = True, whiten: bool = False,
                  eps: float = DEFAULT_EPS, *, n_rows: int | None = None,
                  scale: float = 1.0) -> Transform:
  """Fits centring and/or whitening to the rows of ``matrix``.

  Args:
    matrix: ``[V, D]`` vectors (may be sharded by rows over a mesh).
    centre: subtract the row mean.
    whiten: multiply by the inverse square root of the row covariance (see
      ``inverse_sqrt``). The covariance is always taken about the mean, so whitening
      without centring only rescales directions.
    eps: relative eigenvalue floor of the whitening.
    n_rows: only the first ``n_rows`` rows count (the rest are padding); default all.
    scale: multiplier applied to the rows before the statistics (``embed_scale``).

  Returns:
    Transform with float32 ``mean`` and ``W``.
  """
  n = matrix.shape[0] if n_rows is None else int(n_rows)
  d = matrix.shape[1]
  mean, cov = _moments(matrix, jnp.float32(scale), n)
  mean = mean if centre else jnp.zeros((d,), jnp.float32)
  w = inverse_sqrt(np.asarray(cov), eps) if whiten else np.eye(d)
  return Transform(mean=jnp.asarray(mean, jnp.float32), W=jnp.asarray(w, jnp.float32))


@jax.jit
def apply(transform: Transform, vectors: jax.Array) -> jax.Array:
  """``(vectors - mean) @ W`` for ``vectors`` ``[N, D]`` -> ``[N, D]`` float32."""
  x = vectors.astype(jnp.float32) - transform.mean
  return jnp.einsum("nd,de->ne", x, transform.W, precision=_HIGHEST)


# ----------------------------------------------------------------------------- spaces


@dataclasses.dataclass(frozen=True)
class StateTable:
  """Hidden states computed ahead of time, one row per token-id sequence.

  A hidden ``Space`` that carries one reads its word vectors here instead of running the
  model (``analyses.layers_capture`` fills one per site from a single pass over the words).

  Attributes:
    rows: token ids of a word (as the hidden space runs them) -> row of ``vectors``.
    vectors: ``[N, D]`` float32 raw states (before the space's transform).
  """

  rows: dict[tuple[int, ...], int]
  vectors: np.ndarray

  def lookup(self, token_ids: Sequence[Sequence[int]]) -> jax.Array:
    """The rows of ``token_ids`` -> ``[len(token_ids), D]`` float32.

    Raises:
      ValueError: a sequence has no precomputed state (the table was built for other words).
    """
    missing = [tuple(t) for t in token_ids if tuple(t) not in self.rows]
    if missing:
      raise ValueError(f"no precomputed state for token ids {missing[0]} ({len(missing)} sequences missing)")
    index = np.asarray([self.rows[tuple(t)] for t in token_ids], np.int64)
    return jnp.asarray(np.asarray(self.vectors, np.float32)[index].reshape(len(index), -1))


@dataclasses.dataclass(frozen=True)
class Space:
  """Where word vectors come from and how they were normalised.

  Attributes:
    name: ``"input_embedding"``, ``"unembedding"`` or ``"hidden"``.
    layer: hidden only: the block whose output is read, -1 for the final-normed output.
    centred: the vocabulary mean was subtracted.
    whitened: vectors were multiplied by ``Cov^(-1/2)`` of the vocabulary.
    stats_tokens: vocabulary rows (hidden: sampled tokens) behind the statistics; 0 if none.
    site: hidden only: the forward capture site (``"resid_post.{l}"`` or ``"final"``).
    template: hidden only: the template the words were placed in.
    eps: relative eigenvalue floor of the whitening.
    embed_scale_applied: factor the embedding rows were multiplied by.
    tied: the model ties input embedding and unembedding.
    seed: hidden only: seed of the token sample for the statistics.
    transform: the fitted Transform, or None when neither centring nor whitening.
    states: hidden only: precomputed raw states that ``word_vectors`` reads instead of running
      the model (None: run it).
  """

  name: str
  layer: int | None = None
  centred: bool = False
  whitened: bool = False
  stats_tokens: int = 0
  site: str | None = None
  template: str | None = None
  eps: float = DEFAULT_EPS
  embed_scale_applied: float = 1.0
  tied: bool = False
  seed: int | None = None
  transform: Transform | None = dataclasses.field(default=None, repr=False, compare=False)
  states: StateTable | None = dataclasses.field(default=None, repr=False, compare=False)

  def provenance(self) -> dict[str, Any]:
    """JSON-ready description of the space (no arrays)."""
    out = {k: getattr(self, k) for k in ("name", "layer", "site", "template", "centred", "whitened",
                                         "stats_tokens", "embed_scale_applied", "tied")}
    if self.whitened:
      out["eps"] = self.eps
      out["whitening"] = "Cov^(-1/2) (causal inner product, Park et al. 2024)"
    if self.name == "hidden" and self.stats_tokens:
      out["seed"] = self.seed
    return out


def _check_space(name: str) -> None:
  if name not in SPACES:
    raise InputError(f"--space={name!r} is not a word-vector space; use one of {', '.join(SPACES)}.")


def _embedding_source(model, name: str) -> tuple[jax.Array, float]:
  """(possibly padded ``[V', D]`` matrix, scale) of an embedding space."""
  if name == "input_embedding":
    return model.params["embed"], float(model.config.embed_scale)
  if model.config.tie_embeddings:
    return model.params["embed"], 1.0
  return model.params["unembed"], 1.0


@functools.partial(jax.jit, static_argnames=("n_rows",))
def _true_rows(matrix: jax.Array, scale: jax.Array, n_rows: int) -> jax.Array:
  return matrix[:n_rows].astype(jnp.float32) * scale


def vocab_matrix(model, space: str = "input_embedding") -> jax.Array:
  """The ``[V, D]`` float32 vectors of every true vocabulary token in an embedding space.

  Args:
    model: a ``jaxsem.Model``.
    space: ``"input_embedding"`` (rows times ``embed_scale``) or ``"unembedding"``.

  Returns:
    ``[config.vocab_size, D]`` float32 (padding rows for sharding dropped).
  """
  _check_space(space)
  if space == "hidden":
    raise InputError("--space=hidden has no vocabulary matrix; use input_embedding or unembedding.")
  matrix, scale = _embedding_source(model, space)
  return _true_rows(matrix, jnp.float32(scale), model.config.vocab_size)


@jax.jit
def _mean_rows(matrix: jax.Array, index: jax.Array, weight: jax.Array, scale: jax.Array) -> jax.Array:
  """``sum_k weight[n, k] * matrix[index[n, k]] * scale`` -> ``[N, D]`` float32."""
  rows = jnp.take(matrix, index, axis=0).astype(jnp.float32)
  return jnp.einsum("nkd,nk->nd", rows, weight, precision=_HIGHEST) * scale


def _embedding_vectors(model, name: str, token_ids: Sequence[Sequence[int]]) -> jax.Array:
  """Mean of each word's rows in an embedding space -> ``[N, D]`` float32."""
  matrix, scale = _embedding_source(model, name)
  width = max((len(t) for t in token_ids), default=1)
  index = np.zeros((len(token_ids), width), np.int32)
  weight = np.zeros((len(token_ids), width), np.float32)
  for i, ids in enumerate(token_ids):
    index[i, :len(ids)] = ids
    weight[i, :len(ids)] = 1.0 / len(ids)
  return _mean_rows(matrix, jnp.asarray(index), jnp.asarray(weight), jnp.float32(scale))


# ----------------------------------------------------------------------------- hidden


def capture_site(model, layer: int | str | None) -> tuple[int, str]:
  """(layer, capture site) for ``--layer``: ``l`` -> ``resid_post.l``; -1/"final" -> ``final``.

  Raises:
    InputError: naming ``--layer`` and the valid range when it is missing or out of range.
  """
  n = model.config.n_layers
  valid = f"use 0..{n - 1} (the block whose output is read) or -1 / final (after the final norm)"
  if layer is None:
    raise InputError(f"--layer is required for --space=hidden; {valid}.")
  if isinstance(layer, str):
    if layer.strip().lower() == "final":
      return -1, "final"
    try:
      layer = int(layer)
    except ValueError:
      raise InputError(f"--layer={layer!r} is not a layer; {valid}.") from None
  if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
    raise InputError(f"--layer={layer!r} is not a layer; {valid}.")
  if layer == -1:
    return -1, "final"
  if not 0 <= layer < n:
    raise InputError(f"--layer={layer} is out of range for a {n}-layer model; {valid}.")
  return int(layer), f"resid_post.{int(layer)}"


def _template_parts(tokenizer, template: str) -> tuple[list[int], list[int]]:
  """Token ids before and after the ``{word}`` slot, special tokens included in front."""
  if not isinstance(template, str) or template.count(_SLOT) != 1:
    raise InputError(f"--template={template!r} must contain the slot {{word}} exactly once,"
                     " e.g. --template='The word {word}'.")
  before, after = template.split(_SLOT)
  before = before.rstrip()  # the word's own marker stands for the space
  plain = tokenizer.encode("a", add_special_tokens=False)
  full = tokenizer.encode("a", add_special_tokens=True)
  head = []
  for i in range(len(full) - len(plain) + 1):
    if full[i:i + len(plain)] == plain:
      head = list(full[:i])
      break
  prefix = head + (tokenizer.encode(before, add_special_tokens=False) if before else [])
  suffix = tokenizer.encode(after, add_special_tokens=False) if after else []
  return prefix, suffix


@jax.jit
def _read_positions(h: jax.Array, positions: jax.Array) -> jax.Array:
  """``h[b, positions[b]]`` for ``h`` ``[B, T, D]`` -> ``[B, D]`` float32."""
  return jnp.take_along_axis(h, positions[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def hidden_vectors(model, token_ids: Sequence[Sequence[int]], layer: int | str,
                   template: str = DEFAULT_TEMPLATE, batch_size: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> jax.Array:
  """Hidden states at the last token of each token sequence placed in ``template``.

  Args:
    model: a ``jaxsem.Model``.
    token_ids: per word, its non-empty token ids (as after a space).
    layer: block index, or -1 / "final" (see ``capture_site``).
    template: text with one ``{word}`` slot.
    batch_size: sequences per forward call (sorted by length, right-padded).
    progress: ``progress(words_done, words_total)`` after each forward call.

  Returns:
    ``[len(token_ids), D]`` float32.
  """
  _, site = capture_site(model, layer)
  prefix, suffix = _template_parts(model.tokenizer, template)
  seqs = [prefix + list(ids) + suffix for ids in token_ids]
  last = np.array([len(prefix) + len(ids) - 1 for ids in token_ids], np.int32)
  order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
  chunks = []
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    ids, mask = pad_batch([seqs[i] for i in rows], model.pad_id, length_bucket=model.length_bucket,
                          batch_multiple=min(batch_size, len(order)))
    positions = np.zeros(ids.shape[0], np.int32)
    positions[:len(rows)] = last[rows]
    out = model.forward(ids, mask, capture=(site,), logits_at="none")
    chunks.append(np.asarray(_read_positions(out.captured[site], jnp.asarray(positions)))[:len(rows)])
    if progress is not None:
      progress(start + len(rows), len(order))
  d = model.config.d_model
  result = np.zeros((len(seqs), d), np.float32)
  if chunks:
    result[np.asarray(order, np.int64)] = np.concatenate(chunks)
  return jnp.asarray(result)


def sample_tokens(model, n: int = DEFAULT_STATS_SAMPLE, seed: int = 0) -> np.ndarray:
  """``min(n, eligible)`` distinct non-special token ids below ``vocab_size``, seeded, sorted."""
  tok = model.tokenizer
  special = {int(i) for i, t in tok.backend.get_added_tokens_decoder().items() if t.special}
  special |= {i for i in (tok.bos_id, tok.pad_id, *tok.eos_ids) if i is not None}
  eligible = np.array([i for i in range(model.config.vocab_size) if i not in special], np.int64)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(eligible, size=min(n, len(eligible)), replace=False))


# ----------------------------------------------------------------------------- public


def make_space(model, name: str = "input_embedding", *, layer: int | str | None = None,
               centre: bool = False, whiten: bool = False, template: str = DEFAULT_TEMPLATE,
               stats_sample: int = DEFAULT_STATS_SAMPLE, seed: int = 0, eps: float = DEFAULT_EPS,
               batch_size: int = 64, progress: bool = False) -> Space:
  """A Space, with its centring/whitening statistics fitted when asked for.

  Args:
    model: a ``jaxsem.Model``.
    name: ``"input_embedding"``, ``"unembedding"`` or ``"hidden"``.
    layer: hidden only: block index or -1 / "final".
    centre: subtract the vocabulary mean.
    whiten: multiply by the inverse square root of the vocabulary covariance.
    template: hidden only: text with one ``{word}`` slot.
    stats_sample, seed: hidden only: size and seed of the token sample for the statistics.
    eps: relative eigenvalue floor of the whitening (see ``inverse_sqrt``).
    batch_size: hidden only: sequences per forward call.
    progress: hidden only: print progress lines of the statistics sample's forward passes.

  Returns:
    Space, with ``transform`` set when centring or whitening.

  Raises:
    InputError: for an unknown space, a bad ``--layer`` or template.
  """
  _check_space(name)
  c = model.config
  stats = centre or whiten
  if name != "hidden":
    if layer is not None:
      raise InputError(f"--layer={layer} only applies to --space=hidden, not --space={name}.")
    matrix, scale = _embedding_source(model, name)
    transform = None
    if stats:
      transform = fit_transform(matrix, centre, whiten, eps, n_rows=c.vocab_size, scale=scale)
    return Space(name=name, centred=centre, whitened=whiten, stats_tokens=c.vocab_size if stats else 0,
                 eps=eps, embed_scale_applied=scale, tied=bool(c.tie_embeddings), transform=transform)
  layer_idx, site = capture_site(model, layer)
  _template_parts(model.tokenizer, template)  # validate before any work
  transform, n_stats = None, 0
  if stats:
    tokens = sample_tokens(model, stats_sample, seed)
    bar = Progress.maybe(progress, f"hidden states {site} (statistics sample)", len(tokens), unit="words")
    bar.update(0)
    vectors = hidden_vectors(model, [(int(t),) for t in tokens], layer_idx, template, batch_size, bar)
    bar.close()
    _check_finite(np.asarray(vectors), [f"<token {int(t)}>" for t in tokens], "hidden (statistics sample)")
    transform = fit_transform(vectors, centre, whiten, eps)
    n_stats = len(tokens)
  return Space(name="hidden", layer=layer_idx, centred=centre, whitened=whiten, stats_tokens=n_stats,
               site=site, template=template, eps=eps, tied=bool(c.tie_embeddings),
               seed=seed if stats else None, transform=transform)


def _check_finite(vectors: np.ndarray, words: Sequence[str], space: str) -> None:
  bad = ~np.isfinite(vectors).all(axis=1)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise InputError(f"{space} space: the vector of {words[i]!r} has NaN or inf entries"
                     f" ({int(bad.sum())} of {len(words)} vectors affected); load the model with"
                     " --dtype=float32 or pick another --space.")


def word_vectors(model, word_tokens: WordTokens, space: str | Space = "input_embedding",
                 layer: int | str | None = None, template: str | None = None,
                 batch_size: int = 64, progress: bool = False) -> jax.Array:
  """Vectors of the used words of ``word_tokens`` in ``space``.

  Embedding spaces average each word's rows per the lexicon policy (``single``: the
  row; ``mean``: the mean of its sub-token rows; ``first``: the first sub-token's row).
  The hidden space reads the residual stream at the word's last token (for every
  policy; the word runs with all of its sub-tokens).

  Args:
    model: a ``jaxsem.Model``.
    word_tokens: from ``resolve_words``.
    space: a space name (raw vectors) or a ``Space`` from ``make_space`` (its layer,
      template and fitted transform are used, and its ``states`` when it carries them).
    layer: with a space name only: block index or -1 / "final" for ``"hidden"``.
    template: with a space name only: the hidden template (default ``DEFAULT_TEMPLATE``).
    batch_size: hidden only: sequences per forward call.
    progress: hidden only: print progress lines of the forward passes.

  Returns:
    ``[word_tokens.n_used, D]`` float32, rows in the order of ``word_tokens.used_words``.

  Raises:
    InputError: for an unknown space, a bad ``--layer`` or template, or a vector with
      NaN/inf entries (naming the space and the first such word).
  """
  if isinstance(space, Space):
    if layer is not None or template is not None:
      raise ValueError("layer and template come from the Space; pass them to make_space instead")
    name, layer, template, transform = space.name, space.layer, space.template, space.transform
    states = space.states
  else:
    _check_space(space)
    name, transform, states = space, None, None
    template = DEFAULT_TEMPLATE if template is None else template
  words = word_tokens.used_words
  if name == "hidden" and states is not None:
    vectors = states.lookup(word_tokens.used_all_ids or word_tokens.used_token_ids)
  elif name == "hidden":
    ids = word_tokens.used_all_ids or word_tokens.used_token_ids
    bar = Progress.maybe(progress, "hidden states", len(ids), unit="words")
    bar.update(0)
    vectors = hidden_vectors(model, ids, layer, template, batch_size, bar)
    bar.close()
  else:
    if layer is not None:
      raise InputError(f"--layer={layer} only applies to --space=hidden, not --space={name}.")
    vectors = _embedding_vectors(model, name, word_tokens.used_token_ids)
  if transform is not None:
    vectors = apply(transform, vectors)
  _check_finite(np.asarray(vectors), words, name)
  return vectors
