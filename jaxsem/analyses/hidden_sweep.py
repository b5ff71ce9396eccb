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

Modules: this one holds the options, ``run_hidden_sweep`` and the public helpers;
``hidden_sweep_kernels`` the jitted per-block programs and the runner that feeds them;
``hidden_sweep_state`` the merged moments, checkpoints, zarr store and the resumable pass;
``hidden_sweep_sites`` the directions and spectra per site.
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

import jax.numpy as jnp
import numpy as np

from jaxsem import distributed
from jaxsem.analyses import layers_capture
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.analyses.hidden_sweep_kernels import _place, _project, _Runner, moments_sharding, statistics_block
from jaxsem.analyses.hidden_sweep_sites import _site_directions, _spectra
from jaxsem.analyses.hidden_sweep_state import _Checkpoint, _Merged, _on_main, _run_pass, _Store
from jaxsem.errors import InputError
from jaxsem.io import scales as scales_io

DEFAULT_CONTEXT = "{token}"
STORE_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}
DEFAULT_STORE_DTYPE = "float16"  # what "auto" means for the hidden sweep (the static sweep: float32)
METHODS = ("pole_mean", "pair_mean")  # semaxis searches a vocabulary matrix, which hidden sites lack
ZARR_NAME = "projections.zarr"
CHECKPOINT_DIR = ".hidden_sweep"
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


# ----------------------------------------------------------------------------- the sweep


def _fingerprint(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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


def token_states(model, tokens, sites, context: str = DEFAULT_CONTEXT, chunk: int = 256) -> np.ndarray:
  """Raw states of ``tokens`` (each alone in ``context``) at ``sites`` -> ``[n_sites, n, D]`` float32.

  The same programs as the sweep (prefix cache, one pass per block, every site at once).
  """
  sites = parse_layers(sites, model.config.n_layers)
  return _Runner(model, context, sites, chunk).states(np.asarray(tokens, np.int64))


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
