"""Every site of the residual stream from one pass per template, averaged over templates.

For each word (a token-id sequence, as after a space) and each template, the word is spliced
into the template as ``spaces.hidden_vectors`` does (leading special tokens, the template's
prefix, the word, its suffix) and ONE forward pass per batch captures, at the word's last
token, the states of every site on the way from input to output:

    embed            the scaled token embedding entering block 0
    resid_post.{l}   the residual leaving block l, for every l (one stacked capture)
    final            after the final norm

The templates' states are averaged per word (the template list is part of the result's
provenance). With a single template each site equals ``spaces.hidden_vectors`` at that
layer (``resid_post.l``: ``layer=l``; ``final``: ``layer=-1``).

Centring (and optional whitening) statistics per site come from a seeded sample of
non-special vocabulary tokens (``spaces.sample_tokens``) run through the same templates
and averaged the same way, so words and statistics see the same contexts.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.analyses import spaces as spaces_lib
from jaxsem.errors import InputError
from jaxsem.models.model import pad_batch
from jaxsem.progress import Progress

_CAPTURE = ("embed", "resid_post", "final")


def site_names(n_layers: int) -> tuple[str, ...]:
  """``("embed", "resid_post.0", ..., "resid_post.{n_layers - 1}", "final")``: the ``n_layers + 2`` sites."""
  return ("embed", *(f"resid_post.{layer}" for layer in range(n_layers)), "final")


def site_layer(site: str) -> int | None:
  """The ``--layer`` value of a site: ``l`` for ``resid_post.l``, -1 for ``final``, None for ``embed``."""
  if site == "final":
    return -1
  if site.startswith("resid_post."):
    return int(site.split(".", 1)[1])
  return None


@jax.jit
def _read_sites(embed: jax.Array, stack: jax.Array, final: jax.Array, positions: jax.Array) -> jax.Array:
  """States at ``positions`` ``[B]`` of ``embed`` ``[B, T, D]``, ``stack`` ``[L, B, T, D]`` and
  ``final`` ``[B, T, D]`` -> ``[L + 2, B, D]`` float32 (on device; only this leaves it)."""
  index = positions[:, None, None]

  def take(h):
    return jnp.take_along_axis(h, index, axis=1)[:, 0].astype(jnp.float32)

  return jnp.concatenate([take(embed)[None], jax.vmap(take)(stack), take(final)[None]], axis=0)


def capture_sites(model, token_ids: Sequence[Sequence[int]], templates: Sequence[str], batch_size: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
  """States of every site at each word's last token, averaged over ``templates``.

  Args:
    model: a ``jaxsem.Model`` (batches go over its mesh's data axis when it has one).
    token_ids: per word, its non-empty token ids (as after a space).
    templates: texts with one ``{word}`` slot each.
    batch_size: sequences per forward call (sorted by length, right-padded to a fixed batch,
      so each sequence length compiles once).
    progress: ``progress(sequences_done, sequences_total)`` after each forward call
      (``len(token_ids) * len(templates)`` in all).

  Returns:
    ``[n_layers + 2, len(token_ids), D]`` float32, sites in ``site_names`` order.

  Raises:
    InputError: a template without exactly one ``{word}`` slot.
  """
  # Every template is checked before any work (one tokenisation rule: the hidden space's).
  parts = [spaces_lib._template_parts(model.tokenizer, t) for t in templates]  # noqa: SLF001
  n, n_sites = len(token_ids), model.config.n_layers + 2
  total = np.zeros((n_sites, n, model.config.d_model), np.float32)
  done, grand = 0, n * len(parts)
  for prefix, suffix in parts:
    seqs = [prefix + list(ids) + suffix for ids in token_ids]
    last = np.array([len(prefix) + len(ids) - 1 for ids in token_ids], np.int32)
    order = sorted(range(n), key=lambda i: len(seqs[i]))
    for start in range(0, n, batch_size):
      rows = order[start:start + batch_size]
      # Every batch is padded to batch_size, so the statistics sample and the words (the same
      # templates, one compile per sequence length) run the same programs.
      ids, mask = pad_batch([seqs[i] for i in rows], model.pad_id, length_bucket=model.length_bucket,
                            batch_multiple=batch_size)
      positions = np.zeros(ids.shape[0], np.int32)
      positions[:len(rows)] = last[rows]
      out = model.forward(ids, mask, capture=_CAPTURE, logits_at="none")
      states = _read_sites(out.captured["embed"], out.captured["resid_post"], out.captured["final"],
                           jnp.asarray(positions))
      total[:, np.asarray(rows, np.int64)] += np.asarray(states)[:, :len(rows)]
      done += len(rows)
      if progress is not None:
        progress(done, grand)
  return total / np.float32(len(parts))


def site_statistics(model, templates: Sequence[str], *, centre: bool, whiten: bool, sample: int, seed: int,
                    eps: float = spaces_lib.DEFAULT_EPS, batch_size: int = 64,
                    progress: bool = False) -> tuple[list[spaces_lib.Transform | None], int]:
  """Per site, the centring/whitening fitted on a seeded sample of vocabulary tokens in ``templates``.

  Args:
    model: a ``jaxsem.Model``.
    templates: the templates the words run in.
    centre, whiten: what to fit (see ``spaces.fit_transform``).
    sample, seed: size and seed of the token sample (``spaces.sample_tokens``).
    eps: relative eigenvalue floor of the whitening.
    batch_size: sequences per forward call.
    progress: print progress lines of the sample's forward passes.

  Returns:
    (one ``Transform`` per site in ``site_names`` order, or Nones when neither centring nor
    whitening; the number of tokens in the sample, 0 when none was drawn).

  Raises:
    InputError: a sampled token's state has NaN/inf entries (naming the site and the fix).
  """
  n_sites = model.config.n_layers + 2
  if not (centre or whiten):
    return [None] * n_sites, 0
  tokens = spaces_lib.sample_tokens(model, sample, seed)
  bar = Progress.maybe(progress, "layers: statistics sample", len(tokens) * len(templates), unit="sequences")
  bar.update(0)
  states = capture_sites(model, [(int(t),) for t in tokens], templates, batch_size, bar)
  bar.close()
  bad = ~np.isfinite(states).all(axis=2)
  if bad.any():
    site = site_names(model.config.n_layers)[int(np.flatnonzero(bad.any(axis=1))[0])]
    raise InputError(f"site {site}: {int(bad.sum())} states of the statistics sample have NaN or inf "
                     "entries; load the model with --dtype=float32.")
  return [spaces_lib.fit_transform(jnp.asarray(s), centre, whiten, eps) for s in states], len(tokens)
