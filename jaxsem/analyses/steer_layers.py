"""Steering at every block of a residual site: the off-target grid of every block in one compiled
program, a per-block off-target analysis and its trend over depth, then the full single-site run
(``steer.run_steer``) at the compare blocks.

``check_layers`` reads ``--layers`` and ``--compare_layers`` (``SteerOptions.layers`` and
``compare_layers``); ``steer.run_steer`` hands a run with ``layers`` to ``run_steer_layers``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxsem.analyses import grid as grid_lib
from jaxsem.analyses import offtarget_depth
from jaxsem.analyses import readouts
from jaxsem.analyses import steer_effects
from jaxsem.analyses.steering_methods import unit_rows as _unit
from jaxsem.errors import InputError
from jaxsem.progress import Progress

if TYPE_CHECKING:  # steer checks its options with check_layers, so it imports this module
  from jaxsem.analyses.steer import SteerOptions


def _layer_items(text: str, flag: str) -> tuple[int, ...] | None:
  """``all`` -> None; ``0,4,8`` -> ``(0, 4, 8)``; anything else a one-line error."""
  text = (text or "").strip()
  if text == "all":
    return None
  items = [t.strip() for t in text.split(",")]
  if not all(t.isdigit() for t in items):
    raise InputError(f"{flag}={text}: give all or comma-separated block numbers, e.g. {flag}=0,4,8.")
  return tuple(int(t) for t in items)


def check_layers(opts: SteerOptions, n_layers: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``--layers`` and ``--compare_layers`` -> ``(layers, compare_layers)``, sorted blocks.

  Without ``n_layers`` (before a model is loaded: the launcher passes the architecture's
  count) only the syntax and the flags' combination are checked, and ``all`` gives ``()``.
  A ``resid_post`` site takes blocks ``0..n_layers-2`` (the last block's output at the word
  never reaches the read position), ``resid_pre`` ``0..n_layers-1``.

  Raises:
    InputError: junk, a block out of range, ``--layers`` with ``--site=embed``, with
      ``--layer`` or with a representation readout, compare blocks not among the layers.
  """
  if not (opts.layers or "").strip():
    if (opts.compare_layers or "").strip():
      raise InputError(f"--compare_layers={opts.compare_layers} applies with --layers; give --layers=all or "
                       "a list, or drop --compare_layers.")
    return (), ()
  if opts.site not in ("resid_pre", "resid_post"):
    raise InputError(f"--layers applies to --site=resid_pre or resid_post, not --site={opts.site}.")
  if opts.layer is not None:
    raise InputError(f"--layer={opts.layer} and --layers={opts.layers} both name blocks; give one of them.")
  if opts.readout != "logodds":
    raise InputError(f"--layers steers at every block with the logodds readout; --readout={opts.readout} "
                     "reads at the site, so give one --layer for it.")
  asked = _layer_items(opts.layers, "--layers")
  compare = _layer_items(opts.compare_layers, "--compare_layers") if opts.compare_layers.strip() else ()
  if n_layers is None:
    return asked or (), compare or ()
  top = n_layers - 2 if opts.site == "resid_post" else n_layers - 1
  layers = tuple(range(top + 1)) if asked is None else tuple(sorted(set(asked)))
  bad = [x for x in layers if x > top]
  if bad or not layers:
    raise InputError(f"--layers={opts.layers}: block {bad[0] if bad else '?'} is out of range for "
                     f"--site={opts.site}; use 0..{top} (or all).")
  if compare is None:
    compare = layers
  compare = tuple(sorted(set(compare))) or layers[:1]
  if not set(compare) <= set(layers):
    raise InputError(f"--compare_layers={opts.compare_layers}: block {min(set(compare) - set(layers))} is "
                     f"not among --layers={opts.layers}; compare at blocks the grid runs at.")
  return layers, compare

# The off-target analysis's keys a per-layer entry keeps (the matrices and pairs stay with the compare run).
_LAYER_KEYS = ("slope", "intercept", "r", "r2", "ci", "ci_words", "n_pairs", "n_words", "shuffled_labels",
               "direct_path")


