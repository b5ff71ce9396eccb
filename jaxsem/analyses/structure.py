"""Structure: how many dimensions do the scales span, and do they look like E/P/A?

Given directions for a set of scales and the rated words of a norm table:

* cosine matrix of the directions, beside two baselines: random isotropic directions
  and directions of random WordNet antonym pairs in the same space;
* scale x scale correlation matrix of the words' projections;
* PCA of the standardized words x scales projection matrix: explained variance per
  component and cumulative, loadings, varimax loadings of the first ``k``, each
  component's correlation with the human columns (valence, arousal, dominance),
  Tucker congruence of the varimax factors with the hypothesised E/P/A tags, the
  participation ratio, and the components needed for 50/80/90% of the variance;
* the same PCA for words projected on random directions (a scree baseline) and for
  the human ratings themselves where several columns are rated;
* the nulls that match the claims (random WordNet-pair sets, shuffled E/P/A tags) and
  the conclusion drawn from them: ``structure_nulls`` explains why these nulls and
  states the rule of the conclusion.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxsem.analyses import structure_nulls
from jaxsem.kernels import directions as dir_k
from jaxsem.kernels import projection
from jaxsem.kernels import subspace
from jaxsem.progress import Progress


def _offdiag_abs_mean(m: np.ndarray) -> float:
  n = m.shape[0]
  if n < 2:
    return float("nan")
  return float(np.abs(m[~np.eye(n, dtype=bool)]).mean())


def _pca_summary(x: np.ndarray, k: int) -> dict[str, Any]:
  res = subspace.pca(x, standardize=True)
  k = min(k, res.loadings.shape[1])
  evr = np.asarray(res.explained_variance_ratio)
  cumulative = np.asarray(res.cumulative)
  loadings = np.asarray(res.loadings)[:, :k]
  rotated, _ = subspace.varimax(loadings, **structure_nulls.VARIMAX) if k > 1 else (loadings, None)
  return {
      "explained_variance_ratio": evr.tolist(),
      "cumulative": cumulative.tolist(),
      "cumulative_1_2_3": cumulative[:3].tolist(),
      "loadings": loadings.tolist(),
      "varimax_loadings": np.asarray(rotated).tolist(),
      "participation_ratio": float(subspace.participation_ratio(res.eigenvalues)),
      "n_components_for": {str(f): n for f, n in subspace.n_components_for(cumulative).items()},
      "_scores": np.asarray(res.scores)[:, :k],
  }


def epa_congruence(varimax_loadings: np.ndarray, factors) -> dict[str, Any] | None:
  """Tucker congruence of the varimax factors with the E/P/A tags, best matched."""
  target = structure_nulls.hypothesis_matrix(factors)
  present = target.sum(axis=0) > 0
  if present.sum() < 2 or varimax_loadings.shape[1] < 2:
    return None
  target = target[:, present]
  names = [f for f, p in zip(structure_nulls.FACTORS, present) if p]
  cong = np.asarray(subspace.tucker_congruence_matrix(varimax_loadings, target))  # [k, F]
  cols, signs, values = subspace.match_components(cong.T)
  return {"factors": names, "matrix": cong.tolist(),
          "matched": {name: {"component": int(c), "sign": int(s), "congruence": float(v)}
                      for name, c, s, v in zip(names, cols, signs, values)}}


def structure(dirs, norm_words, *, key: jax.Array, n_pair_sets: int, n_tag_perms: int, seed: int,
              pair_dirs=None, metric: str = "cosine", k: int = 3,
              human_columns=("valence", "arousal", "dominance"), pair_pool=None,
              scale_set: str = "the scale set", progress: bool = False,
              what: str = "structure") -> dict[str, Any]:
  """Runs the structure analysis (see module docstring).

  Args:
    dirs: ``scale_directions.Directions`` of the scales.
    norm_words: ``align.NormWords``: the rated words (their vectors in the same space)
      and human columns.
    key: PRNG key for the random-direction baselines.
    pair_dirs: optional directions of random WordNet antonym pairs (cosine baseline).
    metric: projection metric.
    k: components kept for loadings/varimax (3 for E/P/A).
    human_columns: norm columns the components are compared with.
    pair_pool: optional directions of every covered WordNet pair (built with
      ``missing="drop"`` in the same space and policy); the pairs of the scales under
      test are removed (``structure_nulls.exclude_scale_pairs``) and
      ``structure_nulls.pair_null`` draws from the rest.
    n_pair_sets: random pair sets in ``pair_null`` (0 = no pair null).
    n_tag_perms: tag permutations in ``epa_null`` (0 = no E/P/A null).
    seed: seed of the pair sets and tag permutations.
    scale_set: name of the scale set, for the conclusion.
    progress: print progress lines (rate, ETA) of the pair null and the E/P/A null;
      the results do not depend on it.
    what: the start of those lines.

  Returns:
    JSON-friendly dict with ``cosine``, ``correlation``, ``pca``, ``random_pca``,
    ``human_pca``, ``pair_null`` (see ``structure_nulls.pair_null``, plus ``pool`` and
    ``excluded_scale_pairs``; None without a pool), ``epa_null`` (see
    ``structure_nulls.epa_null``), ``conclusion`` (see ``structure_nulls.conclusion``) and
    ``settings`` (see ``structure_nulls.settings``).
  """
  s = len(dirs.names)
  # Announced before the PCA baselines so that the stage is never silent for long.
  pair_bar = (Progress.maybe(progress, f"{what} pair null", n_pair_sets, unit="sets")
              if pair_pool is not None and n_pair_sets > 0 else None)
  if pair_bar is not None:
    pair_bar.update(0)
  k_dirs, k_rand = jax.random.split(key)
  cos = np.asarray(dir_k.direction_cosines(dirs.vectors))
  rand_dirs = dir_k.random_directions(k_dirs, s, int(dirs.vectors.shape[1]))
  rand_cos = np.asarray(dir_k.direction_cosines(rand_dirs))
  baseline = {"random_directions_mean_abs": _offdiag_abs_mean(rand_cos)}
  if pair_dirs is not None and len(pair_dirs.names) > 1:
    pair_cos = np.asarray(dir_k.direction_cosines(pair_dirs.vectors))
    baseline["wordnet_pairs_mean_abs"] = _offdiag_abs_mean(pair_cos)
  scores = np.asarray(projection.project(norm_words.vectors, dirs.vectors, metric))
  corr = np.corrcoef(scores.T)
  pca = _pca_summary(scores, k)
  comp_scores = pca.pop("_scores")
  vs_norms = {}
  for col in human_columns:
    if col not in norm_words.columns:
      continue
    y = norm_words.columns[col]
    ok = np.isfinite(y)
    vs_norms[col] = [float(np.corrcoef(comp_scores[ok, j], y[ok])[0, 1]) for j in range(comp_scores.shape[1])]
  pca["component_vs_norms"] = vs_norms
  pca["epa_congruence"] = epa_congruence(np.asarray(pca["varimax_loadings"]), dirs.factors)
  rand_scores = np.asarray(projection.project(norm_words.vectors, dir_k.random_directions(k_rand, s, int(
      dirs.vectors.shape[1])), metric))
  random_pca = _pca_summary(rand_scores, k)
  random_pca.pop("_scores")
  human = None
  cols = [c for c in human_columns if c in norm_words.columns]
  if len(cols) >= 2:
    table = np.stack([norm_words.columns[c] for c in cols], axis=1)
    table = table[np.isfinite(table).all(axis=1)]
    human = _pca_summary(table, min(k, len(cols)))
    human.pop("_scores")
    human["columns"] = cols
    human["n_words"] = int(table.shape[0])
  pair, excluded = None, []
  if pair_pool is not None and n_pair_sets > 0:
    pool, excluded = structure_nulls.exclude_scale_pairs(pair_pool, dirs)
    pool_scores = np.asarray(projection.project(norm_words.vectors, pool.vectors, metric))
    pair = structure_nulls.pair_null(pool_scores, pca["cumulative"], s, n_sets=n_pair_sets, seed=seed, k=k,
                                     progress=pair_bar)
    pair.update(pool="wordnet", excluded_scale_pairs=excluded)
    pair_bar.close()
  epa = None
  if n_tag_perms > 0:
    bar = Progress.maybe(progress, f"{what} E/P/A null", n_tag_perms, unit="permutations")
    epa = structure_nulls.epa_null(np.asarray(pca["varimax_loadings"]), dirs.factors, n_perms=n_tag_perms,
                                   seed=seed, progress=bar)
    if epa is not None:  # None: too few tags, nothing was drawn
      bar.close()
  return {
      "scales": list(dirs.names),
      "factors": list(dirs.factors),
      "n_words": int(scores.shape[0]),
      "cosine": {"matrix": cos.tolist(), "mean_abs_offdiag": _offdiag_abs_mean(cos), "baseline": baseline},
      "correlation": {"matrix": corr.tolist(), "mean_abs_offdiag": _offdiag_abs_mean(corr)},
      "pca": pca,
      "random_pca": {key_: random_pca[key_] for key_ in ("explained_variance_ratio", "cumulative",
                                                         "participation_ratio", "n_components_for")},
      "human_pca": human,
      "pair_null": pair,
      "epa_null": epa,
      "conclusion": structure_nulls.conclusion(pair, epa, scale_set),
      "settings": structure_nulls.settings(k, pair, epa, pair_pool, excluded),
  }
