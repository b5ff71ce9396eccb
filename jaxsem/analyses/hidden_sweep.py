"""Hidden-state vocabulary sweep: every token's state at chosen sites, on every direction of a scale set.

Every vocabulary token (ids ``0..vocab_size-1``, special tokens included, as the static sweep
projects every row) runs through the model in one fixed short ``context`` with one ``{token}``
slot (default ``"{token}"``: the token right after the tokenizer's leading special tokens, i.e.
after ``<bos>`` where the model has one). The state at the token's position is read at every
asked site (``embed``, ``resid_post.{l}``, ``final``, as ``layers_capture`` names them) in ONE
forward pass per block of tokens. The context's tokens before the slot are run once and kept as
a prefix cache (``models.kv_cache``), so a block runs only the token and what follows it.

Two passes over the vocabulary, both on device, both resumable:

1. statistics: per site the mean and covariance of the states (blocks merged in float64 on the
   host, Chan's pairwise update), for centring and whitening: over a seeded uniform sample of
   the swept tokens (``hidden_stats_sample``, recorded), or exactly over all of them when it is 0.
   Skipped when neither is asked for.
2. projection: each block's states are centred (whitened) with the site's statistics and
   projected on the scale set's directions built at that site (from the pole words' states in
   the same context, ``scale_directions``); the ``[site, token, direction]`` scores go to zarr
   (``projections.zarr``, dtype ``store_dtype``, one chunk per site and token block) and the
   moments of the rows as the metric sees them are merged for the spectra.

Only the finished ``[site, block, direction]`` scores and the ``[site, D, D]`` block moments
leave the device. Spectra per site (components for 50/80/90% for the antonym directions and
the random baselines) follow exactly from those moments (``kernels.spectrum``), as the static
sweep's do.

Resume: each pass keeps its merged moments and the blocks they cover in a checkpoint file
(``out_dir/.hidden_sweep/``), saved atomically at most every ``checkpoint_seconds`` (and at the
end of the pass); the array's ``.state.json`` lists the same blocks after that. A block counts
as done only once its chunks are written and its moments saved, so after ``kill -9`` the same
command recomputes only the blocks after the last checkpoint and writes the same bytes. A new
(empty) array ignores a moments checkpoint left beside it.

A pole word's state is read at its last token, so at ``embed`` two words that end in the same
token have one state; a scale whose poles are identical at any asked site is left out at every
site (listed in ``directions.identical_poles_dropped``), so every site has the same columns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorstore as ts
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsem import distributed
from jaxsem import sharding
from jaxsem.analyses import layers_capture
from jaxsem.analyses import lexicon
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.errors import InputError
from jaxsem.io import scales as scales_io
from jaxsem.io.cache import atomic_write, atomic_write_text
from jaxsem.io.out_dir import write_error
from jaxsem.kernels import directions as dir_k
from jaxsem.kernels import spectrum as spectrum_k
from jaxsem.kernels import zarr_out
from jaxsem.models.forward import forward
from jaxsem.models.kv_cache import prefix_cache
from jaxsem.progress import Progress

DEFAULT_CONTEXT = "{token}"
SLOT = "{token}"
STORE_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}
DEFAULT_STORE_DTYPE = "float16"  # what "auto" means for the hidden sweep (the static sweep: float32)
METHODS = ("pole_mean", "pair_mean")  # semaxis searches a vocabulary matrix, which hidden sites lack
ZARR_NAME = "projections.zarr"
CHECKPOINT_DIR = ".hidden_sweep"
_HI = jax.lax.Precision.HIGHEST
_LAYERS_HINT = ("use all, or a comma-separated list of embed, final (or -1) and block indices 0..{last}, "
                "e.g. --layers=0,6,12")


# ----------------------------------------------------------------------------- options


def parse_layers(spec, n_layers: int) -> tuple[str, ...]:
  """Sites of ``--layers`` in depth order: ``all`` (or empty) is ``embed`` and every ``resid_post.{l}``.

  Args:
    spec: ``"all"``, a comma-separated string or a sequence of ``embed``, ``final``/``-1`` and ints.
    n_layers: blocks of the model.

  Returns:
    Site names (``layers_capture.site_names`` order), without repeats.

  Raises:
    InputError: an unknown name or a block index out of range.
  """
  items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
  items = [s for s in items if s]
  hint = _LAYERS_HINT.format(last=n_layers - 1)
  if not items or items == ["all"]:
    return layers_capture.site_names(n_layers)[:-1]
  chosen = set()
  for item in items:
    low = item.lower()
    if low in ("embed", "final"):
      chosen.add(low)
    elif low == "-1":
      chosen.add("final")
    else:
      try:
        layer = int(low.removeprefix("resid_post."))
      except ValueError:
        raise InputError(f"--layers: {item!r} is not a layer; {hint}.") from None
      if not 0 <= layer < n_layers:
        raise InputError(f"--layers: {layer} is out of range for a {n_layers}-layer model; {hint}.")
      chosen.add(f"resid_post.{layer}")
  return tuple(s for s in layers_capture.site_names(n_layers) if s in chosen)


def store_dtype(name: str) -> str:
  """The zarr dtype of ``--store_dtype`` (``auto``: ``DEFAULT_STORE_DTYPE``)."""
  name = DEFAULT_STORE_DTYPE if name in ("", "auto") else name
  if name not in STORE_DTYPES:
    raise InputError(f"--store_dtype={name!r} is not known; use auto, {', '.join(STORE_DTYPES)}.")
  return name


def context_parts(tokenizer, context: str) -> tuple[list[int], list[int]]:
  """Token ids before and after the ``{token}`` slot of ``context`` (leading special tokens included).

  Raises:
    InputError: a context without exactly one ``{token}`` slot.
  """
  if not isinstance(context, str) or context.count(SLOT) != 1 or "{word}" in context:
    raise InputError(f"--context={context!r} must contain the slot {{token}} exactly once, "
                     "e.g. --context='{token}' or --context='The word {token}'.")
  return spaces_lib._template_parts(tokenizer, context.replace(SLOT, "{word}"))  # noqa: SLF001


def array_bytes(n_sites: int, n_tokens: int, n_directions: int, dtype: str) -> int:
  """Bytes of the ``[n_sites, n_tokens, n_directions]`` array (uncompressed)."""
  return int(n_sites) * int(n_tokens) * int(n_directions) * np.dtype(jnp.dtype(dtype)).itemsize


def check_disk(out_dir, need: int) -> None:
  """Refuses, in one line, an out_dir whose disk has less than ``need`` bytes free."""
  probe = Path(out_dir)
  while not probe.exists() and probe != probe.parent:
    probe = probe.parent
  free = shutil.disk_usage(probe).free
  if free < need:
    raise InputError(f"the hidden sweep's array needs {need / 1e9:.2f} GB but {out_dir} has "
                     f"{free / 1e9:.2f} GB "
                     "free; ask for fewer sites (--layers), a smaller --store_dtype, or no array "
                     "(--write_zarr=false).")


# ----------------------------------------------------------------------------- device programs


def _capture(sites: tuple[str, ...]) -> tuple[str, ...]:
  want = {"embed" if s == "embed" else "final" if s == "final" else "resid_post" for s in sites}
  return tuple(s for s in ("embed", "resid_post", "final") if s in want)


def site_states(params: dict, config, ids: jax.Array, mask: jax.Array, prefix, sites: tuple[str, ...],
                position: int = 0) -> jax.Array:
  """States of ``sites`` at ``position`` of every row -> ``[n_sites, B, D]`` float32 (traceable)."""
  out = forward(params, config, ids, mask, logits_at="none", capture=_capture(sites), prefix=prefix)
  got = []
  for site in sites:
    if site.startswith("resid_post."):
      h = out.captured["resid_post"][int(site.split(".", 1)[1])]
    else:
      h = out.captured[site]
    got.append(h[:, position].astype(jnp.float32))
  return jnp.stack(got)


def _block_moments(w: jax.Array, valid: jax.Array,
                   out_sharding=None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(count, ``[S, D]`` mean, ``[S, D, D]`` centred sum of squares) of the valid rows of ``w [S, B, D]``;
  ``out_sharding`` places the ``[S, D, D]`` (a deep model's sites x D^2 does not fit one device)."""
  v = valid.astype(jnp.float32)[None, :, None]
  n = jnp.sum(valid.astype(jnp.float32))
  mean = jnp.sum(w * v, axis=1) / n
  c = (w - mean[:, None]) * v
  m2 = jnp.einsum("sbd,sbe->sde", c, c, precision=_HI)
  if out_sharding is not None:
    m2 = jax.lax.with_sharding_constraint(m2, out_sharding)
  return n, mean, m2


