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
* the nulls that match the claims (``pair_null``, ``epa_null``) and a ``conclusion``
  drawn from them (see ``conclusion`` for the rule).

Why these nulls: any set of antonym directions in an embedding shares variance (their
pole words are frequent, short, evaluative...), so "three components keep half the
variance" says little unless random antonym pairs keep less. The pair null draws sets of
the same size from the WordNet pairs the word policy covers, projects the same rated words
and runs the same standardised PCA. Likewise a weak E/P/A match is only evidence if it
beats tags shuffled over the same scales, and a general factor with uniform loadings
already matches a large tag group (congruence ``sqrt(n_f / S)``), so both are reported.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxsem.errors import InputError
from jaxsem.kernels import directions as dir_k
from jaxsem.kernels import projection
from jaxsem.kernels import subspace

FACTORS = ("E", "P", "A")
# The varimax of every structure result; recorded in ``settings`` (Kaiser normalisation:
# rows scaled to unit communality before the rotation and scaled back after it).
VARIMAX = {"gamma": 1.0, "max_iter": 500, "tol": 1e-6, "normalize": True}
SPECIFIC_P = 0.05  # a null p below this reads "specific" in the conclusion


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
  rotated, _ = subspace.varimax(loadings, **VARIMAX) if k > 1 else (loadings, None)
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


def hypothesis_matrix(factors) -> np.ndarray:
  """``[S, 3]`` indicator of the hypothesised E/P/A factor of each scale (0 if untagged)."""
  return np.array([[1.0 if f == name else 0.0 for name in FACTORS] for f in factors], np.float32)


def epa_congruence(varimax_loadings: np.ndarray, factors) -> dict[str, Any] | None:
  """Tucker congruence of the varimax factors with the E/P/A tags, best matched."""
  target = hypothesis_matrix(factors)
  present = target.sum(axis=0) > 0
  if present.sum() < 2 or varimax_loadings.shape[1] < 2:
    return None
  target = target[:, present]
  names = [f for f, p in zip(FACTORS, present) if p]
  cong = np.asarray(subspace.tucker_congruence_matrix(varimax_loadings, target))  # [k, F]
  cols, signs, values = subspace.match_components(cong.T)
  return {"factors": names, "matrix": cong.tolist(),
          "matched": {name: {"component": int(c), "sign": int(s), "congruence": float(v)}
                      for name, c, s, v in zip(names, cols, signs, values)}}


def exclude_scale_pairs(pool, dirs) -> tuple[Any, list[str]]:
  """Drops from ``pool`` every pair that is a pair of the scales under test.

  A pool pair is the same pair as a scale when one of its positive words and one of its
  negative words are a positive and a negative word of that scale, in either orientation
  (``bad-good`` is ``good-bad``). Pole words are those the directions used (``poles``);
  directions built without pole records exclude nothing.

  Args:
    pool: ``scale_directions.Directions`` of the candidate null pairs.
    dirs: ``scale_directions.Directions`` of the scales under test.

  Returns:
    ``(pool without those pairs, names of the pairs removed)``.
  """
  def pairs(d, name):
    info = d.poles.get(name, {})
    pos, neg = info.get("positive", ()), info.get("negative", ())
    return {frozenset((p.lower(), n.lower())) for p in pos for n in neg}

  taken = set().union(set(), *(pairs(dirs, n) for n in dirs.names))
  keep = [i for i, n in enumerate(pool.names) if not pairs(pool, n) & taken]
  removed = [n for n in pool.names if pairs(pool, n) & taken]
  if not removed:
    return pool, []
  names = tuple(pool.names[i] for i in keep)
  kept = dataclasses.replace(
      pool, names=names, vectors=pool.vectors[np.asarray(keep, np.int64)],
      factors=tuple(pool.factors[i] for i in keep), norms=tuple(pool.norms[i] for i in keep),
      poles={n: pool.poles[n] for n in names if n in pool.poles},
      dropped={**pool.dropped, **{n: "a pair of the scales under test" for n in removed}})
  return kept, removed


