"""The steering grid: many (word, steering vector) rows through one compiled program.

``Grid`` holds what every row shares (the prompt template's cached prefix, the padded
suffix of each word, the readout) and ``Grid.evaluate(word_index, vectors)`` runs any
list of rows, in fixed-size batches (one compile) placed over the mesh's data axis. A
words x directions x strengths grid is one such list; so are held-out evaluations of
other steering methods and random-direction controls. A grid over several layers
(``layers``) takes each row's layer too, so every layer runs in the same program.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem import distributed
from jaxsem import sharding
from jaxsem.analyses import readouts
from jaxsem.analyses import row_checkpoint
from jaxsem.errors import InputError
from jaxsem.kernels import steering as steering_k
from jaxsem.models import interventions as iv_lib
from jaxsem.models.kv_cache import PrefixCache, prefix_cache

_prefix_cache_jit = jax.jit(prefix_cache, static_argnames=("config",))
# Readout columns differentiated per compiled call of the Jacobian: a call (one forward pass,
# then one backward pass per column) over a 256-word batch takes a few seconds on 2 CPU cores.
_JACOBIAN_COLUMNS = 4


@dataclasses.dataclass
class Grid:
  """Everything the rows of a steering grid share.

  Attributes:
    model: the ``jaxsem.Model``.
    prompts: the filled template (prefix + per-word suffixes).
    readout: the ``readouts.Readout`` read at every row (bare ``PoleTokens`` are read as
      their pole log-odds).
    site: intervention site; with ``layers``, the site's kind alone (``resid_pre`` or
      ``resid_post``).
    batch_size: rows per call (rounded up to the mesh's data axis); the short last batch of an
      evaluation longer than one batch runs at a smaller compiled size (``last_batch_rows``).
    layers: the blocks rows may be steered at (empty: every row at ``site``); ``evaluate``
      then takes each row's block (``layer_index``) and runs all of them in one program.
    kernel_readout: the readout's part in the kernel (``Readout.kernel_readout``), its
      arrays replicated over the model's mesh; set on construction.
  """

  model: object
  prompts: readouts.Prompts
  readout: readouts.Readout | readouts.PoleTokens
  site: str
  batch_size: int = 256
  layers: tuple[int, ...] = ()
  cache: PrefixCache = dataclasses.field(init=False, repr=False)
  # The readout's arrays on the devices, as the kernel takes them.
  kernel_readout: steering_k.KernelReadout = dataclasses.field(init=False, repr=False)
  # Rows taken from checkpoints by ``evaluate`` and rows computed, over this grid's life.
  rows_resumed: int = dataclasses.field(init=False, default=0)
  rows_computed: int = dataclasses.field(init=False, default=0)

  def __post_init__(self):
    if isinstance(self.readout, readouts.PoleTokens):
      self.readout = readouts.Readout(kind="logodds", names=self.readout.names, poles=self.readout)
    self.layers = tuple(int(x) for x in self.layers)
    if self.layers:
      if self.site not in ("resid_pre", "resid_post"):
        raise ValueError(f"a grid over layers steers at resid_pre or resid_post, not {self.site!r}")
      for layer in self.layers:
        iv_lib.parse_site(f"{self.site}.{layer}")
    else:
      iv_lib.parse_site(self.site)
    m = self.model
    self.cache = _prefix_cache_jit(m.params, m.config, jnp.asarray(self.prompts.prefix, jnp.int32))
    w = len(self.prompts.suffixes)
    t = max(len(s) for s in self.prompts.suffixes)
    self._ids = np.full((w, t), m.pad_id, np.int32)
    self._mask = np.zeros((w, t), np.int32)
    self._word = np.zeros((w, t), np.float32)
    for i, (s, pos) in enumerate(zip(self.prompts.suffixes, self.prompts.word_positions)):
      self._ids[i, :len(s)] = s
      self._mask[i, :len(s)] = 1
      self._word[i, list(pos)] = 1.0
    self._read = self._mask.sum(1).astype(np.int32) - 1
    self._word_last = np.array([p[-1] for p in self.prompts.word_positions], np.int32)
    self.batch_size = -(-int(self.batch_size) // self.data_size) * self.data_size
    self.kernel_readout = self.readout.kernel_readout(m.mesh)

  @property
  def data_size(self) -> int:
    """Devices on the mesh's data axis (batches are a multiple of it)."""
    mesh = self.model.mesh
    return 1 if mesh is None else mesh.shape[dict(sharding.LOGICAL_AXIS_RULES)["batch"]]

  @property
  def poles(self) -> readouts.PoleTokens:
    return self.readout.poles

  @property
  def read_site(self) -> str | None:
    return self.readout.read_site

  @property
  def read_dirs(self) -> np.ndarray | None:
    return self.readout.read_dirs

  @property
  def raw_logits(self) -> bool:
    return self.readout.raw_logits

  @property
  def n_words(self) -> int:
    return self._ids.shape[0]

  def _put(self, x: np.ndarray) -> jax.Array:
    mesh = self.model.mesh
    return jnp.asarray(x) if mesh is None else jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))

  def batch_inputs(self, rows: np.ndarray) -> tuple[jax.Array, ...]:
    """The per-row kernel inputs of words ``rows``: suffix ids, mask, word mask, read
    position and the word's last position, placed over the data axis."""
    return tuple(self._put(x[rows]) for x in (self._ids, self._mask, self._word, self._read, self._word_last))

  def evaluate(self, word_index: Sequence[int] | np.ndarray, vectors: np.ndarray,
               progress: Callable[[int, int], None] | None = None,
               checkpoint_dir: str | os.PathLike | None = None,
               name: str = "rows",
               layer_index: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Ratings of rows (word ``word_index[n]`` steered by ``vectors[n]``, strength included).

    Args:
      word_index: ``[N]`` indices into the prompts' words.
      vectors: ``[N, D]`` steering vectors (zeros = unsteered).
      progress: ``progress(rows_done, rows_total)`` after each batch.
      checkpoint_dir: keep each finished batch in ``checkpoint_dir/<name>.zarr`` and take
        the batches already there (same inputs) instead of computing them again.
      name: the evaluation's name in ``checkpoint_dir``.
      layer_index: ``[N]`` block each row is steered at, one of ``layers`` (a grid over
        layers only, where it is required).

    Returns:
      ``(logodds [N, J] (logits [N, R] with a raw-logits readout), representation [N, J]
      or None)`` float32 numpy; ``rate`` turns them into the readout's ratings.
    """
    word_index = np.asarray(word_index, np.int64)
    vectors = np.asarray(vectors, np.float32)
    row_layers = self._row_layers(layer_index, len(word_index))
    n, b = len(word_index), self.batch_size
    m = self.model
    j = self.readout.n_columns
    width = j + (0 if self.read_site is None else len(self.readout.names))
    ckpt = None
    if checkpoint_dir is not None and n:
      key = self.fingerprint(word_index, vectors)
      if self.layers:
        key = row_checkpoint.digest(key, "layers", np.asarray(self.layers), row_layers)
      ckpt = row_checkpoint.RowCheckpoint(checkpoint_dir, name, key, n, width, b)
      self.rows_resumed += ckpt.committed_rows
      if ckpt.committed and hasattr(progress, "resume"):
        progress.resume(ckpt.committed_rows)
    blocks, done = [], ckpt.committed_rows if ckpt else 0
    for start in range(0, n, b):
      k = min(b, n - start)
      stored = ckpt.get(start) if ckpt else None
      if stored is not None:
        blocks.append(stored)
        continue
      rows = word_index[start:start + b]
      vec = vectors[start:start + b]
      lay = None if row_layers is None else row_layers[start:start + b]
      # One batch or less runs at the full size, as every small evaluation does: a program per
      # small size would cost more compilation than its padding costs.
      size = b if n <= b else last_batch_rows(k, b, self.data_size)
      if k < size:  # pad to the compiled batch with unsteered copies of word 0
        vec = np.concatenate([vec, np.zeros((size - k, vec.shape[1]), np.float32)])
        lay = None if lay is None else np.concatenate([lay, np.full(size - k, self.layers[0], np.int32)])
        rows = np.concatenate([rows, np.zeros(size - k, np.int64)])
      if lay is None:
        r, rep = steering_k.steered_readout(m.params, m.config, self.cache, *self.batch_inputs(rows),
                                            self._put(vec), self.kernel_readout, site=self.site)
      else:
        r, rep = steering_k.steered_readout_layers(m.params, m.config, self.cache, *self.batch_inputs(rows),
                                                   self._put(vec), self._put(lay), self.kernel_readout,
                                                   kind=self.site, layers=self.layers)
      block = distributed.to_host(r)[:k]
      if rep is not None:
        block = np.concatenate([block, distributed.to_host(rep)[:k]], axis=1)
      if ckpt is not None:
        ckpt.commit(start, block)
      blocks.append(block)
      self.rows_computed += k
      done += k
      if progress is not None:
        progress(done, n)
    out = np.concatenate(blocks) if blocks else np.zeros((0, width), np.float32)
    return out[:, :j], (out[:, j:] if self.read_site is not None else None)

  def _row_layers(self, layer_index, n: int) -> np.ndarray | None:
    """``[N]`` int32 block of each row (None for a one-site grid), checked against ``layers``."""
    if not self.layers:
      if layer_index is not None:
        raise ValueError("layer_index is for a grid over layers; this grid steers at one site")
      return None
    if layer_index is None:
      raise ValueError(f"a grid over layers {list(self.layers)} needs each row's layer (layer_index)")
    out = np.asarray(layer_index, np.int32).reshape(-1)
    if out.shape != (n,) or not np.isin(out, self.layers).all():
      raise ValueError(f"layer_index must be [{n}] blocks among {list(self.layers)}")
    return out

  def rate(self, word_index: Sequence[int] | np.ndarray, vectors: np.ndarray, **kwargs) -> np.ndarray:
    """The readout's ratings ``[N, J]`` of rows (``evaluate``'s arguments)."""
    return self.readout.ratings(self.evaluate(word_index, vectors, **kwargs))

  def fingerprint(self, word_index: np.ndarray, vectors: np.ndarray) -> str:
    """Digest of everything that determines ``evaluate``'s outputs for these rows."""
    p = self.model.provenance
    return row_checkpoint.digest(
        "grid/1", p.get("sha256") or p.get("path"), p.get("dtype"), self.site, self.read_site,
        self.raw_logits, self.batch_size, np.asarray(self.prompts.prefix), self._ids, self._mask, self._word,
        self.poles.rows, self.poles.positive, self.poles.negative,
        np.zeros(0) if self.read_dirs is None else self.read_dirs, word_index, vectors)