def moments_sharding(mesh) -> NamedSharding | None:
  """``[S, D, D]`` moments with their first ``D`` over the mesh axis of the directions (None: no mesh)."""
  if mesh is None:
    return None
  return NamedSharding(mesh, P(None, dict(sharding.LOGICAL_AXIS_RULES)["vocab"], None))


@functools.partial(jax.jit, static_argnames=("config", "sites", "out_sharding"))
def statistics_block(params, config, ids, mask, prefix, valid, *, sites, out_sharding=None):
  """Pass 1 on one block: count, per-site mean ``[S, D]`` and centred sum of squares ``[S, D, D]``."""
  return _block_moments(site_states(params, config, ids, mask, prefix, sites), valid, out_sharding)


@functools.partial(jax.jit, static_argnames=("config", "sites", "metric", "scores", "out_sharding"))
def projection_block(params, config, ids, mask, prefix, valid, mean, whiten, units, *, sites, metric,
                     scores=True, out_sharding=None):
  """Pass 2 on one block: scores ``[S, B, K]`` (or None) and the moments of the rows as ``metric`` sees them.

  Args:
    params, config, ids, mask, prefix: the forward pass's (``ids [B, T]`` the token and its context's tail).
    valid: ``[B]`` rows that count (the last block is padded).
    mean: ``[S, D]`` per-site centre; whiten: ``[S, D, D]`` or None.
    units: ``[S, K, D]`` unit directions per site.
    sites, metric: static.
    scores: compute the scores (False: the moments only).
    out_sharding: of the ``[S, D, D]`` moments (``moments_sharding``).
  """
  x = site_states(params, config, ids, mask, prefix, sites) - mean[:, None]
  if whiten is not None:
    x = jnp.einsum("sbd,sde->sbe", x, whiten, precision=_HI)
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  inv = jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  out = None
  if scores:
    out = jnp.einsum("sbd,skd->sbk", x, units, precision=_HI)
    if metric == "cosine":
      out = jnp.clip(out * inv, -1.0, 1.0)
  w = x * inv if metric == "cosine" else x
  return out, _block_moments(w, valid, out_sharding)