def pair_null_cumulative(pool_scores: np.ndarray, n_pairs: int, n_sets: int, seed: int,
                         k: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Standardised-PCA cumulative variance of random column sets of the pool.

  Each set takes ``n_pairs`` distinct columns; its explained-variance ratios are the
  eigenvalues of their ``[n_pairs, n_pairs]`` correlation matrix over the trace, exactly
  the PCA of the standardised words x scales matrix.

  Args:
    pool_scores: ``[N, P]`` projections of the rated words on every pool direction.
    n_pairs: columns per set (the size of the scale set under test).
    n_sets: random sets.
    seed: seed of the numpy generator that draws the sets.
    k: leading components kept.

  Returns:
    ``(sets [n_sets, n_pairs] column indices, cumulative [n_sets, k])``.

  Raises:
    InputError: when the pool has fewer than ``n_pairs`` usable columns.
  """
  x = np.asarray(pool_scores, np.float32)
  n = x.shape[0]
  sd = x.std(axis=0, ddof=1)
  usable = np.flatnonzero(sd > 0)  # a constant column cannot be standardised
  if usable.size < n_pairs:
    raise InputError(f"The pair null needs at least {n_pairs} covered WordNet pairs but only {usable.size} "
                     "are usable; use --policy=mean or turn the pair null off (n_pair_sets=0).")
  z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
  rng = np.random.default_rng(seed)
  sets = np.stack([usable[rng.choice(usable.size, n_pairs, replace=False)] for _ in range(n_sets)])
  cumulative = np.empty((n_sets, k))
  for i, idx in enumerate(sets):
    zs = z[:, idx].astype(np.float64)
    eig = np.linalg.eigvalsh(zs.T @ zs / (n - 1))[::-1]
    cumulative[i] = np.cumsum(eig)[:k] / eig.sum()
  return sets, cumulative


def _p_value(null: np.ndarray, observed: float) -> tuple[float, bool]:
  """``(1 + #{null >= observed}) / (1 + n)`` and whether it sits at its floor ``1 / (1 + n)``."""
  hits = int(np.sum(null >= observed))
  return (1 + hits) / (1 + null.size), hits == 0


def pair_null(pool_scores: np.ndarray, observed_cumulative: Sequence[float], n_pairs: int, *,
              n_sets: int = 200, seed: int = 0, k: int = 3) -> dict[str, Any]:
  """Where the scales' ``k``-component cumulative variance falls among random pair sets.

  Args:
    pool_scores: ``[N, P]`` projections of the same rated words on the pool directions.
    observed_cumulative: ``[>= k]`` cumulative explained variance of the scales.
    n_pairs: pairs per random set (the number of scales, S).
    n_sets: random sets.
    seed: generator seed of the sets.
    k: components summarised (3 for E/P/A).

  Returns:
    ``{"n_sets", "n_pairs_per_set", "pool_size" (non-constant pool columns),
    "cumulative_mean", "cumulative_p95",
    "cumulative_p05" ([k] each), "observed", "percentile" (share of null sets below the
    observed k-component cumulative, ties half, 0-100), "p_value" ((1 + #{null >=
    observed}) / (1 + n_sets)), "p_at_floor", "seed"}``.
  """
  k = min(k, n_pairs)
  _, cum = pair_null_cumulative(pool_scores, n_pairs, n_sets, seed, k)
  obs = float(observed_cumulative[k - 1])
  null = cum[:, k - 1]
  p, floor = _p_value(null, obs)
  return {
      "n_sets": int(n_sets), "n_pairs_per_set": int(n_pairs),
      "pool_size": int(np.sum(np.std(np.asarray(pool_scores), axis=0) > 0)),  # the usable columns
      "cumulative_mean": cum.mean(axis=0).tolist(),
      "cumulative_p95": np.percentile(cum, 95, axis=0).tolist(),
      "cumulative_p05": np.percentile(cum, 5, axis=0).tolist(),
      "observed": obs,
      "percentile": float(100.0 * (np.sum(null < obs) + 0.5 * np.sum(null == obs)) / n_sets),
      "p_value": p, "p_at_floor": floor, "seed": int(seed),
  }


def _tag_target(factors) -> tuple[np.ndarray, list[str]]:
  target = hypothesis_matrix(factors)
  present = target.sum(axis=0) > 0
  return target[:, present], [f for f, p in zip(FACTORS, present) if p]


def matched_congruence(loadings: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Mean ``|congruence|`` of best-matched factors and tags, for a batch of tag matrices.

  The matching is the one of ``epa_congruence``: distinct factors and tags paired to
  maximise the summed ``|congruence|`` (exhaustive over the pairings).

  Args:
    loadings: ``[S, k]`` (varimax) loadings.
    targets: ``[B, S, F]`` tag indicator matrices, no all-zero column.

  Returns:
    ``[B]`` mean over the ``min(k, F)`` matched pairs.
  """
  lo = np.asarray(loadings, np.float64)
  lo = lo / np.linalg.norm(lo, axis=0)
  t = np.asarray(targets, np.float64)
  t = t / np.linalg.norm(t, axis=1, keepdims=True)
  mag = np.abs(np.einsum("sk,bsf->bfk", lo, t))  # [B, F, k]
  f, k = mag.shape[1:]
  if f > k:
    mag, f, k = np.swapaxes(mag, 1, 2), k, f
  best = np.max(np.stack([mag[:, np.arange(f), list(cols)].sum(axis=1)
                          for cols in itertools.permutations(range(k), f)]), axis=0)
  return best / f


def epa_null(varimax_loadings: np.ndarray, factors, *, n_perms: int = 1000,
             seed: int = 0) -> dict[str, Any] | None:
  """The E/P/A match against tags shuffled over the scales and a uniform general factor.

  Args:
    varimax_loadings: ``[S, k]`` varimax loadings of the scales.
    factors: ``[S]`` tag per scale ("E"/"P"/"A" or None).
    n_perms: tag permutations in the null (the loadings stay fixed).
    seed: generator seed of the permutations.

  Returns:
    None where fewer than two tags or factors exist (as ``epa_congruence``); else
    ``{"factors", "observed" (mean matched |congruence|), "n_perms", "null_mean",
    "null_p95", "p_value", "p_at_floor", "seed", "uniform_baseline": {"per_factor":
    {tag: congruence of a single uniform-loading factor with the tag, n_f / sqrt(S n_f)},
    "mean"}}``.
  """
  lo = np.asarray(varimax_loadings, np.float64)
  target, names = _tag_target(factors)
  if len(names) < 2 or lo.shape[1] < 2:
    return None
  observed = float(matched_congruence(lo, target[None])[0])
  rng = np.random.default_rng(seed)
  perms = np.stack([rng.permutation(target.shape[0]) for _ in range(n_perms)])
  null = matched_congruence(lo, target[perms])
  p, floor = _p_value(null, observed)
  uniform = np.asarray(subspace.tucker_congruence_matrix(np.ones((target.shape[0], 1)), target))[0]
  return {
      "factors": names, "observed": observed, "n_perms": int(n_perms),
      "null_mean": float(null.mean()), "null_p95": float(np.percentile(null, 95)),
      "p_value": p, "p_at_floor": floor, "seed": int(seed),
      "uniform_baseline": {"per_factor": {n: float(v) for n, v in zip(names, uniform)},
                           "mean": float(uniform.mean())},
  }


def _p_text(p: float, at_floor: bool) -> str:
  if not at_floor:
    return f"p={p:.2g}"
  step = 10.0 ** (math.floor(math.log10(p)) - 1)  # two significant digits, rounded up: still a bound
  return f"p ≤ {math.ceil(p / step - 1e-9) * step:.2g}"


def _ordinal(x: float) -> str:
  n = int(round(x))
  suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
  return f"{n}{suffix}"


def conclusion(pair: dict[str, Any] | None, epa: dict[str, Any] | None, scale_set: str) -> str:
  """The claims the nulls support, in plain words.

  Rule: the scales' k-component variance share is called "specific to" the scale set iff
  the pair null's ``p_value < 0.05`` (``SPECIFIC_P``), else "not specific"; the varimax
  factors "match the E/P/A tags better than shuffled tags" iff the shuffled-tag
  ``p_value < 0.05``, else "no better than"; where the uniform general factor's mean
  congruence reaches the observed one, the text says so ("at least the varimax
  factors'"). P-values at their floor are written ``p ≤ 1/(1 + n)``.

  Args:
    pair: ``pair_null`` result or None.
    epa: ``epa_null`` result or None.
    scale_set: name of the scale set, e.g. ``"osgood28"``.
  """
  parts = []
  if pair is not None:
    k = len(pair["cumulative_mean"])
    specific = pair["p_value"] < SPECIFIC_P
    parts.append(
        f"{k} components keep {pair['observed']:.0%} of the variance; random sets of "
        f"{pair['n_pairs_per_set']} WordNet pairs keep {pair['cumulative_mean'][-1]:.0%} on average "
        f"(95th percentile {pair['cumulative_p95'][-1]:.0%}): {scale_set} is at the "
        f"{_ordinal(pair['percentile'])} percentile, so this share is {'' if specific else 'not '}specific "
        f"to {scale_set} ({_p_text(pair['p_value'], pair['p_at_floor'])}).")
  if epa is not None:
    better = epa["p_value"] < SPECIFIC_P
    uni = epa["uniform_baseline"]
    top = max(uni["per_factor"], key=uni["per_factor"].get)
    tags = "/".join(epa["factors"])
    text = (f"{tags} tags: mean matched congruence {epa['observed']:.2f} vs shuffled tags "
            f"{epa['null_mean']:.2f} (95th percentile {epa['null_p95']:.2f}, "
            f"{_p_text(epa['p_value'], epa['p_at_floor'])}), so the varimax factors match the tags "
            f"{'better' if better else 'no better'} than shuffled tags; a single uniform factor scores "
            f"{uni['per_factor'][top]:.2f} with {top} (mean {uni['mean']:.2f}")
    text += (f", at least the varimax factors' {epa['observed']:.2f})." if uni["mean"] >= epa["observed"]
             else ").")
    parts.append(text)
  return " ".join(parts) if parts else "No null was computed, so no conclusion is drawn."


def settings(k: int, pair: dict[str, Any] | None, epa: dict[str, Any] | None, pool=None,
             excluded: Sequence[str] = ()) -> dict[str, Any]:
  """The PCA, varimax and null settings behind a structure result (for its provenance)."""
  out: dict[str, Any] = {
      "pca": {"standardised": True, "k": k, "method": "svd"},
      "varimax": {"gamma": VARIMAX["gamma"], "normalisation": "kaiser" if VARIMAX["normalize"] else "none",
                  "max_iter": VARIMAX["max_iter"], "tol": VARIMAX["tol"],
                  "tol_on": "largest change of a rotation entry"},
      "pair_null": None,
      "epa_null": None if epa is None else {
          "n_perms": epa["n_perms"], "seed": epa["seed"],
          "statistic": "mean |Tucker congruence| of matched factors and tags"},
  }
  if pair is not None:
    out["pair_null"] = {
        "pool": "wordnet", "coverage": "pairs whose poles the word policy covers",
        "method": getattr(pool, "method", None), "policy": getattr(pool, "policy", None),
        "n_sets": pair["n_sets"], "n_pairs_per_set": pair["n_pairs_per_set"], "pool_size": pair["pool_size"],
        "excluded_scale_pairs": list(excluded), "pca": "standardised, as the scales", "seed": pair["seed"]}
  return out


def structure(dirs, norm_words, *, key: jax.Array, pair_dirs=None, metric: str = "cosine",
              k: int = 3, human_columns=("valence", "arousal", "dominance"), pair_pool=None,
              n_pair_sets: int = 200, n_tag_perms: int = 1000, seed: int = 0,
              scale_set: str = "the scale set") -> dict[str, Any]:
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
      test are removed (``exclude_scale_pairs``) and ``pair_null`` draws from the rest.
    n_pair_sets: random pair sets in ``pair_null`` (0 = no pair null).
    n_tag_perms: tag permutations in ``epa_null`` (0 = no E/P/A null).
    seed: seed of the pair sets and tag permutations.
    scale_set: name of the scale set, for the conclusion.

  Returns:
    JSON-friendly dict with ``cosine``, ``correlation``, ``pca``, ``random_pca``,
    ``human_pca``, ``pair_null`` (see ``pair_null``, plus ``pool`` and
    ``excluded_scale_pairs``; None without a pool), ``epa_null`` (see ``epa_null``),
    ``conclusion`` (see ``conclusion``) and ``settings`` (see ``settings``).
  """
  s = len(dirs.names)
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
    pool, excluded = exclude_scale_pairs(pair_pool, dirs)
    pool_scores = np.asarray(projection.project(norm_words.vectors, pool.vectors, metric))
    pair = pair_null(pool_scores, pca["cumulative"], s, n_sets=n_pair_sets, seed=seed, k=k)
    pair.update(pool="wordnet", excluded_scale_pairs=excluded)
  epa = (epa_null(np.asarray(pca["varimax_loadings"]), dirs.factors, n_perms=n_tag_perms, seed=seed)
         if n_tag_perms > 0 else None)
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
      "conclusion": conclusion(pair, epa, scale_set),
      "settings": settings(k, pair, epa, pair_pool, excluded),
  }
