"""Layer-resolved alignment and structure: where in the network the semantic structure lives.

The words (rated words of the norm tables and the pole words of the scales) run through the
model once per template (``layers_capture``); every site of the residual stream is read at
each word's last token in the same passes and averaged over the templates. At each site, in
depth order,

    input_embedding   the static token embedding (full-vocabulary centring), the usual space
    embed             the embedding entering block 0, as read in the templates
    resid_post.{l}    the residual leaving block l
    final             after the final norm
    unembedding       the rows the logits are dotted with (full-vocabulary centring)

the directions are built from the pole words' states at that site (``scale_directions``),
centred by that site's mean over a seeded sample of vocabulary tokens run through the same
templates (whitening optional), and measured as the static spaces are: alignment of every
``align_scales`` scale with every norm column (``align.align``: r with the hierarchical
interval, the random-direction null and the cross-validated probe ceiling) and the structure
of ``structure_scales`` (``structure.structure``: PCA cumulative variance, E/P/A congruence,
participation ratio, the E/P/A tag null, and the WordNet pair null when asked for).
Nulls, bootstraps and probe folds use the same seed at every site, so sites differ only in
their vectors.

The geometry relation (``geometry.compare``, as ``launch.geometry`` defines it) follows the
``align_scales`` scales tagged with a column of the run's tables through the sites: at each
site r and slope of the human inter-scale r on the axes' cosines (and on the correlations of
the words' projections) over the pairs, with the joint bootstrap CI and the Mantel p. The words
are the run's sample: the union of every table's sampled words, each rated by every table that
rates it, so the human r of a pair is over the sampled words both tables rate. The human matrix
and its word draws are the same at every site and computed once (``layers_geometry``). Below
``layers_geometry.MIN_GEOMETRY_SCALES`` tagged scales (the default warriner alone tags three) the
relation is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from jaxsem import experiment_config
from jaxsem.analyses import align as align_lib
from jaxsem.analyses import layers_capture
from jaxsem.analyses import layers_geometry
from jaxsem.analyses import lexicon
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.analyses import structure as structure_lib
from jaxsem.errors import InputError
from jaxsem.io import norms
from jaxsem.io import scales as scales_io
from jaxsem.progress import Progress

METHODS = ("pole_mean", "pair_mean")  # semaxis searches a vocabulary matrix, which hidden sites lack
MIN_TEMPLATES = 3
_SLOT = "{word}"


@dataclasses.dataclass(frozen=True)
@experiment_config.config_defaults("layers")
class LayerOptions:
  """What the layer run measures (defaults: ``configs/experiments/base.py`` ``layers()``).

  Attributes:
    align_scales: scale set (name or file) correlated with every norm column at every site.
    structure_scales: scale set whose PCA and E/P/A structure is followed through the sites.
    norms: human norm tables; the first also carries the structure analysis.
    templates: at least ``MIN_TEMPLATES`` texts with one ``{word}`` slot; states are averaged over them.
    n_words: rated words per norm table, a seeded sample of the covered ones (0: all).
    stats_sample: vocabulary tokens (seeded) whose states in the templates centre each site.
    centre: subtract each site's mean over the token sample (the static spaces: the vocabulary mean).
    whiten: whiten each site with the token sample's covariance.
    policy: word -> token policy (``single``, ``mean``, ``first``).
    method: direction construction (``pole_mean`` or ``pair_mean``).
    metric: projection metric (``cosine`` or ``dot``).
    min_coverage: least share of a norm table's words the policy must cover.
    seed: word and token samples, bootstraps, nulls, probe folds.
    n_boot: bootstrap resamples per site.
    n_null: random directions in the null per site.
    n_pair_sets: random WordNet pair sets in the structure pair null per site (0: skip).
    n_tag_perms: E/P/A tag permutations per site (0: skip).
    batch_size: sequences per forward call.
    geometry: the geometry relation at every site, where ``align_scales`` has at least
      ``layers_geometry.MIN_GEOMETRY_SCALES`` scales tagged with columns of ``norms`` (else skipped
      with the reason).
    geometry_n_perm: Mantel permutations of the geometry relation per site (its bootstrap: ``n_boot``).
  """

  align_scales: str
  structure_scales: str
  norms: tuple[str, ...]
  templates: tuple[str, ...]
  n_words: int
  stats_sample: int
  centre: bool
  whiten: bool
  policy: str
  method: str
  metric: str
  min_coverage: float
  seed: int
  n_boot: int
  n_null: int
  n_pair_sets: int
  n_tag_perms: int
  batch_size: int
  geometry: bool
  geometry_n_perm: int

  def provenance(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def check_options(opts: LayerOptions) -> None:
  """Checks what can be checked without a model (templates, method, sizes).

  Raises:
    InputError: one sentence naming the flag and the fix.
  """
  templates = list(opts.templates)
  if len(templates) < MIN_TEMPLATES:
    raise InputError(f"--templates has {len(templates)} template(s); give at least {MIN_TEMPLATES} distinct "
                     "ones with one {word} slot each (states are averaged over them).")
  for t in templates:
    if not isinstance(t, str) or t.count(_SLOT) != 1:
      raise InputError(f"--templates: {t!r} must contain the slot {{word}} exactly once, "
                       "e.g. 'The word {word}'.")
  if len(set(templates)) != len(templates):
    raise InputError(f"--templates lists {next(t for t in templates if templates.count(t) > 1)!r} twice; "
                     "give distinct templates.")
  if opts.method not in METHODS:
    raise InputError(f"--method={opts.method!r} does not apply to hidden sites; use one of "
                     f"{', '.join(METHODS)}.")
  if opts.metric not in ("cosine", "dot"):
    raise InputError(f"--metric={opts.metric!r} is not known; use cosine or dot.")
  if not opts.norms:
    raise InputError(f"--norms is empty; give one or more of {', '.join(norms.NORM_NAMES)}.")
  for name, value, least in (("n_words", opts.n_words, 0), ("stats_sample", opts.stats_sample, 2),
                             ("n_boot", opts.n_boot, 1), ("n_null", opts.n_null, 1),
                             ("n_pair_sets", opts.n_pair_sets, 0), ("n_tag_perms", opts.n_tag_perms, 0),
                             ("batch_size", opts.batch_size, 1),
                             ("geometry_n_perm", opts.geometry_n_perm, 1)):
    if value < least:
      raise InputError(f"--{name}={value} is below {least}; give a count of at least {least}.")


# ----------------------------------------------------------------------------- words


@dataclasses.dataclass(frozen=True)
class RatedTable:
  """A norm table's sampled rated words: tokens, ratings of the used words, coverage report."""
  name: str
  tokens: lexicon.WordTokens
  columns: dict[str, np.ndarray]
  report: dict[str, Any]