_states_jit = jax.jit(site_states, static_argnames=("config", "sites", "position"))


class _Merged:
  """Per-site count, mean and centred sum of squares merged over blocks in float64 (Chan et al.)."""

  def __init__(self, n_sites: int, d: int):
    self.n = 0.0
    self.mean = np.zeros((n_sites, d), np.float64)
    self.m2 = np.zeros((n_sites, d, d), np.float64)

  def add(self, n_b, mean_b, m2_b) -> None:
    n_b = float(n_b)
    if n_b <= 0:
      return
    mean_b, m2_b = np.asarray(mean_b, np.float64), np.asarray(m2_b, np.float64)
    total = self.n + n_b
    delta = mean_b - self.mean
    self.mean += delta * (n_b / total)
    self.m2 += m2_b + np.einsum("sd,se->sde", delta, delta) * (self.n * n_b / total)
    self.n = total

  def arrays(self) -> dict[str, np.ndarray]:
    return {"n": np.asarray(self.n), "mean": self.mean, "m2": self.m2}

  def load(self, arrays: dict[str, np.ndarray]) -> None:
    self.n, self.mean, self.m2 = float(arrays["n"]), arrays["mean"], arrays["m2"]


# ----------------------------------------------------------------------------- files


class _Checkpoint:
  """A pass's merged moments and the blocks they cover, in one atomically replaced ``.npz`` (process 0)."""

  def __init__(self, path: Path | None, fingerprint: str, every: float, ignore: bool = False):
    self.path, self.fingerprint, self.every = path, fingerprint, float(every)
    self.ignore = ignore  # a new (empty) array: blocks the file lists are not in it
    self._last = time.monotonic()

  def load(self, merged: _Merged, n_blocks: int) -> set[int]:
    """Fills ``merged`` from the file when it has this fingerprint; returns the covered block indices."""
    flags = np.zeros(n_blocks, np.int32)
    arrays = None
    if self.path is not None and distributed.is_main() and self.path.is_file() and not self.ignore:
      try:
        with np.load(self.path, allow_pickle=False) as f:
          if str(f["fingerprint"]) == self.fingerprint:
            arrays = {k: f[k] for k in ("n", "mean", "m2", "done")}
      except (OSError, ValueError, KeyError):
        arrays = None
    if arrays is not None:
      flags[arrays["done"][arrays["done"] < n_blocks]] = 1
      merged.load(arrays)
    flags = np.asarray(distributed.broadcast(flags))
    if flags.any():
      merged.load({k: np.asarray(distributed.broadcast(v)) for k, v in merged.arrays().items()})
    return {int(i) for i in np.flatnonzero(flags)}

  def due(self) -> bool:
    return self.path is not None and time.monotonic() - self._last >= self.every

  def save(self, merged: _Merged, done: set[int]) -> None:
    self._last = time.monotonic()
    if self.path is None or not distributed.is_main():
      return
    try:
      with atomic_write(self.path, "wb") as f:
        np.savez(f, fingerprint=np.asarray(self.fingerprint), done=np.asarray(sorted(done), np.int64),
                 **merged.arrays())
    except OSError as e:
      raise write_error(self.path.parent.parent, e) from None


