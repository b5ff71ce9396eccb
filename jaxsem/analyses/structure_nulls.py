"""Nulls for the structure analysis, and the conclusion they support in plain words.

A structure result states two claims; each is only evidence beside a null that matches it:

* "k components keep this share of the variance": any set of antonym directions in an
  embedding shares variance (their pole words are frequent, short, evaluative...), so the
  share says little unless random antonym pairs keep less. ``pair_null`` draws sets of the
  same size from the WordNet pairs the word policy covers (less the pairs of the scales
  under test, ``exclude_scale_pairs``), projects the same rated words and runs the same
  standardised PCA (``pair_null_cumulative``).
* "the varimax factors look like E/P/A": a weak match is only evidence if it beats tags
  shuffled over the same scales (``epa_null``, statistic ``matched_congruence``), and a
  general factor with uniform loadings already matches a large tag group (congruence
  ``sqrt(n_f / S)``), so both are reported.

``conclusion`` words what the nulls allow (see it for the rule) and ``settings`` records
the PCA, varimax and null choices behind a result. The E/P/A tags (``FACTORS``,
``hypothesis_matrix``) and the varimax settings (``VARIMAX``) live here, below
``structure``, which imports them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxsem.errors import InputError
from jaxsem.io.scales import FACTORS
from jaxsem.kernels import subspace
from jaxsem.progress import Callback
from jaxsem.progress import chunks

# The varimax of every structure result; recorded in ``settings`` (Kaiser normalisation:
# rows scaled to unit communality before the rotation and scaled back after it).
VARIMAX = {"gamma": 1.0, "max_iter": 500, "tol": 1e-6, "normalize": True}
SPECIFIC_P = 0.05  # a null p below this reads "specific" in the conclusion
PERM_CHUNK = 200  # tag permutations scored per progress report


def hypothesis_matrix(factors) -> np.ndarray:
  """``[S, 3]`` indicator of the hypothesised E/P/A factor of each scale (0 if untagged)."""
  return np.array([[1.0 if f == name else 0.0 for name in FACTORS] for f in factors], np.float32)


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
                         k: int = 3, progress: Callback | None = None) -> tuple[np.ndarray, np.ndarray]:
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
    progress: ``progress(sets_done, n_sets)`` after each set.

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
    if progress is not None:
      progress(i + 1, n_sets)
  return sets, cumulative


def _p_value(null: np.ndarray, observed: float) -> tuple[float, bool]:
  """``(1 + #{null >= observed}) / (1 + n)`` and whether it sits at its floor ``1 / (1 + n)``."""
  hits = int(np.sum(null >= observed))
  return (1 + hits) / (1 + null.size), hits == 0


def pair_null(pool_scores: np.ndarray, observed_cumulative: Sequence[float], n_pairs: int, *,
              n_sets: int = 200, seed: int = 0, k: int = 3,
              progress: Callback | None = None) -> dict[str, Any]:
  """Where the scales' ``k``-component cumulative variance falls among random pair sets.

  Args:
    pool_scores: ``[N, P]`` projections of the same rated words on the pool directions.
    observed_cumulative: ``[>= k]`` cumulative explained variance of the scales.
    n_pairs: pairs per random set (the number of scales, S).
    n_sets: random sets.
    seed: generator seed of the sets.
    k: components summarised (3 for E/P/A).
    progress: ``progress(sets_done, n_sets)`` after each set.

  Returns:
    ``{"n_sets", "n_pairs_per_set", "pool_size" (non-constant pool columns),
    "cumulative_mean", "cumulative_p95",
    "cumulative_p05" ([k] each), "observed", "percentile" (share of null sets below the
    observed k-component cumulative, ties half, 0-100), "p_value" ((1 + #{null >=
    observed}) / (1 + n_sets)), "p_at_floor", "seed"}``.
  """
  k = min(k, n_pairs)
  _, cum = pair_null_cumulative(pool_scores, n_pairs, n_sets, seed, k, progress)
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

  The matching is the one of ``structure.epa_congruence``: distinct factors and tags paired to
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
             seed: int = 0, progress: Callback | None = None) -> dict[str, Any] | None:
  """The E/P/A match against tags shuffled over the scales and a uniform general factor.

  Args:
    varimax_loadings: ``[S, k]`` varimax loadings of the scales.
    factors: ``[S]`` tag per scale ("E"/"P"/"A" or None).
    n_perms: tag permutations in the null (the loadings stay fixed).
    seed: generator seed of the permutations.
    progress: ``progress(permutations_done, n_perms)`` after each chunk of ``PERM_CHUNK``
      permutations (the null does not depend on the chunks).

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
  null = np.empty(n_perms)
  for start, stop in chunks(n_perms, PERM_CHUNK):
    null[start:stop] = matched_congruence(lo, target[perms[start:stop]])
    if progress is not None:
      progress(stop, n_perms)
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
