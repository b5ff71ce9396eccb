"""Do the axes relate as human judgements do? Axis cosines against human inter-scale correlations.

The scales of a set that carry a ``norm`` tag (``"warriner:valence"``) each stand for one human
rating column. For every pair of them:

    human r        Pearson r of the two tagged columns over the words both tables rate (every rated
                   word, whether or not the model covers it; pairwise complete), with n
    cosine         cosine of the two axes in the analysis space (``scale_directions``, as align builds
                   them: same space, centring/whitening, policy and method)
    projection r   Pearson r of the words' projections on the two axes over the words both tables
                   rate that the model covers

and the relation over the pairs: r and slope of human r on the cosine (and on the projection r),
with a Mantel permutation null (the scale labels of the model matrix permuted, rows and columns
together) and a joint bootstrap CI. Each bootstrap draw resamples the rated words (one draw of
the word universe, shared by the human and the projection side) and, for the cosines, each
scale's pole words within their pole (``hierarchical.resample_pole_weights``, as align's
hierarchical interval does); the relation of draw ``b`` pairs the three matrices of draw ``b``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from jaxsem import experiment_config
from jaxsem.analyses import geometry_inputs
from jaxsem.analyses import lexicon
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.analyses.geometry_inputs import RatedWords
from jaxsem.errors import InputError
from jaxsem.io import assets, norms
from jaxsem.io import scales as scales_io
from jaxsem.kernels import geometry as geo
from jaxsem.kernels import projection
from jaxsem.kernels import stats
from jaxsem.progress import Progress

MIN_SCALES = 3  # three scales give three pairs, the fewest a correlation over pairs can use
_BLOCK_ELEMENTS = 1 << 24  # words x draws of one bootstrap block (64 MiB of float32 counts)
BOOTSTRAP_UNIT = "rated words (human r, projection r); pole words within pole (cosines)"


@dataclasses.dataclass(frozen=True)
@experiment_config.config_defaults("geometry")
class GeometryOptions:
  """What the geometry run measures (defaults: ``configs/experiments/base.py`` ``geometry()``).

  Attributes:
    scales: scale set (name or file) whose norm-tagged scales are compared pair by pair.
    also_scales: further scale sets compared the same way where three or more of their scales carry tags.
    norms: human norm tables whose tagged columns enter; empty: every table a tag names.
    space: ``input_embedding``, ``unembedding`` or ``hidden``.
    layer: hidden space: block index (-1: after the final norm).
    centre: subtract the vocabulary mean.
    whiten: whiten with the vocabulary covariance.
    policy: word -> token policy (``single``, ``mean``, ``first``).
    method: direction construction (``scale_directions.METHODS``).
    metric: projection metric of the words on the axes (``cosine`` or ``dot``).
    min_coverage: least share of each table's rated words the policy must cover.
    seed: bootstrap draws and Mantel permutations.
    n_boot: joint bootstrap draws.
    n_perm: Mantel permutations.
    template: hidden space: template with one ``{word}`` slot.
  """

  scales: str
  also_scales: tuple[str, ...]
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
  n_perm: int
  template: str

  def provenance(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def check_options(opts: GeometryOptions) -> None:
  """Checks what can be checked without a model (tables, method, metric, sizes).

  Raises:
    InputError: one sentence naming the flag and the fix.
  """
  for name in opts.norms:
    if name not in norms.NORM_NAMES:
      raise InputError(f"--norms: unknown norm table {name!r}{assets.did_you_mean(name, norms.NORM_NAMES)}; "
                       f"use any of {', '.join(norms.NORM_NAMES)} (or none: every table a tag names).")
  if opts.method not in scale_directions.METHODS:
    raise InputError(f"--method={opts.method!r} is not known; use one of "
                     f"{', '.join(scale_directions.METHODS)}.")
  if opts.metric not in ("cosine", "dot"):
    raise InputError(f"--metric={opts.metric!r} is not known; use cosine or dot.")
  for name, value in (("n_boot", opts.n_boot), ("n_perm", opts.n_perm)):
    if value < 1:
      raise InputError(f"--{name}={value} is below 1; give a count of at least 1.")
  if not 0.0 <= opts.min_coverage <= 1.0:
    raise InputError(f"--min_coverage={opts.min_coverage} is outside [0, 1]; give a share such as 0.1.")


# ----------------------------------------------------------------------------- inputs


def _covered(model, space, rated: RatedWords, opts: GeometryOptions, progress: bool):
  """(``[N]`` covered mask, ``[n_covered, D]`` vectors, coverage report) of the rated words."""
  wt = lexicon.resolve_words(model.tokenizer, list(rated.words), opts.policy)
  used = np.asarray(wt.used)
  report = {"policy": opts.policy, "words": len(rated.words), "covered": int(used.sum()), "tables": {}}
  for table, rates in rated.tables.items():
    n, got = int(rates.sum()), int((rates & used).sum())
    share = got / n if n else 0.0
    report["tables"][table] = {"rated": n, "covered": got, "coverage": share}
    if share < opts.min_coverage:
      alternative = "use --policy=mean or " if opts.policy == "single" else ""
      raise InputError(f"{table} norms: only {got} of {n} rated words ({share:.1%}) can be used under "
                       f"--policy={opts.policy}, below --min_coverage={opts.min_coverage:g}; "
                       f"{alternative}lower --min_coverage.")
  vectors = spaces_lib.word_vectors(model, wt, space, progress=progress)
  return used, vectors, report


# ----------------------------------------------------------------------------- one scale set


def _ci(draws: np.ndarray) -> np.ndarray:
  """``[..., 2]`` 95% percentile interval over the first axis (NaN-ignoring)."""
  flat = draws.reshape(draws.shape[0], -1)
  out = np.asarray(stats.percentile_ci(flat), np.float64)
  return out.reshape(*draws.shape[1:], 2)


def _word_draws(x: np.ndarray, key, n_boot: int, progress: bool, what: str) -> np.ndarray:
  """``[B, S, S]`` pairwise r of the columns of ``x`` per word draw, in blocks.

  The draws derive from ``key`` alone, so two calls with one key and one word count draw the same
  words: the human and the projection matrices of draw ``b`` share their words.
  """
  n = x.shape[0]
  block = max(1, min(n_boot, _BLOCK_ELEMENTS // max(n, 1)))
  out = []
  bar = Progress.maybe(progress, f"{what} bootstrap", n_boot, unit="draws")
  bar.update(0)
  for b, start in enumerate(range(0, n_boot, block)):
    counts = geo.bootstrap_counts(jax.random.fold_in(key, b), n, min(block, n_boot - start))
    out.append(geo.pairwise_corr_draws(x, counts))
    bar.update(start + counts.shape[0])
  bar.close()
  return np.concatenate(out)


def _relation_block(model_m: np.ndarray, model_draws: np.ndarray, human_m: np.ndarray,
                    human_draws: np.ndarray, key, n_perm: int) -> dict[str, Any]:
  """r and slope of human r on a model matrix over the pairs, bootstrap CI and Mantel p."""
  hu, mu = geo.upper(human_m), geo.upper(model_m)
  point = geo.relation(hu, mu)
  draws = geo.relation(geo.upper(human_draws), geo.upper(model_draws))
  test = geo.mantel(human_m, model_m, key, n_perm)
  finite = np.isfinite(hu) & np.isfinite(mu)
  return {
      "r": float(point["r"]), "slope": float(point["slope"]), "intercept": float(point["intercept"]),
      "ci": [float(v) for v in _ci(draws["r"][:, None])[0]],
      "slope_ci": [float(v) for v in _ci(draws["slope"][:, None])[0]],
      "mantel_p": test["p_value"], "mantel_alternative": test["alternative"], "n_perm": test["n_perm"],
      "n_pairs": int(finite.sum()),
  }


@dataclasses.dataclass(frozen=True)
class HumanSide:
  """The human half of ``compare``: what does not depend on the model's vectors.

  Attributes:
    names: ``S`` scale names.
    tags: their ``"table:column"`` columns.
    ratings: ``[N, S]`` the tagged columns over the rated words (NaN where a table does not rate a word).
    r: ``[S, S]`` pairwise-complete inter-scale r.
    n: ``[S, S]`` words behind each r.
    draws: ``[B, S, S]`` r per word draw.
    ci: ``[S, S, 2]`` percentile interval of the draws.
    key: the key the model half derives its draws from (the word draws repeat with ``fold_in(key, 0)``).
    n_boot: draws ``B``.
  """

  names: tuple[str, ...]
  tags: tuple[str, ...]
  ratings: np.ndarray
  r: np.ndarray
  n: np.ndarray
  draws: np.ndarray
  ci: np.ndarray
  key: Any
  n_boot: int


def human_side(names, tags, rated: RatedWords, *, key, n_boot: int, progress: bool = False,
               what: str = "geometry") -> HumanSide:
  """The human inter-scale r of the tagged columns ``tags``, with its word draws (``compare``'s key)."""
  human = np.stack([rated.columns[t] for t in tags], axis=1)  # [N, S]
  human_r, human_n = geo.pairwise_corr(human)
  draws = _word_draws(human, jax.random.fold_in(key, 0), n_boot, progress, f"{what} human")
  return HumanSide(names=tuple(names), tags=tuple(tags), ratings=human, r=human_r, n=human_n, draws=draws,
                   ci=_ci(draws), key=key, n_boot=n_boot)


def model_side(human: HumanSide, dirs: scale_directions.Directions, covered: np.ndarray, vectors, *,
               n_perm: int, metric: str = "cosine", progress: bool = False,
               what: str = "geometry") -> dict[str, Any]:
  """``compare`` for one set of directions against a ``HumanSide`` computed once.

  ``dirs`` must hold ``human.names`` in that order; ``covered`` and ``vectors`` are as in ``compare``.
  The word draws repeat those of ``human`` (same key), so the relation of draw ``b`` pairs the
  matrices of draw ``b`` as ``compare`` does.
  """
  if tuple(dirs.names) != human.names:
    raise ValueError(f"directions {list(dirs.names)} do not match the human side's scales "
                     f"{list(human.names)}")
  names, tags = list(human.names), list(human.tags)
  n, s = human.ratings.shape
  key, n_boot = human.key, human.n_boot
  scores = np.asarray(projection.project(vectors, dirs.vectors, metric), np.float64)
  proj = np.full((n, s), np.nan)
  proj[covered] = scores
  proj[~np.isfinite(human.ratings)] = np.nan  # a word enters a projection pair where both tables rate it

  k_words, k_poles, k_cos, k_proj = (jax.random.fold_in(key, i) for i in range(4))
  proj_r, proj_n = geo.pairwise_corr(proj)
  cos = geo.cosine_matrix(dirs.vectors)
  proj_d = _word_draws(proj, k_words, n_boot, progress, f"{what} projection")
  if all(name in dirs.pole_vectors for name in names):
    cos_d = geo.pole_cosine_draws(k_poles, [dirs.pole_vectors[name] for name in names], n_boot)
    cos_resampling = "pole words within pole"
  else:
    cos_d = np.broadcast_to(cos, (n_boot, s, s))
    cos_resampling = "none (pole words unknown)"
  human_r, human_n, human_ci, human_d = human.r, human.n, human.ci, human.draws
  proj_ci, cos_ci = _ci(proj_d), _ci(cos_d)
  pairs = []
  for i, j in zip(*np.triu_indices(s, k=1)):
    pairs.append({"a": names[i], "b": names[j], "column_a": tags[i], "column_b": tags[j],
                  "human_r": float(human_r[i, j]), "human_ci": human_ci[i, j].tolist(),
                  "n": int(human_n[i, j]),
                  "cosine": float(cos[i, j]), "cosine_ci": cos_ci[i, j].tolist(),
                  "projection_r": float(proj_r[i, j]), "projection_ci": proj_ci[i, j].tolist(),
                  "n_projection": int(proj_n[i, j])})
  # Sensitivity: the pairs whose scales share no pole word (a shared word pulls two axes together by
  # construction). The mask is fixed in the human matrix's labels, so the Mantel null permutes only the
  # model side, as for all pairs.
  shared = shared_pole_words(dirs, names)
  keep = np.array([[not shared[i][j] for j in range(s)] for i in range(s)])
  human_kept, human_d_kept = np.where(keep, human_r, np.nan), np.where(keep, human_d, np.nan)
  for pair in pairs:
    pair["shared_pole_words"] = sorted(shared[names.index(pair["a"])][names.index(pair["b"])])
  return {
      "scales": names, "columns": tags,
      "human_r": {"matrix": human_r.tolist(), "n": human_n.tolist(), "ci": human_ci.tolist(),
                  "scales": names, "columns": tags, "words": n},
      "cosines": {"matrix": cos.tolist(), "ci": cos_ci.tolist(), "ci_resampling": cos_resampling},
      "projection_r": {"matrix": proj_r.tolist(), "n": proj_n.tolist(), "ci": proj_ci.tolist(),
                       "words": int(covered.sum()), "metric": metric},
      "pairs": pairs,
      "relation": {"cosine": _relation_block(cos, cos_d, human_r, human_d, k_cos, n_perm),
                   "projection": _relation_block(proj_r, proj_d, human_r, human_d, k_proj, n_perm)},
      "relation_no_shared_poles": {
          "cosine": _relation_block(cos, cos_d, human_kept, human_d_kept, k_cos, n_perm),
          "projection": _relation_block(proj_r, proj_d, human_kept, human_d_kept, k_proj, n_perm),
          "n_pairs_dropped": int(np.triu(~keep, k=1).sum())},
  }


def shared_pole_words(dirs: scale_directions.Directions, names: list[str]) -> list[list[set[str]]]:
  """``[S][S]`` the pole words (either pole) each pair of scales has in common (empty on the diagonal)."""
  words = [set(dirs.poles.get(n, {}).get("positive", ())) | set(dirs.poles.get(n, {}).get("negative", ()))
           for n in names]
  return [[set() if i == j else words[i] & words[j] for j in range(len(names))] for i in range(len(names))]


def compare(dirs: scale_directions.Directions, rated: RatedWords, covered: np.ndarray, vectors, *, key,
            n_boot: int, n_perm: int, metric: str = "cosine", progress: bool = False,
            what: str = "geometry") -> dict[str, Any]:
  """The three matrices of a set of tagged axes, their pairs and the two relations.

  ``human_side`` then ``model_side``; a run comparing many sets of directions with one set of
  human columns (the layer run: one per site) computes the human side once.

  Args:
    dirs: directions of the tagged scales (``dirs.norms`` their tags, each a column of ``rated``).
    rated: the rated words and the tagged columns.
    covered: ``[N]`` bool, the rated words the model covers.
    vectors: ``[n_covered, D]`` their vectors, in the directions' space.
    key: PRNG key (word draws, pole-word draws and permutations derive from it).
    n_boot: joint bootstrap draws.
    n_perm: Mantel permutations.
    metric: projection metric of the words.
    progress: print the bootstrap's progress lines.
    what: label of the progress lines.

  Returns:
    ``{scales, columns, human_r, cosines, projection_r, pairs, relation}`` (see ``run_geometry``).
  """
  human = human_side(dirs.names, dirs.norms, rated, key=key, n_boot=n_boot, progress=progress, what=what)
  return model_side(human, dirs, covered, vectors, n_perm=n_perm, metric=metric, progress=progress, what=what)


# ----------------------------------------------------------------------------- the run


def _space(model, opts: GeometryOptions, progress: bool):
  return spaces_lib.make_space(model, opts.space, layer=opts.layer, centre=opts.centre, whiten=opts.whiten,
                               template=opts.template, seed=opts.seed, progress=progress)


def run_geometry(model, opts: GeometryOptions, progress: bool = True) -> dict[str, Any]:
  """Axis cosines and projection correlations against human inter-scale r (see the module docstring).

  Args:
    model: a ``jaxsem.Model``.
    opts: ``GeometryOptions``.
    progress: print progress lines (on process 0).

  Returns:
    JSON-friendly dict: ``scales`` and ``columns`` (the tagged scales of ``opts.scales`` in file order
    and their human columns), ``human_r`` (``matrix`` [S, S], ``n``, ``ci`` [S, S, 2], ``words``),
    ``cosines`` (``matrix``, ``ci``, ``ci_resampling``), ``projection_r`` (``matrix``, ``n``, ``ci``,
    ``words``), ``pairs`` (one row per pair), ``relation`` (``cosine`` and ``projection``: ``r``,
    ``slope``, ``intercept``, ``ci``, ``slope_ci``, ``mantel_p``, ``n_perm``, ``n_pairs``), ``also``
    (per further scale set the same blocks, or a ``note`` why not), ``left_out`` (scale -> reason),
    ``tables``, ``coverage``, ``directions``, ``space``, ``scales_file``, ``settings``, ``seconds``.

  Raises:
    InputError: bad options, fewer than 3 tagged scales, a table below ``min_coverage``, a scale
      without usable pole words.
  """
  check_options(opts)
  start = time.perf_counter()
  key = jax.random.key(opts.seed)
  scale_set = scales_io.load_scales(opts.scales)
  tables = tuple(opts.norms)
  main, left = geometry_inputs.tagged_scales(scale_set, tables)
  if len(main) < MIN_SCALES:
    raise InputError(f"--scales={opts.scales}: only {len(main)} scale(s) carry a norm tag of "
                     f"{', '.join(tables) if tables else 'any table'}; the geometry needs at least "
                     f"{MIN_SCALES} (give more tables in --norms or a scale set with norm tags).")
  others = {}
  for name in opts.also_scales:
    other, _ = geometry_inputs.tagged_scales(scales_io.load_scales(name), tables)
    others[name] = other
  used_tags = [s.norm for s in main] + [s.norm for o in others.values() if len(o) >= MIN_SCALES for s in o]
  rated = geometry_inputs.rated_words(used_tags)
  space = _space(model, opts, progress)
  covered, vectors, coverage = _covered(model, space, rated, opts, progress)

  def build(scales, what):
    return scale_directions.build(model, space, scales, policy=opts.policy, method=opts.method, what=what)

  dirs = build(main, scale_set.name)
  out = compare(dirs, rated, covered, vectors, key=jax.random.fold_in(key, 0), n_boot=opts.n_boot,
                n_perm=opts.n_perm, metric=opts.metric, progress=progress, what=f"geometry {scale_set.name}")
  also, notes = {}, []
  for k, (name, other) in enumerate(others.items(), start=1):
    if not other:
      note = f"{name}: no scale carries a norm tag" + (f" of {', '.join(tables)}" if tables else "")
    elif len(other) < MIN_SCALES:
      note = f"{name}: only {len(other)} scale(s) carry a norm tag; a relation over pairs needs {MIN_SCALES}"
    else:
      other_dirs = build(other, name)
      also[name] = compare(other_dirs, rated, covered, vectors, key=jax.random.fold_in(key, k),
                           n_boot=opts.n_boot, n_perm=opts.n_perm, metric=opts.metric, progress=progress,
                           what=f"geometry {name}")
      also[name]["directions"] = other_dirs.report()
      continue
    also[name] = {"note": note}
    notes.append(note)
  return {
      **out,
      "also": also,
      "notes": notes,
      "left_out": left,
      "tables": sorted(rated.tables),
      "coverage": coverage,
      "directions": dirs.report(),
      "space": space.provenance(),
      "scales_file": str(scale_set.source),
      "settings": {"n_boot": opts.n_boot, "n_perm": opts.n_perm, "seed": opts.seed,
                   "bootstrap": {"unit": BOOTSTRAP_UNIT, "interval": "95% percentile",
                                 "relation": "each draw pairs the human, cosine and projection matrices "
                                             "of that draw"},
                   "mantel": {"permuted": "the model matrix's scale labels, rows and columns together",
                              "p": "(1 + #null >= observed) / (1 + n_perm)", "alternative": "greater"},
                   "pairwise": "pairwise complete: each pair over the words both tables rate",
                   "metric": opts.metric},
      "seconds": round(time.perf_counter() - start, 2),
  }