class _Store:
  """The ``[n_sites, n_tokens, K]`` zarr v3 array, written by process 0 in token blocks."""

  def __init__(self, path: Path, shape: tuple[int, int, int], chunk: int, dtype: str, fingerprint: str,
               attributes: dict[str, Any], overwrite: bool):
    self.path, self.shape, self.chunk, self.dtype = path, tuple(shape), int(chunk), dtype
    self.fingerprint = fingerprint
    self.store, self.reopened = None, False
    if distributed.is_main():
      self.store = self._open(attributes, overwrite)

  def _state(self) -> dict | None:
    try:
      state = json.loads((self.path / zarr_out.STATE_NAME).read_text())
    except (OSError, ValueError):
      return None
    return state if isinstance(state, dict) else None

  def _open(self, attributes, overwrite: bool):
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(self.path)}}
    state = self._state()
    ours = state is not None and state.get("fingerprint") == self.fingerprint
    if ours and (self.path / "zarr.json").is_file():
      try:
        store = ts.open(spec | {"open": True}).result()
        if tuple(store.shape) == self.shape:
          self.reopened = True
          return store
      except ValueError:
        pass
    elif self.path.exists() and any(self.path.iterdir()) and not overwrite:
      raise InputError(f"{self.path} holds a projection of other inputs (model, scales, sites or options "
                       "differ); pass --overwrite to replace it, or choose another --out_dir.")
    if self.path.exists():
      shutil.rmtree(self.path)
    self.save_state(set())
    s, n, k = self.shape
    meta = {"shape": [s, n, k], "data_type": self.dtype, "fill_value": float("nan"), "attributes": attributes,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, min(self.chunk, n), k]}}}
    try:
      return ts.open(spec | {"metadata": meta, "create": True}).result()
    except ValueError as e:
      raise zarr_out._io_error(self.path, e) from None  # noqa: SLF001

  def write(self, start: int, block: np.ndarray) -> None:
    if self.store is None:
      return
    try:
      self.store[:, start:start + block.shape[1]].write(np.asarray(block).astype(self.store.dtype.numpy_dtype)
                                                        ).result()
    except ValueError as e:
      raise zarr_out._io_error(self.path, e) from None  # noqa: SLF001

  def save_state(self, done_rows: set[int]) -> None:
    """``.state.json`` as ``zarr_out`` keeps it: the fingerprint and the start rows of the done blocks."""
    if not distributed.is_main():
      return
    state = {"fingerprint": self.fingerprint, "shape": list(self.shape), "chunk_rows": self.chunk,
             "done": sorted(int(r) for r in done_rows)}
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      atomic_write_text(self.path / zarr_out.STATE_NAME, json.dumps(state))
    except OSError as e:
      raise write_error(self.path, e) from None

  def finalize(self) -> None:
    if not distributed.is_main():
      return
    marker = {"shape": list(self.shape), "chunk_rows": self.chunk, "dtype": self.dtype,
              "fingerprint": self.fingerprint}
    try:
      atomic_write_text(self.path / zarr_out.COMPLETE_MARKER, json.dumps(marker, sort_keys=True))
    except OSError as e:
      raise write_error(self.path, e) from None


def _on_main(action) -> None:
  """Runs ``action`` (process 0's file work) and stops every process with its one line if it fails."""
  error = None
  try:
    action()
  except InputError as e:
    error = str(e)
  distributed.agree(error)


# ----------------------------------------------------------------------------- the runner