def _rated(model, name: str, opts: LayerOptions) -> RatedTable:
  """The covered rated words of norm table ``name``, ``opts.n_words`` of them drawn at random (seeded)."""
  words, columns = norms.read_norms(name)
  wt = lexicon.resolve_words(model.tokenizer, words, opts.policy)
  lexicon.require_coverage(wt, opts.min_coverage, f"{name} norms")
  used = np.flatnonzero(wt.used)
  report = wt.report()
  if opts.n_words and used.size > opts.n_words:
    used = np.sort(np.random.default_rng(opts.seed).choice(used, opts.n_words, replace=False))
    wt = lexicon.resolve_words(model.tokenizer, [words[i] for i in used], opts.policy)
  report["sampled"] = {"n": int(wt.n_used), "of": report["used"], "seed": opts.seed}
  return RatedTable(name, wt, {c: np.asarray(v)[used] for c, v in columns.items()}, report)


def _pole_words(model, scale_set, policy: str) -> lexicon.WordTokens:
  """The pole words of a scale set resolved as ``scale_directions.build`` resolves them."""
  words = list(dict.fromkeys(w for s in scale_set for w in (*s.positive, *s.negative)))
  return lexicon.resolve_words(model.tokenizer, words, policy)


def _hidden_ids(wt: lexicon.WordTokens) -> list[tuple[int, ...]]:
  return [tuple(t) for t in (wt.used_all_ids or wt.used_token_ids)]


# ----------------------------------------------------------------------------- one site