def last_batch_rows(k: int, batch_size: int, multiple: int = 1) -> int:
  """Rows a batch of ``k <= batch_size`` rows is compiled for: ``batch_size`` when full, else the
  smallest of ``multiple * 2**i`` that holds ``k`` (at most ``batch_size``).

  A short last batch then computes fewer than twice its rows instead of a whole batch
  (640 rows in batches of 256 run as 256 + 256 + 128, not 3 x 256), and at most
  ``log2(batch_size / multiple)`` extra shapes are ever compiled. ``Grid.evaluate`` uses it
  for the last batch of evaluations longer than one batch.
  """
  size = multiple
  while size < k:
    size *= 2
  return min(batch_size, size)


def grid_rows(n_words: int, directions: np.ndarray,
              strengths: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """Rows of a words x directions x strengths grid, word-major.

  Args:
    n_words: ``W``.
    directions: ``[S, D]`` steering directions (used as given: pass unit vectors and
      strengths in the units wanted).
    strengths: ``[A]`` multipliers.

  Returns:
    ``(word_index [W*S*A], vectors [W*S*A, D])``; row ``(w, s, a)`` is at
    ``(w * S + s) * A + a``, so ``ratings.reshape(W, S, A, J)``.
  """
  d = np.asarray(directions, np.float32)
  a = np.asarray(strengths, np.float32)
  s = d.shape[0]
  vec = (d[:, None, :] * a[None, :, None]).reshape(s * len(a), -1)
  word_index = np.repeat(np.arange(n_words), s * len(a))
  return word_index, np.tile(vec, (n_words, 1))


def check_finite(ratings: np.ndarray, strengths: Sequence[float], what: str = "--alphas") -> None:
  """Raises when a strength produced NaN/inf ratings (``ratings [W, S, A, J]``)."""
  bad = ~np.isfinite(ratings).all(axis=(0, 1, 3))
  if bad.any():
    alpha = np.asarray(strengths)[bad]
    raise InputError(f"{what}: strength {float(alpha[np.argmax(np.abs(alpha))]):g} makes the model's"
                     " ratings NaN or inf (the steered activations overflow); use smaller strengths.")


def jacobian(grid: Grid, word_index: Sequence[int] | np.ndarray,
             checkpoint_dir: str | os.PathLike | None = None, name: str = "jacobian",
             columns: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
  """``[N, J, D]``: d rating_j / d steering vector of each (unsteered) word's row.

  The rows are independent, so the gradient of the batch sum of rating ``j`` with
  respect to all rows' vectors holds every row's own gradient; one forward pass, then
  the ``J`` backward passes, per batch of words. With ``checkpoint_dir`` every finished
  batch is kept (as ``Grid.evaluate`` keeps its batches) and taken from there next time.

  Args:
    columns: differentiate only the first ``columns`` pole log-odds (default: all), so
      readout columns the caller will not fit on cost no backward passes.
    progress: ``progress(gradients_done, N * J)`` after each call (a few readout columns of a
      batch of words); a ``Progress`` also learns the gradients taken from the checkpoint.
  """
  if grid.layers:
    raise ValueError("the Jacobian is taken on a grid that steers at one site, not over layers")
  m = grid.model
  word_index = np.asarray(word_index, np.int64)
  # Batches of the grid's size, but no bigger than the words need (rounded to the data axis):
  # fewer words than a batch are not padded to a whole one.
  b = min(grid.batch_size, -(-max(len(word_index), 1) // grid.data_size) * grid.data_size)
  d = m.config.d_model
  j = len(grid.poles.names) if columns is None else int(columns)
  if not 0 < j <= len(grid.poles.names):
    raise InputError(f"The Jacobian's columns must be 1..{len(grid.poles.names)}, got {j}.")
  readout = grid.kernel_readout.pole_columns(j)
  n = len(word_index)
  ckpt = None
  if checkpoint_dir is not None and n:
    key = row_checkpoint.digest("jacobian", grid.fingerprint(word_index, np.zeros((0, d), np.float32)),
                                *(() if columns is None else ("columns", j)))
    ckpt = row_checkpoint.RowCheckpoint(checkpoint_dir, name, key, n, j * d, b)
    grid.rows_resumed += ckpt.committed_rows
    if ckpt.committed and hasattr(progress, "resume"):
      progress.resume(ckpt.committed_rows * j)
  # A batch's backward passes run a few columns per call, so progress comes every few seconds;
  # every call has the same shape (the last is padded with zero cotangents, dropped after it).
  size = -(-j // -(-j // _JACOBIAN_COLUMNS))
  eye = np.eye(j, dtype=np.float32)
  cotangents = [np.pad(eye[c:c + size], ((0, max(0, c + size - j)), (0, 0))) for c in range(0, j, size)]
  out, done = [], (ckpt.committed_rows if ckpt else 0) * j
  for start in range(0, n, b):
    stored = ckpt.get(start) if ckpt else None
    if stored is not None:
      out.append(stored.reshape(-1, j, d))
      continue
    rows = word_index[start:start + b]
    k = len(rows)
    if k < b:
      rows = np.concatenate([rows, np.zeros(b - k, np.int64)])
    zeros = grid._put(np.zeros((b, d), np.float32))  # noqa: SLF001 - same placement as the rows
    inputs = grid.batch_inputs(rows)
    parts = []
    for c, cot in zip(range(0, j, size), cotangents):
      jac = _jacobian_batch(m.params, m.config, grid.cache, *inputs, zeros, readout, jnp.asarray(cot),
                            site=grid.site)
      parts.append(distributed.to_host(jac)[:k, :min(size, j - c)])
      done += k * parts[-1].shape[1]
      if progress is not None:
        progress(done, n * j)
    block = np.concatenate(parts, axis=1)
    if ckpt is not None:
      ckpt.commit(start, block.reshape(k, j * d))
    grid.rows_computed += k
    out.append(block)
  return np.concatenate(out) if out else np.zeros((0, j, d), np.float32)


@functools.partial(jax.jit, static_argnames=("config", "site"))
def _jacobian_batch(params, config, cache, ids, mask, word, read, word_last, vectors, readout, cotangents, *,
                    site):
  def total(v):
    r, _ = steering_k.steered_readout(params, config, cache, ids, mask, word, read, word_last, v, readout,
                                      site=site)
    return jnp.sum(r, axis=0)  # [J]; row b's rating depends on row b's vector only

  # One forward pass, then a backward pass per cotangent (a row of the identity: one readout
  # column), one after another: on a CPU a loop of single-cotangent passes is ~2x faster than
  # jacrev's vmapped [J, ...] cotangents.
  out, pullback = jax.vjp(total, vectors)
  jac = jax.lax.map(lambda e: pullback(e)[0], cotangents.astype(out.dtype))  # [C, B, D]
  return jnp.moveaxis(jac, 0, 1)  # [B, C, D]