class _Runner:
  """Blocks of vocabulary tokens in the context, placed over the mesh's data axis."""

  def __init__(self, model, context: str, sites: tuple[str, ...], chunk: int):
    self.model, self.sites, self.chunk = model, sites, int(chunk)
    prefix_ids, self.suffix = context_parts(model.tokenizer, context)
    self.prefix_len = len(prefix_ids)
    self.prefix = None
    if prefix_ids:
      cache = jax.jit(prefix_cache, static_argnames=("config",))
      self.prefix = cache(model.params, model.config, jnp.asarray(prefix_ids, jnp.int32))
    data = model._data_size()  # noqa: SLF001
    if self.chunk % data:
      raise InputError(f"--hidden_chunk_rows={self.chunk} must be a multiple of {data}, the mesh's data "
                       "axis.")

  def put(self, x: np.ndarray) -> jax.Array:
    return self.model._put(x)  # noqa: SLF001

  def block(self, tokens: np.ndarray) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ids [chunk, T], mask, valid [chunk])`` on the mesh for ``tokens`` (padded with the first)."""
    k = len(tokens)
    padded = np.concatenate([tokens, np.full(self.chunk - k, tokens[0], tokens.dtype)])
    ids = np.concatenate([padded[:, None], np.broadcast_to(np.asarray(self.suffix, np.int64),
                                                           (self.chunk, len(self.suffix)))], axis=1)
    return (self.put(ids.astype(np.int32)), self.put(np.ones(ids.shape, np.int32)),
            self.put((np.arange(self.chunk) < k)))

  def states(self, tokens: np.ndarray) -> np.ndarray:
    """``[n_sites, len(tokens), D]`` float32 raw states (host)."""
    return self.word_states([(int(t),) for t in tokens])

  def word_states(self, seqs, progress=None) -> np.ndarray:
    """``[n_sites, len(seqs), D]`` float32 raw states at the last token of each token-id sequence in the
    context (sequences of one length run together, in blocks of ``chunk``); ``progress(done)`` after
    each block."""
    d = self.model.config.d_model
    out = np.zeros((len(self.sites), len(seqs), d), np.float32)
    by_length: dict[int, list[int]] = {}
    done = 0
    for i, ids in enumerate(seqs):
      by_length.setdefault(len(ids), []).append(i)
    for length, rows in sorted(by_length.items()):
      for s in range(0, len(rows), self.chunk):
        part = rows[s:s + self.chunk]
        ids = np.asarray([list(seqs[i]) + list(self.suffix) for i in part], np.int32)
        ids = np.concatenate([ids, np.repeat(ids[:1], self.chunk - len(part), axis=0)])
        got = _states_jit(self.model.params, self.model.config, self.put(ids), self.put(np.ones_like(ids)),
                          self.prefix, sites=self.sites, position=length - 1)
        out[:, part] = distributed.to_host(got)[:, :len(part)]
        done += len(part)
        if progress is not None:
          progress(done)
    return out


def token_states(model, tokens, sites, context: str = DEFAULT_CONTEXT, chunk: int = 256) -> np.ndarray:
  """Raw states of ``tokens`` (each alone in ``context``) at ``sites`` -> ``[n_sites, n, D]`` float32.

  The same programs as the sweep (prefix cache, one pass per block, every site at once).
  """
  sites = parse_layers(sites, model.config.n_layers)
  return _Runner(model, context, sites, chunk).states(np.asarray(tokens, np.int64))


def _run_pass(runner: _Runner, n_tokens: int, checkpoint: _Checkpoint, merged: _Merged, compute, what: str,
              on_block=None, on_save=None, tokens: np.ndarray | None = None) -> dict[str, Any]:
  """One pass over the vocabulary in blocks, skipping the checkpoint's; ``compute(ids, mask, valid)``
  returns ``(scores or None, (n, mean, m2))``; ``on_block(start, scores)`` gets each block's scores.
  ``tokens``: the ids to run, in blocks of ``chunk`` (default ``0..n_tokens-1``)."""
  chunk = runner.chunk
  tokens = np.arange(n_tokens, dtype=np.int64) if tokens is None else np.asarray(tokens, np.int64)
  n_tokens = len(tokens)
  n_blocks = -(-n_tokens // chunk)
  done = checkpoint.load(merged, n_blocks)
  skipped = len(done)
  bar = Progress(what, n_tokens, unit="tokens")
  bar.resume(sum(min(chunk, n_tokens - b * chunk) for b in done))
  bar.update(bar.done)
  t0 = time.perf_counter()
  todo = [b for b in range(n_blocks) if b not in done]

  def dispatch(b):
    block = tokens[b * chunk:(b + 1) * chunk]
    return b, len(block), compute(*runner.block(block))

  def finish(b, k, out):
    scores, moments = out
    if scores is not None and on_block is not None:
      host = distributed.to_host(scores)[:, :k]
      if not np.isfinite(host).all():
        raise InputError(f"the hidden states of tokens {tokens[b * chunk]}..{tokens[b * chunk + k - 1]} give "
                         "NaN or inf scores; load the model with --dtype=float32.")
      on_block(b * chunk, host)
    merged.add(*(distributed.to_host(m) for m in moments))
    done.add(b)
    if checkpoint.due() or len(done) == n_blocks:
      _on_main(lambda: checkpoint.save(merged, done))
      if on_save is not None:
        on_save(done)
    bar.update(min(n_tokens, bar.done + k))

  pending = None
  for b in todo:  # block b + 1 is dispatched before block b goes to the host
    current = dispatch(b)
    if pending is not None:
      finish(*pending)
    pending = current
  if pending is not None:
    finish(*pending)
  if not todo and on_save is not None:
    on_save(done)
  bar.close()
  seconds = time.perf_counter() - t0
  computed = n_tokens - bar.resumed
  return {"seconds": round(seconds, 2), "tokens_per_second": float(computed / max(seconds, 1e-9)),
          "resumed": {"chunks_skipped": skipped, "chunks_computed": len(todo)}}


# ----------------------------------------------------------------------------- the sweep


def _fingerprint(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _site_directions(model, opts, runner: _Runner, scale_set, context, transforms, n_stats: int):
  """Per site ``(Space, Directions)`` of the scale set from the pole words' states in ``context``, and the
  scales dropped because their poles are identical at some site (``{scale: site}``).

  A word's state is read at its last token, so at ``embed`` two words that end in the same token
  (``ab|axial``, ``ad|axial``) have one state; such a scale has no direction there and is left out
  at every site, so that every site projects on the same directions.
  """
  words = list(dict.fromkeys(w for s in scale_set for w in (*s.positive, *s.negative)))
  wt = lexicon.resolve_words(model.tokenizer, words, opts.policy)
  ids = [tuple(t) for t in (wt.used_all_ids or wt.used_token_ids)]
  seqs = list(dict.fromkeys(ids))
  bar = Progress(f"hidden sweep {scale_set.name}: pole words' states", len(seqs), unit="words")
  bar.update(0)
  states = runner.word_states(seqs, progress=bar.update)  # [n_sites, words, D], the words' last tokens
  bar.close()
  rows = {t: i for i, t in enumerate(seqs)}
  word_row = {w: rows[t] for w, t in zip(wt.used_words, ids)}
  identical: dict[str, str] = {}
  for scale in scale_set:
    pos = [word_row[w] for w in scale.positive if w in word_row]
    neg = [word_row[w] for w in scale.negative if w in word_row]
    if not pos or not neg:
      continue  # build reports it as missing
    same = [site for si, site in enumerate(runner.sites)
            if not np.any(states[si, pos].mean(axis=0) != states[si, neg].mean(axis=0))]
    if same:
      identical[scale.name] = same[0]
  kept = [sc for sc in scale_set if sc.name not in identical]
  if not kept:
    raise InputError(f"{scale_set.name}: every scale has identical poles at some site of --layers; "
                     "leave out the embed site or give other scales.")
  out = []
  bar = Progress(f"hidden sweep {scale_set.name}: directions", len(runner.sites), unit="sites")
  bar.update(0)
  for s, site in enumerate(runner.sites):
    table = spaces_lib.StateTable(rows, states[s])
    space = spaces_lib.Space(name="hidden", layer=layers_capture.site_layer(site), site=site,
                             centred=opts.centre, whitened=opts.whiten, template=context,
                             stats_tokens=n_stats if (opts.centre or opts.whiten) else 0,
                             tied=bool(model.config.tie_embeddings), transform=transforms[s], states=table)
    out.append((space, scale_directions.build(model, space, kept, policy=opts.policy, method=opts.method,
                                              missing="drop", min_coverage=opts.min_coverage,
                                              what=scale_set.name)))
    bar.update(s + 1)
  bar.close()
  return out, identical


def stats_sample(n_tokens: int, sample: int, seed: int) -> np.ndarray:
  """The sorted token ids whose states give the statistics: all ``0..n_tokens-1`` when ``sample`` is 0
  or at least ``n_tokens``, else ``sample`` of them drawn uniformly without replacement (seeded)."""
  if sample <= 0 or sample >= n_tokens:
    return np.arange(n_tokens, dtype=np.int64)
  drawn = np.random.default_rng(seed).choice(n_tokens, size=int(sample), replace=False)
  return np.sort(drawn).astype(np.int64)


def check_options(opts) -> None:
  """The hidden sweep's own option checks (one line naming the flag)."""
  if opts.method not in METHODS:
    raise InputError(f"--method={opts.method!r} does not apply to hidden states; use one of "
                     f"{', '.join(METHODS)}.")
  store_dtype(opts.store_dtype)
  if opts.hidden_chunk_rows < 1:
    raise InputError(f"--hidden_chunk_rows={opts.hidden_chunk_rows} must be at least 1.")
  if opts.hidden_stats_sample < 0:
    raise InputError(f"--hidden_stats_sample={opts.hidden_stats_sample} must be 0 (every token) or more.")