def _layer_brief(block: dict[str, Any] | None) -> dict[str, Any] | None:
  if block is None:
    return None
  out = {k: block[k] for k in _LAYER_KEYS if k in block}
  out["p"] = (block.get("shuffled_labels") or {}).get("p_value")
  return out


def run_steer_layers(model, opts: SteerOptions, checkpoint_dir: str | os.PathLike | None = None,
                     progress: bool = True) -> dict[str, Any]:
  """The off-target grid at every block of ``opts.layers``, then ``run_steer`` at ``compare_layers``.

  Each block's scale directions are built in that block's space (as ``--layer=L`` builds
  them) and its strengths are in that block's site norm. All blocks' rows (words x
  blocks x steered scales x strengths) run through one compiled program
  (``Grid(..., layers=...)``: the prefix cache is computed once, each row is steered at
  its own block), read with the logodds readout (and the disjoint readout words where the
  scales give them). Per block: ``offtarget.analyse`` of D against the cosines in that
  block's space, and the on-target change per unit strength.

  Returns:
    ``run_steer``'s result at the first compare block, plus ``layers``: one entry per block
    ``{layer, site, site_norm, offtarget: {r, slope, ci, p, ...}, offtarget_disjoint,
    on_target_per_unit: {mean, ci, per_scale}, n_pairs, cosine_mean_abs_offtarget}``,
    ``layers_trend`` (Spearman rho of the off-target r and slope on depth), ``layers_grid``
    (how the grid ran) and ``compare``: block -> the compare run's off-target, controls and
    methods at each further compare block.
  """
  from jaxsem.analyses import steer as steer_lib  # run_steer hands this run here, and runs each compare block
  start = time.perf_counter()
  scale_set = steer_lib.check_options(opts)
  layers, compare = check_layers(opts, model.config.n_layers)
  alphas = np.asarray(opts.alphas, np.float64)
  scales = list(scale_set)
  names = [sc.name for sc in scales]
  steer = list(opts.steer) or names
  steered_index = np.array([names.index(x) for x in steer])
  words, ids, _ = steer_lib._words(model, opts)
  tok = model.tokenizer
  prompts = readouts.build_prompts(tok, opts.template, ids)
  shared = readouts.logodds_readout(tok, scales, "direction")
  _, left_out, _ = readouts.disjoint_scales(tok, scales)
  disjoint = readouts.logodds_readout(tok, scales, "disjoint") if len(left_out) < len(scales) else None
  readout = shared if disjoint is None else readouts.concat(shared, disjoint)
  w, s, a, j = len(words), len(steer), len(alphas), len(names)
  dis_cols, _ = steer_effects.disjoint_columns(steer, j, disjoint)
  wg = w if opts.grid_words <= 0 else min(w, opts.grid_words)
  grid = grid_lib.Grid(model, prompts, readout, opts.site, batch_size=opts.batch_size, layers=layers)

  units, norms = [], []
  for layer in layers:  # each block's directions in its own space, strengths in its own site norm
    site = f"{opts.site}.{layer}"
    units.append(_unit(steer_lib._directions(model, scales, site, opts.template)))
    norms.append(steer_lib._site_unit(model, prompts, site))
  rows = [grid_lib.grid_rows(wg, u[steered_index] * n, alphas) for u, n in zip(units, norms)]
  word_index = np.concatenate([r[0] for r in rows])
  vectors = np.concatenate([r[1] for r in rows])
  layer_index = np.repeat(np.asarray(layers, np.int32), wg * s * a)

  def evaluate(wi, vec, li, what):
    bar = Progress.maybe(progress, f"steer {what}", len(wi), unit="prompts")
    bar.update(0)
    out = grid.evaluate(wi, vec, progress=bar, checkpoint_dir=checkpoint_dir, name=what, layer_index=li)
    bar.close()
    return readout.ratings(out)[:, :j], out[0]

  # Unsteered rows do not depend on the block (a zero vector anywhere changes nothing).
  base, base_lo = evaluate(np.arange(wg), np.zeros((wg, model.config.d_model)),
                           np.full(wg, layers[0], np.int32), "layers_baseline")
  ratings, lo = evaluate(word_index, vectors, layer_index, "layers_grid")
  ratings = ratings.reshape(len(layers), wg, s, a, j)
  lo = lo.reshape(len(layers), wg, s, a, -1)
  key = jax.random.key(opts.seed)
  r_dirs = readouts.unembedding_directions(model, shared.poles)
  d_dirs = None if dis_cols is None else readouts.unembedding_directions(model, disjoint.poles)
  entries = []
  for k, layer in enumerate(layers):
    grid_lib.check_finite(ratings[k], alphas)
    effects = ratings[k] - base[:, None, None, :]
    cos = units[k][steered_index] @ units[k].T
    direct = steer_effects.direct_path(units[k][steered_index], r_dirs, steered_index)
    ot = steer_effects.analyse(effects, alphas, cos, steered_index, direct, key, opts, steer, names)
    dis = None
    if dis_cols is not None:
      d_idx = [names.index(n) for n in disjoint.names]
      try:
        d_direct = steer_effects.direct_path(units[k][steered_index[dis_cols.rows]], d_dirs, dis_cols.on)
        dis = steer_effects.analyse(dis_cols.view(lo[k] - base_lo[:, None, None, :]), alphas,
                                    cos[dis_cols.rows][:, d_idx], dis_cols.on, d_direct, key, opts,
                                    [steer[x] for x in dis_cols.rows], list(disjoint.names))
      except InputError:  # e.g. too few pairs; the shared analysis stands
        dis = None
    off = np.abs(cos[np.arange(j)[None, :] != steered_index[:, None]])
    entries.append({
        "layer": int(layer), "site": f"{opts.site}.{layer}", "site_norm": norms[k],
        "offtarget": _layer_brief(ot), "offtarget_disjoint": _layer_brief(dis),
        "on_target_per_unit": offtarget_depth.on_target_per_unit(effects, alphas, steered_index,
                                                                 jax.random.fold_in(key, 3), opts.n_boot),
        "n_pairs": ot["n_pairs"], "cosine_mean_abs_offtarget": float(off.mean()) if off.size else 0.0})
  rows_layered = grid.rows_computed, grid.rows_resumed

  runs = {}
  for layer in compare:
    sub = dataclasses.replace(opts, layer=layer, layers="", compare_layers="")
    where = None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"compare_{opts.site}.{layer}")
    runs[layer] = steer_lib.run_steer(model, sub, checkpoint_dir=where, progress=progress)
  result = dict(runs[compare[0]])
  result["layers"] = entries
  result["layers_site"] = opts.site
  result["compare_layers"] = list(compare)
  result["layers_trend"] = {
      "r": offtarget_depth.depth_trend(layers, [e["offtarget"]["r"] for e in entries]),
      "slope": offtarget_depth.depth_trend(layers, [e["offtarget"]["slope"] for e in entries]),
      "on_target_per_unit": offtarget_depth.depth_trend(layers,
                                                        [e["on_target_per_unit"]["mean"] for e in entries])}
  result["layers_grid"] = {"grid_words": wg, "rows": int(len(word_index)), "compiled_programs": 1,
                           "note": "every block's rows in one compiled program: a batch axis of blocks (each"
                                   " row's vector masked to its own block), one prefix cache"}
  kept = ("site", "site_norm", "offtarget", "offtarget_disjoint", "controls", "methods")
  result["compare"] = {str(layer): {k: runs[layer].get(k) for k in kept} for layer in compare[1:]}
  resumed = dict(result["resumed"])
  resumed["rows_computed"] = sum(r["resumed"]["rows_computed"] for r in runs.values()) + rows_layered[0]
  resumed["rows_from_checkpoint"] = (sum(r["resumed"]["rows_from_checkpoint"] for r in runs.values())
                                     + rows_layered[1])
  resumed["checkpoint_dir"] = None if checkpoint_dir is None else str(checkpoint_dir)
  result["resumed"] = resumed
  result["seconds"] = round(time.perf_counter() - start, 2)
  return result
