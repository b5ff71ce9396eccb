"""The hidden sweep's resumable state: merged moments, checkpoints, the zarr store and one pass.

``_Merged`` merges per-site block moments in float64 (Chan's pairwise update); ``_Checkpoint``
keeps a pass's merged moments and the blocks they cover in an atomically replaced ``.npz``;
``_Store`` is the ``[site, token, direction]`` zarr v3 array with its ``.state.json`` and
completion marker; ``_run_pass`` runs one pass over the vocabulary in blocks, skipping those a
checkpoint covers. File work happens on process 0 (``_on_main``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from jaxsem import distributed
from jaxsem.analyses.hidden_sweep_kernels import _Runner
from jaxsem.errors import InputError
from jaxsem.io.cache import atomic_write, atomic_write_text
from jaxsem.io.out_dir import write_error
from jaxsem.kernels import zarr_out
from jaxsem.progress import Progress


# ----------------------------------------------------------------------------- moments


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


# ----------------------------------------------------------------------------- the pass


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