def run_hidden_sweep(model, opts, out_dir=None, baselines=("gaussian", "token_pairs"),
                     n_tokens: int | None = None) -> dict[str, Any]:
  """Projects every vocabulary token's state at the asked sites on every direction; spectra per site.

  Args:
    model: a ``jaxsem.Model``.
    opts: ``sweep.SweepOptions`` with ``space="hidden"`` (its ``layers``, ``context``,
      ``store_dtype``, ``hidden_chunk_rows`` and ``checkpoint_seconds`` apply).
    out_dir: where ``projections.zarr`` and the checkpoints go (None: nothing written, no resume).
    baselines: the random direction sets to compare with (``sweep.BASELINES``).
    n_tokens: only token ids ``0..n_tokens-1`` (a part of the work, for benchmarks); default all.

  Returns:
    JSON-friendly results: ``sites`` (per site: ``spectra``, ``verdict``, ``directions``), the
    deepest site's ``spectra``/``verdict`` at the top level, ``zarr`` (path, shape ``[site, token,
    direction]``, dtype, bytes), ``context``, ``statistics``, timings and throughput.

  Raises:
    InputError: bad ``--layers``/``--context``/``--method``/``--store_dtype``, too little disk,
      too few usable scales, NaN/inf states, an out_dir holding another sweep.
  """
  start = time.perf_counter()
  check_options(opts)
  cfg = model.config
  sites = parse_layers(opts.layers, cfg.n_layers)
  dtype = store_dtype(opts.store_dtype)
  context = opts.context
  runner = _Runner(model, context, sites, opts.hidden_chunk_rows)
  scale_set = scales_io.load_scales(opts.scales)
  n_tokens = int(cfg.vocab_size) if n_tokens is None else min(int(n_tokens), int(cfg.vocab_size))
  d, n_sites = int(cfg.d_model), len(sites)
  out = None if out_dir is None else Path(out_dir)
  model_id = (model.provenance.get("sha256") or model.provenance.get("path"), model.provenance.get("dtype"))
  base = {"model": model_id, "sites": sites, "context": context, "chunk": runner.chunk, "n": n_tokens}
  ckpt_dir = None if out is None else out / CHECKPOINT_DIR
  if opts.write_zarr and out is not None:  # before any work: at most one column per scale asked
    most = array_bytes(n_sites, n_tokens, len(scale_set), dtype)
    if distributed.is_main():
      print(f"hidden sweep: the array will be {n_sites} sites x {n_tokens} tokens x at most {len(scale_set)} "
            f"directions in {dtype} = {most / 1e9:.2f} GB ({out / ZARR_NAME})", file=sys.stderr, flush=True)
    _on_main(lambda: distributed.is_main() and not (out / ZARR_NAME / "zarr.json").is_file()
             and check_disk(out, most))

  # Pass 1: the statistics per site, over every token swept or a seeded sample of them.
  stats = _Merged(n_sites, d)
  stats_run = None
  stats_tokens = stats_sample(n_tokens, opts.hidden_stats_sample, opts.seed)
  if opts.centre or opts.whiten:
    ck = _Checkpoint(None if ckpt_dir is None else ckpt_dir / "statistics.npz",
                     _fingerprint("stats", base, len(stats_tokens), opts.seed), opts.checkpoint_seconds)
    stats_run = _run_pass(runner, n_tokens, ck, stats,
                          lambda ids, mask, valid: (None, statistics_block(
                              model.params, cfg, ids, mask, runner.prefix, valid, sites=sites,
                              out_sharding=moments_sharding(model.mesh))),
                          f"hidden sweep {scale_set.name}: statistics", tokens=stats_tokens)
    bad = ~np.isfinite(stats.mean).all(axis=1)
    if bad.any():
      raise InputError(f"site {sites[int(np.flatnonzero(bad)[0])]}: the vocabulary's states have NaN or inf "
                       "entries; load the model with --dtype=float32.")
  transforms = []
  for s in range(n_sites):
    mean = stats.mean[s] if opts.centre else np.zeros(d)
    w = spaces_lib.inverse_sqrt(stats.m2[s] / max(stats.n, 1.0)) if opts.whiten else np.eye(d)
    transforms.append(spaces_lib.Transform(mean=jnp.asarray(mean, jnp.float32), W=jnp.asarray(w, jnp.float32))
                      if (opts.centre or opts.whiten) else None)

  # Directions per site from the pole words' states in the same context.
  built, identical = _site_directions(model, opts, runner, scale_set, context, transforms,
                                     len(stats_tokens))
  names = [n for n in built[0][1].names if all(n in dirs.names for _, dirs in built)]
  if not names:
    raise InputError(f"no scale of {scale_set.name} could be built at every site; check --scales.")
  vectors = np.stack([np.asarray(dirs.vectors)[[dirs.names.index(n) for n in names]] for _, dirs in built])
  k = len(names)
  units = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
  units_dev, mean_dev, whiten_dev = _place(model, units, transforms, d)

  result: dict[str, Any] = {"n_tokens": n_tokens, "n_directions": k, "metric": opts.metric,
                            "layers": list(sites), "context": context}
  store = None
  if opts.write_zarr and out is not None:
    need = array_bytes(n_sites, n_tokens, k, dtype)
    key = _fingerprint("projection", base, opts.scales, names, opts.centre, opts.whiten, opts.policy,
                       opts.method, opts.metric, opts.min_coverage, dtype)
    path = out / ZARR_NAME
    attrs = {"axes": ["site", "token", "direction"], "sites": list(sites), "columns": names,
             "rows": "token ids 0..n_tokens-1", "context": context, "metric": opts.metric,
             "model": model.provenance.get("name"), "sign": "positive pole minus negative pole"}
    holder: list[_Store] = []  # built on every process; only process 0's holds the open array
    _on_main(lambda: holder.append(_Store(path, (n_sites, n_tokens, k), runner.chunk, dtype, key, attrs,
                                          opts.overwrite)))
    store = holder[0]
    result["zarr"] = {"path": str(path), "shape": [n_sites, n_tokens, k],
                      "axes": ["site", "token", "direction"],
                      "chunk_rows": runner.chunk, "dtype": dtype, "gigabytes": round(need / 1e9, 3),
                      "fingerprint": key}
  moments = _Merged(n_sites, d)
  ck = _Checkpoint(None if ckpt_dir is None else ckpt_dir / "moments.npz",
                   _fingerprint("moments", base, names, opts.centre, opts.whiten, opts.metric, opts.policy,
                                opts.method, opts.scales, result.get("zarr", {}).get("fingerprint")),
                   opts.checkpoint_seconds, ignore=store is not None and not store.reopened)
  compute = functools.partial(_project, model, runner, mean_dev, whiten_dev, units_dev, opts.metric,
                              store is not None)
  write = None if store is None else lambda s, b: _on_main(lambda: store.write(s, b[..., :k]))
  run = _run_pass(runner, n_tokens, ck, moments, compute, f"sweep {scale_set.name}", on_block=write,
                  on_save=None if store is None else lambda done: _on_main(
                      lambda: store.save_state({b * runner.chunk for b in done})))
  if store is not None:
    _on_main(store.finalize)
    result["zarr"].update(run)
    result["zarr"]["scores_per_second"] = run["tokens_per_second"] * n_sites * k
  t0 = time.perf_counter()
  result["sites"] = _spectra(model, opts, runner, sites, built, names, units, transforms, moments, baselines)
  deepest = result["sites"][-1]
  result.update(spectra=deepest["spectra"], verdict=deepest["verdict"], rated_words={},
                spectra_seconds=round(time.perf_counter() - t0, 2))
  exact = len(stats_tokens) == n_tokens
  result["statistics"] = {"tokens": len(stats_tokens) if stats_run else 0, "exact": exact,
                          "sample_seed": None if exact else opts.seed,
                          "what": ("mean and covariance of every swept token's state in the context" if exact
                                   else f"mean and covariance of the states of a uniform sample of "
                                        f"{len(stats_tokens)} of the {n_tokens} swept tokens (seed "
                                        f"{opts.seed}) in the context"),
                          **({"pass": stats_run} if stats_run else {})}
  result["projection_pass"] = run
  result["coverage"] = {"scales": k / max(len(scale_set), 1), "tokens": f"all {n_tokens} vocabulary tokens",
                        "rated_words": "not computed for --space=hidden"}
  result["directions"] = {**built[-1][1].report(), "scales_asked": len(scale_set),
                         "identical_poles_dropped": identical}
  result["space"] = {**built[-1][0].provenance(), "sites": list(sites), "context": context,
                     "context_tokens": {"prefix": runner.prefix_len, "suffix": len(runner.suffix)}}
  result["scales_file"] = str(scale_set.source)
  result["store_dtype"] = dtype
  result["pca"] = {"standardized": opts.standardize,
                   "method": "exact, from the [D, D] moments of every vocabulary token's state per site"}
  result["seconds"] = round(time.perf_counter() - start, 2)
  return result