def _measure(model, space, sets: dict[str, Any], rated: list[RatedTable], opts: LayerOptions,
             key: jax.Array, progress: bool = False,
             geometry: layers_geometry.GeometryInputs | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Alignment, structure and (given ``geometry``) the geometry relation in one space -> (the site's
  numbers, its directions reports).

  ``progress`` prints the alignment's and the structure's own progress lines (a site can take
  longer than the silence a long run may keep).
  """
  def build(scale_set, what: str, method: str = opts.method, missing: str | None = None):
    missing = missing or ("drop" if len(scale_set) > 200 else "error")
    return scale_directions.build(model, space, list(scale_set), policy=opts.policy, method=method,
                                  missing=missing, what=what)

  dirs = build(sets["align"], sets["align"].name)
  norms = [align_lib.NormWords(r.name, tuple(r.tokens.used_words),
                               spaces_lib.word_vectors(model, r.tokens, space), r.columns, r.report)
           for r in rated]
  res = align_lib.align(dirs, norms, key=jax.random.fold_in(key, 2), n_boot=opts.n_boot, n_null=opts.n_null,
                        metric=opts.metric, progress=progress)
  sdirs = build(sets["structure"], sets["structure"].name)
  pool = build(sets["wordnet"], "wordnet pair null", "pole_mean", "drop") if opts.n_pair_sets > 0 else None
  st = structure_lib.structure(sdirs, norms[0], key=jax.random.fold_in(key, 3), metric=opts.metric,
                               pair_pool=pool, n_pair_sets=opts.n_pair_sets, n_tag_perms=opts.n_tag_perms,
                               seed=opts.seed, scale_set=sets["structure"].name, progress=progress,
                               what=f"layers {space.site or space.name} structure")
  pca = st["pca"]
  matched = (pca.get("epa_congruence") or {}).get("matched")
  pair, epa = st.get("pair_null"), st.get("epa_null")
  point = {
      "space": space.name,
      "alignment": res["results"],
      "probe_r": {k: v["r"] for k, v in res["probe"].items()},
      "nulls": res["nulls"],
      "pca_cumulative": pca["cumulative"],
      "pca_cumulative_1_2_3": pca["cumulative_1_2_3"],
      "random_pca_cumulative_1_2_3": st["random_pca"]["cumulative"][:3],
      "epa_congruence": None if not matched else {f: m["congruence"] for f, m in matched.items()},
      "participation_ratio": pca["participation_ratio"],
      "pair_null": None if not pair else {k: pair[k] for k in ("percentile", "p_value", "p_at_floor",
                                                               "n_sets")},
      "epa_null": None if not epa else {k: epa[k] for k in ("observed", "null_p95", "p_value", "p_at_floor",
                                                            "n_perms")},
      "geometry": (None if geometry is None
                   else layers_geometry.geometry_at(model, space, dirs, geometry, opts)),
      "space_provenance": space.provenance(),
  }
  return point, {"align": dirs.report(), "structure": sdirs.report(), "settings": {
      "align": res["settings"], "structure": st["settings"]}}


# ----------------------------------------------------------------------------- the run


def best_layers(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per norm column (``"warriner:valence"``): the site of the residual stream where its scale's r is highest.

  The candidates are the hidden sites (``embed`` to ``final``; all points when there are none);
  the static input embedding and the unembedding are reported beside the winner (``static``,
  ``unembedding``), so a tied model's unembedding cannot pose as a layer. The scale is the one
  tagged with the column (``matches_tag``); a column no scale is tagged with takes its highest r
  over all scales.

  Returns:
    column -> ``{scale, site, layer, depth, space, pearson, pearson_ci, pearson_ci_words, probe_r,
    static, unembedding}``; ``static`` and ``unembedding`` are ``{pearson, pearson_ci}`` of the same
    scale and column in those spaces, or None when that space is not among the points.
  """
  hidden = [p for p in points if p["space"] == "hidden"] or points
  by_column: dict[str, list[tuple[dict, dict]]] = {}
  for p in hidden:
    for row in p["alignment"]:
      by_column.setdefault(f"{row['norm']}:{row['column']}", []).append((p, row))

  def beside(space: str, scale: str, column: str) -> dict[str, Any] | None:
    row = next((r for q in points if q["space"] == space for r in q["alignment"]
                if r["scale"] == scale and f"{r['norm']}:{r['column']}" == column), None)
    return None if row is None else {"pearson": row["pearson"], "pearson_ci": row["pearson_ci"]}

  best = {}
  for column, pairs in by_column.items():
    tagged = [(p, r) for p, r in pairs if r["matches_tag"]] or pairs
    p, r = max(tagged, key=lambda pr: pr[1]["pearson"])
    best[column] = {"scale": r["scale"], "site": p["site"], "layer": p["layer"], "depth": p["depth"],
                    "space": p["space"], "pearson": r["pearson"], "pearson_ci": r["pearson_ci"],
                    "pearson_ci_words": r.get("pearson_ci_words"), "probe_r": r["probe_r"],
                    "static": beside("input_embedding", r["scale"], column),
                    "unembedding": beside("unembedding", r["scale"], column)}
  return best


def run_layers(model, opts: LayerOptions, progress: bool = True) -> dict[str, Any]:
  """Alignment and structure at the input embedding, every site of the residual stream and the
  unembedding (see the module docstring); ``progress`` prints progress lines (on process 0).

  Returns:
    JSON-friendly dict: ``layers`` (one entry per site in depth order: ``depth``, ``site``,
    ``layer`` (block index, -1 for final, None elsewhere), ``space``, ``alignment`` (the rows of
    ``align.align``), ``probe_r`` (norm column -> probe r), ``nulls``, ``pca_cumulative``,
    ``pca_cumulative_1_2_3``, ``random_pca_cumulative_1_2_3``, ``epa_congruence`` (factor ->
    Tucker congruence, or None), ``participation_ratio``, ``pair_null``, ``epa_null``,
    ``geometry`` (``{n_pairs, relation: {cosine, projection: {r, ci, slope, slope_ci, mantel_p,
    n_perm, n_pairs}}, cosines, projection_r}``, or None when skipped), ``space_provenance``),
    ``best`` (``best_layers``), ``best_geometry`` (``best_geometry``), ``geometry`` (the tagged
    scales and columns, the human inter-scale r shared by every site, ``skipped``: None or the
    reason, settings), ``templates``, ``statistics`` (the token sample), ``coverage``,
    ``directions``, ``settings``, ``scales_files``, ``timing`` and ``seconds``.

  Raises:
    InputError: bad options (``check_options``), a norm table below ``min_coverage``, a scale without
      usable pole words, NaN/inf states.
  """
  check_options(opts)
  start = time.perf_counter()
  key = jax.random.key(opts.seed)
  sets = {"align": scales_io.load_scales(opts.align_scales),
          "structure": scales_io.load_scales(opts.structure_scales)}
  if opts.n_pair_sets > 0:
    sets["wordnet"] = scales_io.load_scales("wordnet")
  rated = [_rated(model, name, opts) for name in opts.norms]
  geometry, geometry_info = layers_geometry.build_inputs(model, sets["align"], rated, opts,
                                                         jax.random.fold_in(key, 4))
  seqs = list(dict.fromkeys(t for wt in [r.tokens for r in rated] + [_pole_words(model, s, opts.policy)
                                                                      for s in sets.values()]
                            for t in _hidden_ids(wt)))
  sites = layers_capture.site_names(model.config.n_layers)
  templates = tuple(opts.templates)

  t0 = time.perf_counter()
  transforms, n_stats = layers_capture.site_statistics(
      model, templates, centre=opts.centre, whiten=opts.whiten, sample=opts.stats_sample, seed=opts.seed,
      batch_size=opts.batch_size, progress=progress)
  t1 = time.perf_counter()
  bar = Progress.maybe(progress, "layers: words in every template", len(seqs) * len(templates),
                       unit="sequences")
  bar.update(0)
  states = layers_capture.capture_sites(model, seqs, templates, opts.batch_size, bar)
  bar.close()
  t2 = time.perf_counter()
  bad = ~np.isfinite(states).all(axis=2)
  if bad.any():
    s, i = (int(v[0]) for v in np.nonzero(bad))
    raise InputError(f"site {sites[s]}: the state of token ids {seqs[i]} has NaN or inf entries "
                     f"({int(bad.sum())} states affected); load the model with --dtype=float32.")

  rows = {t: i for i, t in enumerate(seqs)}
  spaces = [spaces_lib.make_space(model, "input_embedding", centre=opts.centre, whiten=opts.whiten)]
  for s, site in enumerate(sites):
    spaces.append(spaces_lib.Space(
        name="hidden", layer=layers_capture.site_layer(site), site=site, centred=opts.centre,
        whitened=opts.whiten, stats_tokens=n_stats, tied=bool(model.config.tie_embeddings),
        seed=opts.seed if n_stats else None, transform=transforms[s],
        states=spaces_lib.StateTable(rows, states[s])))
  spaces.append(spaces_lib.make_space(model, "unembedding", centre=opts.centre, whiten=opts.whiten))

  points, directions = [], {}
  bar = Progress.maybe(progress, "layers: alignment and structure", len(spaces), unit="sites")
  bar.update(0)
  for depth, space in enumerate(spaces):
    point, dirs = _measure(model, space, sets, rated, opts, key, progress=progress, geometry=geometry)
    site = space.site or space.name
    points.append({"depth": depth, "site": site, "layer": space.layer if space.name == "hidden" else None,
                   **point})
    directions.setdefault(space.name, dirs)
    bar.update(depth + 1)
  bar.close()
  hidden = directions["hidden"]
  return {
      "layers": points,
      "best": best_layers(points),
      "best_geometry": layers_geometry.best_geometry(points),
      "geometry": geometry_info,
      "templates": list(templates),
      "sites": [p["site"] for p in points],
      "statistics": {"tokens": n_stats, "seed": opts.seed, "templates": list(templates),
                     "sample": "non-special vocabulary tokens below vocab_size, drawn without replacement "
                               "(spaces.sample_tokens), each run through every template at its own position"},
      "coverage": {r.name: r.report for r in rated},
      "directions": {"align": hidden["align"], "structure": hidden["structure"]},
      "settings": hidden["settings"],
      "scales_files": {k: str(v.source) for k, v in sets.items()},
      "n_sequences": len(seqs),
      "timing": {"statistics_s": round(t1 - t0, 2), "capture_s": round(t2 - t1, 2),
                 "analysis_s": round(time.perf_counter() - t2, 2)},
      "seconds": round(time.perf_counter() - start, 2),
  }
