"""The geometry relation of the layer run (``layers.run_layers``), site by site.

The human side (``geometry.human_side``: the inter-scale r of the tagged columns over the run's sampled
words, and its word draws) is built once (``build_inputs``); every site then measures its own axes
against it (``geometry_at``), and ``best_geometry`` picks the site where the cosine relation is
strongest. Below ``MIN_GEOMETRY_SCALES`` tagged scales the relation is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxsem.analyses import geometry as geometry_lib
from jaxsem.analyses import geometry_inputs
from jaxsem.analyses import lexicon
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib

if TYPE_CHECKING:  # the layer run builds on this module
  from jaxsem.analyses.layers import LayerOptions, RatedTable

OFF = "turned off (--geometry=false)"  # the skip reason when the relation was not asked for
MIN_GEOMETRY_SCALES = 4  # six pairs: three pairs give a relation too loose to report


@dataclasses.dataclass(frozen=True)
class GeometryInputs:
  """What the geometry relation shares across sites: the human side and the sampled words."""
  human: geometry_lib.HumanSide
  tokens: lexicon.WordTokens
  covered: np.ndarray


def build_inputs(model, scale_set, rated: list[RatedTable], opts: LayerOptions,
                 key: jax.Array) -> tuple[GeometryInputs | None, dict[str, Any]]:
  """The human side of the geometry relation over the run's sampled words, or None and why not."""
  tables = {r.name: r for r in rated}
  tagged, left = geometry_inputs.tagged_scales(scale_set, tuple(tables))
  kept = []
  for s in tagged:
    table, _, column = s.norm.partition(":")
    if column in tables[table].columns:
      kept.append(s)
    else:
      left[s.name] = f"tagged {s.norm}, a column the {table} table does not have"
  k = len(kept)
  info: dict[str, Any] = {
      "scales": [s.name for s in kept], "columns": [s.norm for s in kept], "n_scales": k,
      "n_pairs": k * (k - 1) // 2, "left_out": left, "skipped": None,
      "words": "the run's sample: the union of every table's sampled words, each rated by every table "
               "that rates it; the human r of a pair is over the sampled words both tables rate",
      "settings": {"n_boot": opts.n_boot, "n_perm": opts.geometry_n_perm, "seed": opts.seed,
                   "metric": opts.metric, "min_scales": MIN_GEOMETRY_SCALES,
                   "bootstrap": {"unit": geometry_lib.BOOTSTRAP_UNIT, "interval": "95% percentile",
                                 "draws": "the same word and pole-word draws at every site"},
                   "mantel": {"permuted": "the model matrix's scale labels, rows and columns together",
                              "p": "(1 + #null >= observed) / (1 + n_perm)", "alternative": "greater"}},
  }
  if not opts.geometry:
    info["skipped"] = OFF
  elif k < MIN_GEOMETRY_SCALES:
    info["skipped"] = (f"only {k} scale(s) of {scale_set.name} carry a norm tag of {', '.join(tables)} "
                       f"({k * (k - 1) // 2} pairs); the relation needs at least {MIN_GEOMETRY_SCALES} "
                       "tagged scales (6 pairs): give more tables, e.g. "
                       "--norms=warriner,dal,brysbaert,lancaster (11-12 tagged columns)")
  if info["skipped"]:
    return None, info
  words = list(dict.fromkeys(w for r in rated for w in r.tokens.used_words))
  rw = geometry_inputs.rated_words(info["columns"], words=words)
  human = geometry_lib.human_side(info["scales"], info["columns"], rw, key=key, n_boot=opts.n_boot)
  wt = lexicon.resolve_words(model.tokenizer, list(rw.words), opts.policy)
  info["human_r"] = {"matrix": human.r.tolist(), "n": human.n.tolist(), "ci": human.ci.tolist()}
  info["n_words"] = len(rw.words)
  info["tables"] = {t: int(m.sum()) for t, m in rw.tables.items()}
  return GeometryInputs(human, wt, np.asarray(wt.used)), info


def geometry_at(model, space, dirs: scale_directions.Directions, inputs: GeometryInputs,
                 opts: LayerOptions) -> dict[str, Any]:
  """The geometry relation of one site: ``{n_pairs, relation, relation_no_shared_poles, cosines,
  projection_r}`` or a ``note``."""
  names = inputs.human.names
  missing = [n for n in names if n not in dirs.names]
  if missing:
    return {"note": f"scale(s) {', '.join(missing)} could not be built at this site"}
  idx = [dirs.names.index(n) for n in names]
  sub = dataclasses.replace(dirs, names=names, vectors=dirs.vectors[np.asarray(idx)],
                            factors=tuple(dirs.factors[i] for i in idx), norms=inputs.human.tags,
                            pole_vectors={n: dirs.pole_vectors[n] for n in names if n in dirs.pole_vectors})
  vectors = spaces_lib.word_vectors(model, inputs.tokens, space)
  res = geometry_lib.model_side(inputs.human, sub, inputs.covered, vectors, n_perm=opts.geometry_n_perm,
                                metric=opts.metric)
  keys = ("r", "ci", "slope", "slope_ci", "mantel_p", "n_perm", "n_pairs")
  apart = res["relation_no_shared_poles"]
  return {"n_pairs": len(res["pairs"]),
          "relation": {side: {k: res["relation"][side][k] for k in keys}
                       for side in ("cosine", "projection")},
          # Without the pairs whose scales share a pole word (they carry the relation in the static space).
          "relation_no_shared_poles": {"n_pairs_dropped": apart["n_pairs_dropped"],
                                       **{side: {k: apart[side][k] for k in keys}
                                          for side in ("cosine", "projection")}},
          "cosines": res["cosines"]["matrix"], "projection_r": res["projection_r"]["matrix"]}


def best_geometry(points: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The site of the residual stream where the geometry relation's cosine r is highest.

  The candidates are the hidden sites (all points when there are none), as in ``layers.best_layers``;
  the static input embedding and the unembedding are reported beside the winner.

  Returns:
    ``{site, layer, depth, space, n_pairs, cosine, projection, static, unembedding}`` (``cosine``
    and ``projection``: the relation blocks; ``static``/``unembedding``: ``{cosine, projection}`` of
    those spaces or None), or None when no site carries a relation.
  """
  def has(p):
    return bool(p.get("geometry")) and "relation" in p["geometry"] and np.isfinite(
        p["geometry"]["relation"]["cosine"]["r"])

  hidden = [p for p in points if p["space"] == "hidden" and has(p)] or [p for p in points if has(p)]
  if not hidden:
    return None

  def beside(space: str) -> dict[str, Any] | None:
    p = next((q for q in points if q["space"] == space and has(q)), None)
    return None if p is None else dict(p["geometry"]["relation"])

  p = max(hidden, key=lambda q: q["geometry"]["relation"]["cosine"]["r"])
  rel = p["geometry"]["relation"]
  return {"site": p["site"], "layer": p["layer"], "depth": p["depth"], "space": p["space"],
          "n_pairs": p["geometry"]["n_pairs"], "cosine": rel["cosine"], "projection": rel["projection"],
          "static": beside("input_embedding"), "unembedding": beside("unembedding")}