def _place(model, units: np.ndarray, transforms, d: int):
  """Directions ``[S, K', D]`` (K padded to and split over the model axis), means and whitening, placed."""
  s, k, _ = units.shape
  mesh = model.mesh
  mean = np.stack([np.zeros(d, np.float32) if t is None else np.asarray(t.mean) for t in transforms])
  whiten = None
  eye = np.eye(d, dtype=np.float32)
  if any(t is not None and not np.array_equal(np.asarray(t.W), eye) for t in transforms):
    whiten = np.stack([np.eye(d, dtype=np.float32) if t is None else np.asarray(t.W) for t in transforms])
  if mesh is None:
    return jnp.asarray(units, jnp.float32), jnp.asarray(mean), None if whiten is None else jnp.asarray(whiten)
  axis = dict(sharding.LOGICAL_AXIS_RULES)["vocab"]
  k_pad = k + -k % mesh.shape[axis]
  padded = np.concatenate([units, np.repeat(units[:, :1], k_pad - k, axis=1)], axis=1).astype(np.float32)
  rep = NamedSharding(mesh, P())
  return (jax.device_put(padded, NamedSharding(mesh, P(None, axis, None))), jax.device_put(mean, rep),
          None if whiten is None else jax.device_put(whiten, rep))


def _project(model, runner, mean, whiten, units, metric, scores, ids, mask, valid):
  return projection_block(model.params, model.config, ids, mask, runner.prefix, valid, mean, whiten, units,
                          sites=runner.sites, metric=metric, scores=scores,
                          out_sharding=moments_sharding(model.mesh))


