"""End-to-end alignment and structure runs: options in, JSON-friendly results out.

Launchers call ``run_align`` / ``run_structure`` with their flags packed in
``Options``; the results carry everything ``jaxsem.report`` needs to write
summary.json (with provenance) and the figures.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from jaxsem import experiment_config
from jaxsem.analyses import align as align_lib
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.analyses import structure as structure_lib
from jaxsem.io import scales as scales_io


@dataclasses.dataclass(frozen=True)
@experiment_config.config_defaults("analysis")
class Options:
  """What to measure and how (the analysis flags).

  Attributes:
    scales: scale set name or file (``osgood28``, ``norms``, ``wordnet`` or a path).
    norms: human norm tables to compare with (``warriner``, ``anew``, ``dal``).
    space: ``input_embedding``, ``unembedding`` or ``hidden``.
    layer: block index for ``hidden`` (-1 = after the final norm).
    centre: subtract the vocabulary mean.
    whiten: whiten with the vocabulary covariance (the causal inner product control).
    policy: word -> token policy (``single``, ``mean``, ``first``).
    method: direction construction (``pole_mean``, ``pair_mean``, ``semaxis``).
    metric: projection metric (``cosine`` or ``dot``).
    min_coverage: least share of a norm table's words the policy must cover.
    seed: PRNG seed for bootstraps, nulls, probe folds and random baselines.
    n_boot: bootstrap resamples.
    n_null: random directions in the null.
    n_null_pairs: random WordNet antonym pairs in the second null (0 = skip).
    n_pair_sets: structure only: random sets of as many covered WordNet pairs as there
      are scales in the pair null (0 = skip).
    n_tag_perms: structure only: E/P/A tag permutations in the shuffled-tag null (0 = skip).
    template: hidden-space template with one ``{word}`` slot.
  """

  scales: str
  norms: tuple[str, ...]
  space: str
  layer: int | None
  centre: bool
  whiten: bool
  policy: str
  method: str
  metric: str
  min_coverage: float
  seed: int
  n_boot: int
  n_null: int
  n_null_pairs: int
  n_pair_sets: int
  n_tag_perms: int
  template: str

  def provenance(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _space(model, opts: Options, whiten: bool | None = None, progress: bool = False):
  return spaces_lib.make_space(model, opts.space, layer=opts.layer, centre=opts.centre,
                               whiten=opts.whiten if whiten is None else whiten,
                               template=opts.template, seed=opts.seed, progress=progress)


def _pairs(model, space, opts: Options, key):
  if opts.n_null_pairs <= 0:
    return None
  wordnet = scales_io.load_scales("wordnet")
  return align_lib.random_pair_directions(model, space, list(wordnet), opts.n_null_pairs, key,
                                          policy=opts.policy)


def _pair_pool(model, space, opts: Options):
  """Directions of every WordNet pair whose poles the policy covers (the structure pair null's pool).

  Built as the scales are, except that semaxis (a vocabulary search per pole, thousands of
  poles) falls back to pole_mean; ``settings.pair_null.method`` records which was used.
  """
  method = "pole_mean" if opts.method == "semaxis" else opts.method
  return scale_directions.build(model, space, list(scales_io.load_scales("wordnet")), policy=opts.policy,
                                method=method, missing="drop", what="wordnet pair null")


def _take(dirs: scale_directions.Directions, n: int, key) -> scale_directions.Directions:
  """``n`` of ``dirs`` drawn at random (seeded), in the drawn order."""
  idx = [int(i) for i in np.asarray(jax.random.permutation(key, len(dirs.names)))[:n]]
  names = tuple(dirs.names[i] for i in idx)
  return dataclasses.replace(dirs, names=names, vectors=dirs.vectors[np.asarray(idx, np.int64)],
                             factors=tuple(dirs.factors[i] for i in idx),
                             norms=tuple(dirs.norms[i] for i in idx),
                             poles={n_: dirs.poles[n_] for n_ in names if n_ in dirs.poles})


def _inputs(model, opts: Options, space, progress: bool = False):
  scale_set = scales_io.load_scales(opts.scales)
  missing = "drop" if len(scale_set) > 200 else "error"
  dirs = scale_directions.build(model, space, list(scale_set), policy=opts.policy, method=opts.method,
                                missing=missing, what=scale_set.name)
  norms = [align_lib.norm_words(model, space, n, policy=opts.policy, min_coverage=opts.min_coverage,
                                progress=progress) for n in opts.norms]
  return scale_set, dirs, norms


def run_align(model, opts: Options, progress: bool = True) -> dict[str, Any]:
  """Human alignment of every scale with every norm column (see ``analyses.align``); ``progress``
  prints the nulls', the probe's and the bootstrap's progress lines (on process 0)."""
  start = time.perf_counter()
  key = jax.random.key(opts.seed)
  space = _space(model, opts, progress=progress)
  scale_set, dirs, norms = _inputs(model, opts, space, progress)
  pairs = _pairs(model, space, opts, jax.random.fold_in(key, 1))
  out = align_lib.align(dirs, norms, key=jax.random.fold_in(key, 2), n_boot=opts.n_boot,
                        n_null=opts.n_null, null_pairs=pairs, metric=opts.metric, progress=progress)
  out["directions"] = dirs.report()
  out["coverage"] = {nw.name: nw.report for nw in norms}
  out["space"] = space.provenance()
  out["scales_file"] = str(scale_set.source)
  out["seconds"] = round(time.perf_counter() - start, 2)
  return out


def run_structure(model, opts: Options, whitening_control: bool = True,
                  progress: bool = True) -> dict[str, Any]:
  """Structure of the scales in the chosen space and, as a control, whitened (``progress``: print
  the nulls' progress lines on process 0).

  Each run draws its pair null from the WordNet pairs covered in its own space (the
  control's ``pair_null``, ``epa_null`` and ``conclusion`` sit in ``control``).
  """
  start = time.perf_counter()
  key = jax.random.key(opts.seed)
  variants = [opts.whiten] + ([not opts.whiten] if whitening_control else [])
  runs = {}
  scale_set = None
  for whiten in variants:
    space = _space(model, opts, whiten, progress)
    scale_set, dirs, norms = _inputs(model, opts, space, progress)
    pool = _pair_pool(model, space, opts) if opts.n_pair_sets > 0 else None
    if pool is None:
      pairs = _pairs(model, space, opts, jax.random.fold_in(key, 1))
    else:  # the cosine baseline's random pairs come from the same covered pool
      pairs = _take(pool, opts.n_null_pairs, jax.random.fold_in(key, 1)) if opts.n_null_pairs > 0 else None
    res = structure_lib.structure(dirs, norms[0], key=jax.random.fold_in(key, 3), pair_dirs=pairs,
                                  metric=opts.metric, pair_pool=pool, n_pair_sets=opts.n_pair_sets,
                                  n_tag_perms=opts.n_tag_perms, seed=opts.seed, scale_set=scale_set.name,
                                  progress=progress, what="structure whitened" if whiten else "structure")
    res["directions"] = dirs.report()
    res["coverage"] = {nw.name: nw.report for nw in norms}
    res["space"] = space.provenance()
    runs["whitened" if whiten else "unwhitened"] = res
  primary = "whitened" if opts.whiten else "unwhitened"
  out = dict(runs[primary])
  out["control"] = {k: {"pca": {f: v["pca"][f] for f in ("explained_variance_ratio", "cumulative_1_2_3",
                                                           "participation_ratio", "component_vs_norms",
                                                           "epa_congruence", "varimax_loadings")},
                        "cosine_mean_abs_offdiag": v["cosine"]["mean_abs_offdiag"], "space": v["space"],
                        "pair_null": v["pair_null"], "epa_null": v["epa_null"], "conclusion": v["conclusion"]}
                    for k, v in runs.items() if k != primary}
  out["scales_file"] = str(scale_set.source)
  out["seconds"] = round(time.perf_counter() - start, 2)
  return out
