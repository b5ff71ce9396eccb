"""Whole-vocabulary sweep: every token on every direction of a scale set.

The ``[vocab, S]`` projection matrix (262k x ~3k for Gemma 3 on the WordNet antonym
directions) is streamed in row blocks to a zarr array with tensorstore. Then: how many
principal components explain 50/80/90% of its variance, beside the same count for

* ``gaussian``: as many isotropic random directions (unit Gaussian) in the same space;
* ``token_pairs``: as many differences of random pairs of vocabulary tokens, i.e.
  "antonym directions" between words that are not antonyms, which inherit the
  embedding's anisotropy as the real ones do;
* the same antonym directions over the human-rated words only (``--norms``), the
  setting of the structure analysis.

If the antonym directions need fewer components than both random baselines over the
whole vocabulary, the low dimensionality is a property of the directions, not of a
few rated words. The spectra come from the ``[D, D]`` moments of the vocabulary
(``kernels.spectrum``): exact, and shared by all direction sets.

``space="hidden"`` sweeps every token's hidden state at the asked sites instead
(``analyses.hidden_sweep``): a ``[site, token, direction]`` array and spectra per site.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxsem import experiment_config
from jaxsem.analyses import align as align_lib
from jaxsem.analyses import hidden_sweep
from jaxsem.analyses import row_checkpoint
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.errors import InputError
from jaxsem.io import norms
from jaxsem.io import scales as scales_io
from jaxsem.kernels import directions as dir_k
from jaxsem.kernels import projection
from jaxsem.kernels import spectrum as spectrum_k
from jaxsem.progress import Progress

BASELINES = ("gaussian", "token_pairs")
# SweepOptions fields that change the projection matrix (the others only its analysis).
_MATRIX_OPTIONS = ("scales", "space", "centre", "whiten", "policy", "method", "metric", "min_coverage",
                   "chunk_rows")
ZARR_NAME = "projections.zarr"


@dataclasses.dataclass(frozen=True)
@experiment_config.config_defaults("sweep")
class SweepOptions:
  """What the sweep projects and compares.

  Attributes:
    scales: scale set name or file (default every WordNet antonym pair).
    space: ``input_embedding``, ``unembedding``, or ``hidden`` (every token's state in
      ``context`` at the sites of ``layers``, ``analyses.hidden_sweep``).
    centre: subtract the vocabulary mean.
    whiten: whiten with the vocabulary covariance.
    policy: word -> token policy of the pole words; ``mean`` (default) keeps every
      WordNet pair, ``single`` only pairs whose words are single tokens (about a third).
    method: direction construction.
    metric: ``cosine`` or ``dot``.
    standardize: PCA of the standardized projections (correlation matrix).
    chunk_rows: vocabulary rows per block (and per zarr chunk).
    baselines: random direction sets to compare with (``BASELINES``).
    norms: human norm tables whose rated words give the rated-words comparison.
    min_coverage: least share of the scales that must have usable poles.
    seed: seed of the random baselines.
    write_zarr: stream the projection matrix to ``out_dir/projections.zarr``.
    whitening_control: also compute the spectra (not the matrix) in the space with
      the opposite whitening setting.
    overwrite: replace a projection matrix in ``out_dir`` made from other inputs
      (one made from the same inputs is resumed, or reused when complete).
    layers: hidden only: ``all`` (``embed`` and every block's output) or a comma-separated
      list of ``embed``, block indices and ``final``.
    context: hidden only: the fixed text each token sits in, with one ``{token}`` slot.
    store_dtype: zarr dtype: ``auto`` (float32 for the embedding spaces, float16 for
      hidden), ``float16``, ``bfloat16`` or ``float32`` (embedding spaces: float32 only).
    hidden_chunk_rows: hidden only: tokens per forward block and per zarr chunk.
    checkpoint_seconds: hidden only: least seconds between two saves of the resumable moments.
    hidden_stats_sample: hidden only: tokens (a uniform sample of the swept ids, seeded by ``seed``)
      whose states centre and whiten each site; 0 (or at least the tokens swept) uses every token.
  """

  scales: str
  space: str
  centre: bool
  whiten: bool
  policy: str
  method: str
  metric: str
  standardize: bool
  chunk_rows: int
  baselines: tuple[str, ...]
  norms: tuple[str, ...]
  min_coverage: float
  seed: int
  write_zarr: bool
  whitening_control: bool
  overwrite: bool
  layers: str
  context: str
  store_dtype: str
  hidden_chunk_rows: int
  checkpoint_seconds: float
  hidden_stats_sample: int

  def provenance(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _spectrum_report(spec: spectrum_k.Spectrum, top: int = 20) -> dict[str, Any]:
  return {
      "n_directions": spec.n_directions,
      "explained_variance_ratio": spec.explained_variance_ratio[:top].tolist(),
      "cumulative_1_2_3": spec.cumulative[:3].tolist(),
      "n_components": {f"{int(round(f * 100))}%": n for f, n in spec.n_components.items()},
      "participation_ratio": spec.participation_ratio,
      "cumulative": spec.cumulative[:200].tolist(),
  }


def token_pair_directions(vectors: jax.Array, n: int, key: jax.Array, eligible: np.ndarray) -> jax.Array:
  """``[n, D]`` differences ``v[a] - v[b]`` of ``n`` random pairs of distinct eligible tokens.

  Pairs with identical vectors (duplicate rows) are redrawn from the remaining tokens.
  """
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  out = []
  while len(out) < n:
    a, b = rng.choice(eligible, size=(2, 2 * (n - len(out))), replace=True)
    keep = a != b
    d = np.asarray(vectors[a[keep]] - vectors[b[keep]])
    d = d[np.linalg.norm(d, axis=1) > 0]
    out.extend(d[:n - len(out)])
  return np.stack(out).astype(np.float32)


def _eligible_tokens(model) -> np.ndarray:
  return spaces_lib.sample_tokens(model, n=model.config.vocab_size, seed=0)


def run_sweep(model, opts: SweepOptions, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Projects the whole vocabulary on every direction and compares spectra.

  Args:
    model: a ``jaxsem.Model``.
    opts: SweepOptions.
    out_dir: where ``projections.zarr`` goes (required with ``opts.write_zarr``).

  Returns:
    JSON-friendly results: ``spectra`` (per direction set), ``zarr``, ``directions``,
    ``space``, timings and throughput.

  Raises:
    InputError: unknown baseline, too few usable scales, a bad chunk size, NaN/inf
      in the vocabulary (and those of ``hidden_sweep.run_hidden_sweep`` for hidden).
  """
  start = time.perf_counter()
  unknown = sorted(set(opts.baselines) - set(BASELINES))
  if unknown:
    raise InputError(f"--baselines: unknown baseline {unknown[0]!r}; use any of {', '.join(BASELINES)}.")
  if opts.space == "hidden":
    return hidden_sweep.run_hidden_sweep(model, opts, out_dir, baselines=tuple(opts.baselines))
  if opts.store_dtype not in ("auto", "float32"):
    raise InputError(f"--store_dtype={opts.store_dtype}: the {opts.space} sweep stores float32 only; use "
                     "--store_dtype=auto or float32 (other dtypes are for --space=hidden).")
  for norm in opts.norms:
    norms.read_norms(norm)  # an unknown table fails before any output is written
  key = jax.random.key(opts.seed)
  space = spaces_lib.make_space(model, opts.space, centre=opts.centre, whiten=opts.whiten)
  scale_set = scales_io.load_scales(opts.scales)
  dirs = scale_directions.build(model, space, list(scale_set), policy=opts.policy, method=opts.method,
                                missing="drop", min_coverage=opts.min_coverage, what=scale_set.name)
  vocab = spaces_lib.vocab_matrix(model, opts.space)
  if space.transform is not None:
    vocab = spaces_lib.apply(space.transform, vocab)
  n_vocab, dim = vocab.shape
  n_dirs = len(dirs.names)
  result: dict[str, Any] = {"n_tokens": int(n_vocab), "n_directions": n_dirs, "metric": opts.metric}

  if opts.write_zarr:
    if out_dir is None:
      raise ValueError("out_dir is required to write the projection matrix")
    result["zarr"] = _write_matrix(model, opts, space, scale_set.name, vocab, dirs, out_dir)

  t0 = time.perf_counter()
  spectra, rated, coverage = _spectra(model, opts, space, vocab, dirs.vectors, key)
  coverage = {"scales": dirs.coverage, "tokens": f"all {n_vocab} vocabulary tokens", **coverage}
  if opts.whitening_control:
    other = spaces_lib.make_space(model, opts.space, centre=opts.centre, whiten=not opts.whiten)
    o_dirs = scale_directions.build(model, other, list(scale_set), policy=opts.policy, method=opts.method,
                                    missing="drop", what=scale_set.name)
    o_vocab = spaces_lib.apply(other.transform, spaces_lib.vocab_matrix(model, opts.space))
    o_spectra, o_rated, _ = _spectra(model, opts, other, o_vocab, o_dirs.vectors, key)
    del o_vocab
    result["control"] = {"whitened" if other.whitened else "unwhitened": {
        "space": other.provenance(), "spectra": o_spectra, "rated_words": o_rated,
        "verdict": verdict(o_spectra)}}
  result["spectra"] = spectra
  result["rated_words"] = rated
  result["spectra_seconds"] = round(time.perf_counter() - t0, 2)
  result["verdict"] = verdict(result["spectra"])
  result["coverage"] = coverage
  result["directions"] = dirs.report()
  result["space"] = space.provenance()
  result["scales_file"] = str(scale_set.source)
  result["pca"] = {"standardized": opts.standardize,
                   "method": "exact, from the [D, D] moments of the vocabulary rows (Cov(P) = U Cov(W) U^T)"}
  result["seconds"] = round(time.perf_counter() - start, 2)
  return result


def fingerprint(model, opts: SweepOptions, space_provenance: dict[str, Any], columns: list[str],
                shape: tuple[int, int]) -> str:
  """Digest of everything that determines the projection matrix's values.

  A resumed sweep must match it: the model file (its sha256) and dtype, the space,
  the directions (names and construction), metric, shape and chunking. The mesh and
  the number of processes are left out, so a sweep can resume on another mesh.
  """
  doc = {"format": 1, "model": model.provenance.get("sha256") or model.provenance.get("path"),
         "dtype": model.provenance.get("dtype"), "space": space_provenance, "columns": columns,
         "shape": list(shape), "options": {k: getattr(opts, k) for k in _MATRIX_OPTIONS}}
  return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _write_matrix(model, opts: SweepOptions, space, what: str, vocab, dirs, out_dir) -> dict[str, Any]:
  """Streams ``vocab @ dirs`` to ``out_dir/projections.zarr``, resuming committed chunks.

  Process 0 owns the array; every process computes every block (a collective) and
  process 0 writes it. A write failure on process 0 stops all processes at that block.
  """
  n_vocab, n_dirs = int(vocab.shape[0]), len(dirs.names)
  chunk = int(opts.chunk_rows)
  path = os.path.join(os.fspath(out_dir), ZARR_NAME)
  attrs = {"rows": "token ids 0..n_tokens-1", "columns": list(dirs.names), "metric": opts.metric,
           "space": space.provenance(), "model": model.provenance.get("name"),
           "sign": "positive pole minus negative pole"}
  key = fingerprint(model, opts, space.provenance(), list(dirs.names), (n_vocab, n_dirs))
  store = row_checkpoint.RowCheckpoint(out_dir, ZARR_NAME.removesuffix(".zarr"), key, n_vocab, n_dirs, chunk,
                                       attributes=attrs, overwrite=opts.overwrite, read_back=False,
                                       overlap_writes=True)
  n_chunks = -(-n_vocab // chunk)
  skip = store.committed
  resumed_rows = store.committed_rows
  progress = Progress(f"sweep {what}", n_vocab, unit="tokens")
  progress.resume(resumed_rows)
  jax.block_until_ready((vocab, dirs.vectors))  # the matrix stage times the matrix, not its inputs
  t0 = time.perf_counter()
  projection.project_chunked(vocab, dirs.vectors, chunk, opts.metric, sink=store.commit, mesh=model.mesh,
                             progress=progress, skip=skip)
  store.finalize()
  seconds = time.perf_counter() - t0
  progress.close()
  computed = n_vocab - resumed_rows
  return {"path": path, "shape": [n_vocab, n_dirs], "chunk_rows": chunk, "dtype": "float32",
          "seconds": round(seconds, 2), "scores_per_second": float(computed * n_dirs / max(seconds, 1e-9)),
          "gigabytes": round(n_vocab * n_dirs * 4 / 1e9, 3), "fingerprint": key,
          "resumed": {"chunks_skipped": len(skip), "chunks_computed": n_chunks - len(skip)}}


def _spectra(model, opts: SweepOptions, space, vocab, antonym, key):
  """(spectra per direction set, spectra over rated words, rated-word coverage) in one space."""
  moments = spectrum_k.row_moments(vocab, opts.metric)
  n_dirs, dim = antonym.shape
  sets: dict[str, Any] = {"antonym": antonym}
  if "gaussian" in opts.baselines:
    sets["gaussian"] = dir_k.random_directions(jax.random.fold_in(key, 1), n_dirs, dim)
  if "token_pairs" in opts.baselines:
    sets["token_pairs"] = token_pair_directions(vocab, n_dirs, jax.random.fold_in(key, 2),
                                                _eligible_tokens(model))
  spectra = {name: _spectrum_report(spectrum_k.projection_spectrum(moments, d, opts.standardize))
             for name, d in sets.items()}
  rated, coverage = {}, {}
  for norm in opts.norms:
    nw = align_lib.norm_words(model, space, norm, policy=opts.policy, min_coverage=0.0)
    coverage[norm] = nw.report
    m = spectrum_k.row_moments(nw.vectors, opts.metric)
    rated[norm] = {"n_words": len(nw.words),
                   **_spectrum_report(spectrum_k.projection_spectrum(m, antonym, opts.standardize))}
  return spectra, rated, coverage


def verdict(spectra: dict[str, Any]) -> dict[str, Any]:
  """Component counts of the antonym directions relative to each random baseline."""
  ant = spectra["antonym"]["n_components"]
  out: dict[str, Any] = {}
  for name, rep in spectra.items():
    if name == "antonym":
      continue
    out[name] = {k: {"antonym": ant[k], name: rep["n_components"][k],
                     "fewer": None if ant[k] is None or rep["n_components"][k] is None
                     else ant[k] < rep["n_components"][k]} for k in ant}
  return out