def _spectra(model, opts, runner, sites, built, names, units, transforms, moments, baselines):
  """Per site: spectra of the antonym directions and the random baselines, and the verdict."""
  from jaxsem.analyses import sweep as sweep_lib

  key = jax.random.key(opts.seed)
  n = moments.n
  k, d = units.shape[1], units.shape[2]
  pairs = None
  if "token_pairs" in baselines:
    sample = spaces_lib.sample_tokens(model, n=max(2 * k, 256), seed=opts.seed)
    raw = runner.states(sample.astype(np.int64))
    pairs = (sample, raw)
  out = []
  for s, site in enumerate(sites):
    cov = moments.m2[s] / max(n - 1, 1.0)
    mom = spectrum_k.Moments(n=int(n), mean=jnp.asarray(moments.mean[s], jnp.float32),
                             cov=jnp.asarray(cov, jnp.float32), metric=opts.metric, cov64=cov)
    sets = {"antonym": units[s]}
    if "gaussian" in baselines:
      sets["gaussian"] = np.asarray(dir_k.random_directions(jax.random.fold_in(key, 1), k, d))
    if pairs is not None:
      vec = pairs[1][s] if transforms[s] is None else np.asarray(spaces_lib.apply(transforms[s], pairs[1][s]))
      sets["token_pairs"] = sweep_lib.token_pair_directions(vec, k, jax.random.fold_in(key, 2),
                                                            np.arange(len(pairs[0])))
    report = sweep_lib._spectrum_report  # noqa: SLF001
    spectra = {name: report(spectrum_k.projection_spectrum(mom, v, opts.standardize))
               for name, v in sets.items()}
    out.append({"site": site, "layer": layers_capture.site_layer(site), "n_directions": k,
                "spectra": spectra, "verdict": sweep_lib.verdict(spectra),
                "space": built[s][0].provenance()})
  if pairs is not None:
    for row in out:
      row["token_pairs_sample"] = {"tokens": int(len(pairs[0])), "seed": opts.seed,
                                   "what": "pairs of a seeded sample of non-special vocabulary tokens"}
  return out


def digest(result: dict[str, Any]) -> list[str]:
  """One line for the array and one per site: components for 50/80/90% beside the baselines."""
  lines = []
  if "zarr" in result:
    z = result["zarr"]
    lines.append(f"{z['shape'][0]} sites x {z['shape'][1]} tokens x {z['shape'][2]} directions -> "
                 f"{z['path']} "
                 f"({z['dtype']}, {z['gigabytes']:.2f} GB, {z['seconds']:.1f} s, "
                 f"{z['tokens_per_second']:.0f} tokens/s)")
  for row in result["sites"]:
    counts = "; ".join(f"{name} " + ",".join(str(v) for v in rep["n_components"].values())
                       for name, rep in row["spectra"].items())
    lines.append(f"{row['site']:>14s}: components for 50/80/90%: {counts}")
  return lines
