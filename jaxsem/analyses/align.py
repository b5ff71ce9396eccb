"""Human alignment: do projections on antonym directions track human word ratings?

For every scale x norm column: Pearson and Spearman r over the rated words the
model covers; 95% percentile bootstrap CIs; two nulls (random directions in the same
space, and directions from random WordNet antonym pairs) with the null's 95th
percentile of |r| and an empirical two-sided p; and a supervised ceiling (a
cross-validated ridge probe from the same word vectors to the column), so each
direction's r reads as a share of what is linearly decodable.

A direction's r depends on the rated words and on the pole words chosen for the scale.
``pearson_ci`` / ``spearman_ci`` therefore come from a hierarchical bootstrap that
resamples both, jointly in each draw (words with replacement, each pole's words with
replacement within the pole; ``kernels.hierarchical``). The words-only interval, which
treats the direction as fixed and is too narrow, stays as ``pearson_ci_words`` /
``spearman_ci_words``, on the same word draws. ``leave_one_pole_out`` is the range of
Pearson r with each pole word dropped in turn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem.analyses import lexicon
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.io import norms
from jaxsem.kernels import directions as dir_k
from jaxsem.kernels import hierarchical
from jaxsem.kernels import hierarchical_stack
from jaxsem.kernels import probe as probe_k
from jaxsem.kernels import projection
from jaxsem.kernels import stats
from jaxsem.progress import Progress


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
               case_variants: bool = False, max_words: int | None = None,
               progress: bool = False) -> NormWords:
  """Reads norm table ``name``, resolves its words, embeds the covered ones (``progress``: print the
  hidden space's progress lines).

  Raises:
    InputError: unknown table, or coverage below ``min_coverage`` (naming the table).
  """
  words, columns = norms.read_norms(name)
  if max_words is not None:
    words, columns = words[:max_words], {c: v[:max_words] for c, v in columns.items()}
  wt = lexicon.resolve_words(model.tokenizer, words, policy, case_variants=case_variants)
  lexicon.require_coverage(wt, min_coverage, f"{name} norms")
  used = np.asarray(wt.used)
  vectors = spaces_lib.word_vectors(model, wt, space, progress=progress)
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
                             factors=dirs.factors[:keep], norms=dirs.norms[:keep],
                             pole_vectors={k: dirs.pole_vectors[k] for k in dirs.names[:keep]
                                           if k in dirs.pole_vectors})


BOOTSTRAP_UNIT = "words and pole words (within pole)"


def _pole_projections(dirs, vectors, metric: str) -> dict[str, hierarchical.PoleProjections]:
  """The table's words on every pole word of each scale that carries its pole vectors.

  Raises:
    ValueError: a scale's pole vectors do not average to its direction.
  """
  out = {}
  for s, name in enumerate(dirs.names):
    if name not in dirs.pole_vectors:
      continue
    pos, neg = dirs.pole_vectors[name]
    d = np.asarray(dirs.vectors[s], np.float64)
    mean = np.mean(pos, axis=0, dtype=np.float64) - np.mean(neg, axis=0, dtype=np.float64)
    if np.linalg.norm(mean - d) > 1e-4 * max(np.linalg.norm(d), 1e-12):
      raise ValueError(f"The pole vectors of scale {name!r} do not average to its direction.")
    out[name] = hierarchical.pole_projections(vectors, pos, neg, metric)
  return out


def _ci(dist) -> list[float]:
  return [float(v) for v in np.asarray(stats.percentile_ci(dist))]


def _words_intervals(words) -> dict[str, Any]:
  """Intervals of a scale whose pole words are unknown: both are the words-only one."""
  return {"pearson_ci": _ci(words[0]), "spearman_ci": _ci(words[1]), "pearson_ci_words": _ci(words[0]),
          "spearman_ci_words": _ci(words[1]), "leave_one_pole_out": None, "ci_resampling": "words"}


def _pole_intervals(stack, y, draws, keys) -> list[dict[str, Any]]:
  """Hierarchical and words-only intervals, and the leave-one-pole-word-out range, of stacked scales.

  One program runs every scale's words-only draws (the same word draws, plain pole-mean
  weights), another their hierarchical draws (resampled pole weights).

  Args:
    stack: ``hierarchical_stack.PoleStack`` of the column's rated words, ``S`` scales.
    y: ``[N]`` ratings.
    draws: ``hierarchical.RatingDraws`` of this column (shared by every scale).
    keys: ``S`` PRNG keys of each scale's pole-word draws.

  Returns:
    One dict of intervals per stacked scale.
  """
  k = stack.scores.shape[2]
  n_boot = draws.word_indices.shape[0]
  pairs = list(zip(stack.n_positive.tolist(), stack.n_negative.tolist()))
  fixed = jnp.stack([hierarchical_stack.pad_weights(hierarchical.pole_mean_weights(p, m), k) for p, m in pairs])
  resampled = jnp.stack([hierarchical_stack.pad_weights(hierarchical.resample_pole_weights(key, p, m, n_boot), k)
                         for key, (p, m) in zip(keys, pairs)])
  words = hierarchical_stack.fixed_distribution_stack(stack, draws, fixed)  # ([S, B], [S, B])
  both = hierarchical_stack.distribution_stack(stack, draws, resampled)
  pearson, spearman = (jnp.concatenate([w, b]) for w, b in zip(words, both))  # [2S, B]: words, then both
  ci_p = np.asarray(stats.percentile_ci(pearson.T)).tolist()
  ci_s = np.asarray(stats.percentile_ci(spearman.T)).tolist()
  loo = hierarchical_stack.leave_one_out_ranges(stack, y)
  s = len(pairs)
  return [{"pearson_ci": ci_p[s + i], "spearman_ci": ci_s[s + i], "pearson_ci_words": ci_p[i],
           "spearman_ci_words": ci_s[i], "leave_one_pole_out": loo[i],
           # Poles of one word each cannot be resampled: the interval is then the words-only one.
           "ci_resampling": "words+pole_words" if max(p, m) > 1 else "words"}
          for i, (p, m) in enumerate(pairs)]


def _columns(nw: NormWords):
  """``(index, column, finite mask, float32 ratings)`` of every column of a norm table, sorted by name."""
  for ci_idx, (column, ratings) in enumerate(sorted(nw.columns.items())):
    ok = np.isfinite(ratings)
    yield ci_idx, column, ok, ratings[ok].astype(np.float32)


def align(dirs: scale_directions.Directions, norms: Sequence[NormWords], *,
          key: jax.Array, n_boot: int, n_null: int,
          null_pairs: scale_directions.Directions | None = None, metric: str = "cosine",
          probe_folds: int = 5, progress: bool = False) -> dict[str, Any]:
  """Correlates every direction with every norm column.

  Args:
    dirs: directions of the scales under test (in the same space as the norm vectors);
      scales with ``pole_vectors`` get the hierarchical interval, others the words-only one.
    norms: resolved human norm tables.
    key: PRNG key; bootstrap, pole-word draws, null and probe folds derive from it.
    n_boot: bootstrap resamples.
    n_null: random directions in the null.
    null_pairs: optional directions of random WordNet antonym pairs (second null).
    metric: "cosine" or "dot" projection.
    probe_folds: outer (and inner) folds of the probe's cross-validation.
    progress: print progress lines (rate, ETA) of the nulls, the probe and the bootstrap;
      the results do not depend on it.

  Returns:
    ``{"results": [...], "probe": {...}, "nulls": {...}, "settings": {...}}``. Each result
    has scale, factor, scale_norm_tag (the norm column the scale is tagged with, e.g.
    "warriner:valence", or None), norm and column (the table and column correlated),
    matches_tag (column is the scale's tagged one), pearson, pearson_ci, spearman,
    spearman_ci (hierarchical: words and pole words), pearson_ci_words,
    spearman_ci_words (words only), leave_one_pole_out ([min, max] Pearson r with one
    pole word dropped, or None), ci_resampling ("words+pole_words" or "words"), n,
    coverage, null_p95, p_value, pairs_null_p95, pairs_p_value, probe_r, share_of_probe.
  """
  d = int(dirs.vectors.shape[1])
  k_null, k_boot, k_probe = jax.random.split(key, 3)
  k_poles = jax.random.fold_in(key, 3)
  null_dirs = dir_k.random_directions(k_null, n_null, d)
  n_pairs = 0 if null_pairs is None else len(null_pairs.names)
  n_columns = sum(len(nw.columns) for nw in norms)
  null_r, pairs_r, probes, nulls = {}, {}, {}, {}

  # 1. The nulls: every column against the random directions and the random WordNet pairs.
  bar = Progress.maybe(progress, "align nulls", n_columns * (n_null + n_pairs), unit="directions")
  bar.update(0)
  for nw in norms:
    null_scores = np.asarray(projection.project(nw.vectors, null_dirs, metric))
    pair_scores = (np.asarray(projection.project(nw.vectors, null_pairs.vectors, metric))
                   if null_pairs is not None else None)
    for _, column, ok, y in _columns(nw):
      null_r[nw.name, column] = np.asarray(stats.null_distribution(null_scores[ok], y))
      bar.update(bar.done + n_null)
      if pair_scores is not None:
        pairs_r[nw.name, column] = np.asarray(stats.null_distribution(pair_scores[ok], y))
        bar.update(bar.done + n_pairs)
      for kind, r in (("wordnet_pairs", pairs_r.get((nw.name, column))), ("random", null_r[nw.name, column])):
        if r is not None:
          nulls[f"{nw.name}:{column}:{kind}"] = {"n": int(r.size), "p95": float(np.percentile(np.abs(r), 95)),
                                                 "mean_abs_r": float(np.mean(np.abs(r)))}
  bar.close()

  # 2. The probe: a nested cross-validated ridge fit per column (progress per outer fold).
  fits = probe_folds * (probe_folds + 1)
  bar = Progress.maybe(progress, "align probe", n_columns * fits, unit="fits")
  bar.update(0)
  for nw in norms:
    x_all = np.asarray(nw.vectors)
    for ci_idx, column, ok, y in _columns(nw):
      offset = bar.done
      pr = probe_k.cv_probe_r(x_all[ok], y, jax.random.fold_in(k_probe, ci_idx), k=probe_folds,
                              solver="closed", progress=lambda done, _, o=offset: bar.update(o + done))
      probes[f"{nw.name}:{column}"] = {"r": float(pr.r), "r_per_fold": np.asarray(pr.r_per_fold).tolist(),
                                        "best_l2": np.asarray(pr.best_l2).tolist(), "n": int(pr.n)}
  bar.close()

  # 3. The bootstrap intervals: words-only and hierarchical draws of every scale x column.
  results = []
  bar = Progress.maybe(progress, "align bootstrap", n_columns * len(dirs.names) * 2 * n_boot, unit="draws")
  bar.update(0)
  for nw in norms:
    scores = np.asarray(projection.project(nw.vectors, dirs.vectors, metric))
    poles = _pole_projections(dirs, nw.vectors, metric)
    with_poles = [s for s, name in enumerate(dirs.names) if name in poles]
    need_words = [s for s, name in enumerate(dirs.names) if name not in poles]
    # Every scale with pole vectors in one stack: one program per column for all their draws.
    stack = (hierarchical_stack.stack_pole_projections([poles[dirs.names[s]] for s in with_poles])
             if with_poles else None)
    for ci_idx, column, ok, y in _columns(nw):
      x = scores[ok]
      kb = jax.random.fold_in(k_boot, ci_idx)
      pear = np.asarray(stats.pearson_columns(x, y))
      spear = np.asarray(stats.spearman_columns(x, y))
      # Word draws as stats.bootstrap_ci(x, y, kb) would draw them; shared by every scale.
      idx = stats.bootstrap_indices(kb, int(ok.sum()), n_boot)
      draws = hierarchical.rating_draws(y, idx)
      cis = {}
      if need_words:
        wp = np.asarray(stats.bootstrap_distribution(x[:, need_words], y, idx, "pearson"))
        ws = np.asarray(stats.bootstrap_distribution(x[:, need_words], y, idx, "spearman"))
        cis.update({s: _words_intervals((wp[:, j], ws[:, j])) for j, s in enumerate(need_words)})
        bar.update(bar.done + 2 * n_boot * len(need_words))
      if stack is not None:
        k_column = jax.random.fold_in(k_poles, ci_idx)
        keys = [jax.random.fold_in(k_column, s) for s in with_poles]
        rows = _pole_intervals(stack._replace(scores=jnp.asarray(np.asarray(stack.scores)[:, ok])), y, draws, keys)
        cis.update(zip(with_poles, rows))
        bar.update(bar.done + 2 * n_boot * len(with_poles))
      rand = stats.null_summary(pear, null_r[nw.name, column])
      pairs = stats.null_summary(pear, pairs_r[nw.name, column]) if (nw.name, column) in pairs_r else None
      probe_r = probes[f"{nw.name}:{column}"]["r"]
      for s, name in enumerate(dirs.names):
        tag = dirs.norms[s]
        results.append({
            "scale": name, "factor": dirs.factors[s], "scale_norm_tag": tag,
            "norm": nw.name, "column": column, "matches_tag": tag == f"{nw.name}:{column}",
            "pearson": float(pear[s]), "spearman": float(spear[s]), **cis[s],
            "n": int(ok.sum()), "coverage": nw.report["coverage"],
            "null_p95": float(np.asarray(rand["p95"])), "p_value": float(np.asarray(rand["p_value"])[s]),
            "pairs_null_p95": None if pairs is None else float(np.asarray(pairs["p95"])),
            "pairs_p_value": None if pairs is None else float(np.asarray(pairs["p_value"])[s]),
            "probe_r": probe_r,
            "share_of_probe": float(abs(pear[s]) / probe_r) if probe_r > 0 else None,
        })
  bar.close()
  settings = {
      "probe": {"folds": probe_folds, "inner_folds": probe_folds, "l2_grid": list(probe_k.DEFAULT_L2_GRID),
                "solver": "closed", "standardised": True},
      "bootstrap": {"n_boot": n_boot, "unit": BOOTSTRAP_UNIT, "interval": "95% percentile",
                    "words_only_unit": "words"},
      "nulls": {"n_random": n_null, "n_pairs": 0 if null_pairs is None else len(null_pairs.names)},
      "metric": metric,
  }
  return {"results": results, "probe": probes, "nulls": nulls, "settings": settings}
