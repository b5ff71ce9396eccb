"""Human alignment: do projections on antonym directions track human word ratings?

For every scale x norm column: Pearson and Spearman r over the rated words the
model covers, bootstrap 95% CIs, two nulls (random directions in the same space, and
directions from random WordNet antonym pairs) with the null's 95th percentile of |r|
and an empirical two-sided p, and a supervised ceiling (a cross-validated ridge probe
from the same word vectors to the column), so each direction's r reads as a share of
what is linearly decodable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxsem.analyses import lexicon
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.io import assets
from jaxsem.kernels import directions as dir_k
from jaxsem.kernels import probe as probe_k
from jaxsem.kernels import projection
from jaxsem.kernels import stats


@dataclasses.dataclass(frozen=True)
class NormWords:
  """A human norm table resolved to the model's tokens and embedded in a space.

  Attributes:
    name: norm table ("warriner", "anew", "dal").
    words: the rated words the model covers (under the policy).
    vectors: ``[n, D]`` their vectors in the space.
    columns: column name -> ``[n]`` ratings (NaN where unrated).
    report: coverage report of the word -> token resolution.
  """

  name: str
  words: tuple[str, ...]
  vectors: jax.Array
  columns: dict[str, np.ndarray]
  report: dict[str, Any]


def norm_words(model, space, name: str, *, policy: str = "single", min_coverage: float = 0.5,
               case_variants: bool = False, max_words: int | None = None) -> NormWords:
  """Reads norm table ``name``, resolves its words, embeds the covered ones.

  Raises:
    InputError: unknown table, or coverage below ``min_coverage`` (naming the table).
  """
  words, columns = assets.read_norms(name)
  if max_words is not None:
    words, columns = words[:max_words], {c: v[:max_words] for c, v in columns.items()}
  wt = lexicon.resolve_words(model.tokenizer, words, policy, case_variants=case_variants)
  lexicon.require_coverage(wt, min_coverage, f"{name} norms")
  used = np.asarray(wt.used)
  vectors = spaces_lib.word_vectors(model, wt, space)
  return NormWords(name=name, words=tuple(wt.used_words), vectors=vectors,
                   columns={c: np.asarray(v)[used] for c, v in columns.items()}, report=wt.report())


def random_pair_directions(model, space, pairs: Sequence[Any], n: int, key: jax.Array, *,
                           policy: str = "single") -> scale_directions.Directions:
  """Directions of ``n`` antonym pairs drawn at random (seeded) from ``pairs``.

  Pairs whose poles the model does not cover are skipped; up to ``3 n`` are drawn so
  that about ``n`` remain.
  """
  order = np.asarray(jax.random.permutation(key, len(pairs)))
  draw = [pairs[i] for i in order[:min(len(pairs), 3 * n)]]
  dirs = scale_directions.build(model, space, draw, policy=policy, missing="drop", what="wordnet null")
  keep = min(n, len(dirs.names))
  return dataclasses.replace(dirs, names=dirs.names[:keep], vectors=dirs.vectors[:keep],
                             factors=dirs.factors[:keep], norms=dirs.norms[:keep])


def _ci(x, y, key, stat, n_boot):
  return np.asarray(stats.bootstrap_ci(x, y, key, stat=stat, n_boot=n_boot))


def align(dirs: scale_directions.Directions, norms: Sequence[NormWords], *,
          key: jax.Array, n_boot: int = 1000, n_null: int = 1000,
          null_pairs: scale_directions.Directions | None = None, metric: str = "cosine",
          probe_folds: int = 5) -> dict[str, Any]:
  """Correlates every direction with every norm column.

  Args:
    dirs: directions of the scales under test (in the same space as the norm vectors).
    norms: resolved human norm tables.
    key: PRNG key; bootstrap, null and probe folds derive from it.
    n_boot: bootstrap resamples.
    n_null: random directions in the null.
    null_pairs: optional directions of random WordNet antonym pairs (second null).
    metric: "cosine" or "dot" projection.
    probe_folds: outer folds of the probe's cross-validation.

  Returns:
    ``{"results": [...], "probe": {...}, "nulls": {...}}``; each result has scale,
    norm, column, pearson, pearson_ci, spearman, spearman_ci, n, coverage, null_p95,
    p_value, pairs_null_p95, pairs_p_value, probe_r, share_of_probe.
  """
  d = int(dirs.vectors.shape[1])
  k_null, k_boot, k_probe = jax.random.split(key, 3)
  null_dirs = dir_k.random_directions(k_null, n_null, d)
  results, probes, nulls = [], {}, {}
  for nw in norms:
    scores = np.asarray(projection.project(nw.vectors, dirs.vectors, metric))
    null_scores = np.asarray(projection.project(nw.vectors, null_dirs, metric))
    pair_scores = (np.asarray(projection.project(nw.vectors, null_pairs.vectors, metric))
                   if null_pairs is not None else None)
    x_all = np.asarray(nw.vectors)
    for ci_idx, (column, ratings) in enumerate(sorted(nw.columns.items())):
      ok = np.isfinite(ratings)
      y = ratings[ok].astype(np.float32)
      x = scores[ok]
      kb = jax.random.fold_in(k_boot, ci_idx)
      pear = np.asarray(stats.pearson_columns(x, y))
      spear = np.asarray(stats.spearman_columns(x, y))
      pear_ci = _ci(x, y, kb, "pearson", n_boot)
      spear_ci = _ci(x, y, kb, "spearman", n_boot)
      null_r = np.asarray(stats.null_distribution(null_scores[ok], y))
      rand = stats.null_summary(pear, null_r)
      pairs = None
      if pair_scores is not None:
        pairs_r = np.asarray(stats.null_distribution(pair_scores[ok], y))
        pairs = stats.null_summary(pear, pairs_r)
        nulls[f"{nw.name}:{column}:wordnet_pairs"] = {
            "n": int(pairs_r.size), "p95": float(np.percentile(np.abs(pairs_r), 95)),
            "mean_abs_r": float(np.mean(np.abs(pairs_r)))}
      nulls[f"{nw.name}:{column}:random"] = {
          "n": int(null_r.size), "p95": float(np.percentile(np.abs(null_r), 95)),
          "mean_abs_r": float(np.mean(np.abs(null_r)))}
      pr = probe_k.cv_probe_r(x_all[ok], y, jax.random.fold_in(k_probe, ci_idx), k=probe_folds,
                              solver="closed")
      probe_r = float(pr.r)
      probes[f"{nw.name}:{column}"] = {"r": probe_r, "r_per_fold": np.asarray(pr.r_per_fold).tolist(),
                                        "best_l2": np.asarray(pr.best_l2).tolist(), "n": int(pr.n)}
      for s, name in enumerate(dirs.names):
        results.append({
            "scale": name, "factor": dirs.factors[s], "target": dirs.norms[s],
            "norm": nw.name, "column": column,
            "pearson": float(pear[s]), "pearson_ci": pear_ci[s].tolist(),
            "spearman": float(spear[s]), "spearman_ci": spear_ci[s].tolist(),
            "n": int(ok.sum()), "coverage": nw.report["coverage"],
            "null_p95": float(np.asarray(rand["p95"])), "p_value": float(np.asarray(rand["p_value"])[s]),
            "pairs_null_p95": None if pairs is None else float(np.asarray(pairs["p95"])),
            "pairs_p_value": None if pairs is None else float(np.asarray(pairs["p_value"])[s]),
            "probe_r": probe_r,
            "share_of_probe": float(abs(pear[s]) / probe_r) if probe_r > 0 else None,
        })
  return {"results": results, "probe": probes, "nulls": nulls}
