"""Steered forward passes: off-target effects against direction cosines, and steering
that avoids them.

For words ``W``, steered scales ``S`` (a subset of the readout scales ``J``) and
strengths ``A`` (in units of the site's typical residual norm), every word is steered
along each scale's unit direction at the site and rated on every readout scale. Then:

* ``readout_validation``: the unsteered ratings against the human norms;
* ``offtarget``: ``D[i -> j]`` (rating change on j per unit strength, over the on-target
  change) regressed on ``cos(d_i, d_j)``, with bootstrap CIs and a shuffled-label null
  (``analyses.offtarget``), and the direct-path control (``steer_effects.direct_path``: what the
  vector moves through the output embedding alone);
* ``offtarget_disjoint``: the same on the readout words disjoint from the direction words
  (read in the same forward passes); ``disjoint_readout`` says which scales have them;
* ``controls``: random unit directions at the same strengths;
* ``methods``: on held-out words, at equal predicted on-target effect, the off-target
  effect of plain antonym steering vs orthogonalised directions (the other scales'
  directions projected out) vs a vector fitted with optax on training words to reach
  the on-target change while keeping the others still; also read on the disjoint
  readout and on a second template, neither of which the fit saw.

The fitted vector uses the model's linear response at the unsteered point: the
Jacobian ``G[w, j] = d rating_j / d v`` of each training word over the shared readout's
columns only (one batched backward pass per column). With ``E_wj(v) = G[w, j] . v`` it
minimises the mean squared off-target change subject to the mean on-target change (a
penalty), plus a small pull towards the plain vector's norm; held-out words are then run
through the real, nonlinear model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsem import experiment_config
from jaxsem.analyses import grid as grid_lib
from jaxsem.analyses import lexicon
from jaxsem.analyses import offtarget
from jaxsem.analyses import readouts
from jaxsem.analyses import scale_directions
from jaxsem.analyses import spaces as spaces_lib
from jaxsem.analyses import steer_effects
from jaxsem.analyses import steer_layers
from jaxsem.analyses import steering_methods
from jaxsem.analyses.steering_methods import unit_rows as _unit
from jaxsem.errors import InputError
from jaxsem.io import assets, norms
from jaxsem.io import scales as scales_io
from jaxsem.models import interventions as iv_lib
from jaxsem.models import site_norms
from jaxsem.models.model import pad_batch
from jaxsem.progress import Progress

METHODS = ("plain", "orthogonal", "fitted")


@dataclasses.dataclass(frozen=True)
@experiment_config.config_defaults("steer")
class SteerOptions:
  """What to steer, where, how strongly, and how to read it.

  Attributes:
    scales: scale set of the readout scales (and directions).
    steer: names of the scales to steer along (empty: all readout scales).
    words: a norm table to sample words from (``warriner``), or an explicit word list.
    n_words: words sampled from a norm table (in random order).
    grid_words: the first ``grid_words`` of them run the off-target grid and the random
      control (0: all); every word takes part in the methods comparison, whose fitted
      vector needs many training words.
    site: ``embed`` or ``resid_post`` / ``resid_pre`` (with ``layer``).
    layer: block of a residual site.
    layers: the off-target grid at each of these blocks of a residual site, in one compiled
      program: ``all`` or a comma-separated list (``0,4,8``); empty: ``layer`` alone.
      Directions are built at each block in that block's space (see ``steer_layers.run_steer_layers``).
    compare_layers: with ``layers``, the blocks the full single-site run (controls and the
      plain/orthogonal/fitted comparison) is made at: ``all`` or a list among ``layers``
      (empty: the first of ``layers``).
    alphas: strengths in units of the site's median residual norm.
    readout: ``logodds`` (pole log-odds) or ``representation``.
    read_layer: representation readout: block index, -1 (final norm) or None (the site).
    methods: steering methods compared on held-out words (``METHODS``).
    compare_alpha: strength of the methods comparison (site-norm units).
    orth_basis: what ``orthogonal`` projects out: ``others`` (the other scales'
      directions) or ``top3`` (the top-3 principal axes of all scales' directions).
    template: completion template with one ``{word}`` slot.
    heldout_template: a second template, used in no fit: the methods are compared on it
      too (empty: skip that comparison).
    n_random: random directions in the control (at least 64 for a CI worth printing).
    fit_share: share of the words the fitted vector is trained on (the rest are held out).
    fit_steps: optax steps of the fit.
    off_weight: weight of the off-target term in the fit (on-target term has weight 1).
    fit_ridge: weight of the pull towards the plain vector, ``|v - plain|^2 / |plain|^2``.
    refine: chord refinements of the fitted vector against the real model.
    n_boot: bootstrap resamples (over words).
    n_perm: shuffled-label permutations.
    seed: seed of word sampling, splits, random directions, bootstraps.
    batch_size: rows per compiled call.
    rating_check: also validate the rating-prompt readout (a 1-7 rating asked in the
      model's chat format, read as the expected answer) on one scale per factor.
  """

  scales: str
  steer: tuple[str, ...]
  words: tuple[str, ...]
  n_words: int
  grid_words: int
  site: str
  layer: int | None
  layers: str
  compare_layers: str
  alphas: tuple[float, ...]
  readout: str
  read_layer: int | None
  methods: tuple[str, ...]
  compare_alpha: float
  orth_basis: str
  template: str
  heldout_template: str
  n_random: int
  fit_share: float
  fit_steps: int
  off_weight: float
  fit_ridge: float
  refine: int
  n_boot: int
  n_perm: int
  seed: int
  batch_size: int
  rating_check: bool

  def provenance(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- inputs


def site_name(site: str, layer: int | None, n_layers: int) -> str:
  """``--site``/``--layer`` -> an intervention site name, or a one-line error."""
  if site == "embed":
    if layer is not None:
      raise InputError("--layer applies to --site=resid_pre or resid_post, not --site=embed.")
    return "embed"
  if site not in ("resid_pre", "resid_post"):
    raise InputError(f"--site={site!r} is not a steering site; use embed, resid_pre or resid_post.")
  if layer is None or not 0 <= layer < n_layers:
    raise InputError(f"--layer={layer} is out of range for --site={site}; use 0..{n_layers - 1}.")
  if site == "resid_post" and layer == n_layers - 1:
    raise InputError(f"--site=resid_post --layer={layer}: the last block's output at the word never reaches"
                     f" the position the rating is read at; use --layer=0..{n_layers - 2}.")
  return f"{site}.{layer}"


def _words(model, opts: SteerOptions) -> tuple[list[str], list[tuple[int, ...]], dict[str, np.ndarray]]:
  """(words, their token ids, Warriner columns of the words (NaN where unrated))."""
  norm_words, norm_cols = norms.read_norms("warriner")
  lookup = {w: i for i, w in enumerate(norm_words)}
  if len(opts.words) == 1 and opts.words[0] in norms.NORMS:
    table_words, _ = norms.read_norms(opts.words[0])
    wt = lexicon.resolve_words(model.tokenizer, table_words, "single")
    rng = np.random.default_rng(opts.seed)
    pick = rng.choice(wt.n_used, size=min(opts.n_words, wt.n_used), replace=False)  # random order
    words = [wt.used_words[i] for i in pick]
    ids = [wt.used_token_ids[i] for i in pick]
  else:
    wt = lexicon.resolve_words(model.tokenizer, list(opts.words), "single")
    if wt.dropped:
      word, why = next(iter(wt.dropped.items()))
      raise InputError(f"--words: {word!r} {why}; steering needs single-token words (drop it or pick"
                       " another word).")
    words, ids = wt.used_words, wt.used_token_ids
  if len(words) < 4:
    raise InputError(f"--words: only {len(words)} usable words; steering statistics need at least 4.")
  rows = [lookup.get(w) for w in words]
  cols = {c: np.array([v[i] if i is not None else np.nan for i in rows], np.float64)
          for c, v in norm_cols.items()}
  return words, ids, cols


def _directions(model, scales, site: str, template: str) -> np.ndarray:
  """``[J, D]`` scale directions in the space of ``site`` (pole means, positive minus negative)."""
  if site == "embed":
    space = spaces_lib.make_space(model, "input_embedding")
  else:
    kind, layer = iv_lib.parse_site(site)
    layer = layer if kind == "resid_post" else layer - 1
    if layer < 0:  # resid_pre.0 is the embedding
      space = spaces_lib.make_space(model, "input_embedding")
    else:
      head = template.split("{word}")[0] + "{word}"  # the word read where it is steered
      space = spaces_lib.make_space(model, "hidden", layer=layer, template=head)
  dirs = scale_directions.build(model, space, list(scales), policy="single", what="steering scales")
  return np.asarray(dirs.vectors, np.float64)


def _site_unit(model, prompts: readouts.Prompts, site: str, n: int = 64) -> float:
  seqs = [list(prompts.prefix) + list(s) for s in prompts.suffixes[:n]]
  ids, mask = pad_batch(seqs, model.pad_id)
  return float(site_norms.site_norm(model.params, model.config, jnp.asarray(ids), jnp.asarray(mask), site))


def check_options(opts: SteerOptions) -> scales_io.ScaleSet:
  """Checks everything in ``opts`` that needs no model; returns the readout scale set.

  Launchers call it before loading the model, ``run_steer`` again for library callers.

  Raises:
    InputError: an unknown method, readout, word table or scale; bad strengths; a
      held-out template equal to the template.
  """
  unknown = sorted(set(opts.methods) - set(METHODS))
  if unknown:
    raise InputError(f"--method={unknown[0]!r} is not known; use any of {', '.join(METHODS)}.")
  if opts.readout not in readouts.READOUT_FACTORIES:
    raise InputError(f"--readout={opts.readout!r} is not known; use one of"
                     f" {', '.join(readouts.READOUT_FACTORIES)}.")
  alphas = np.asarray(opts.alphas, np.float64)
  if alphas.size == 0 or np.any(alphas == 0) or not np.all(np.isfinite(alphas)):
    raise InputError(f"--alphas={list(opts.alphas)}: give nonzero finite strengths (0 is the unsteered"
                     " baseline, always included).")
  if opts.heldout_template and opts.heldout_template == opts.template:
    raise InputError("--heldout_template is the same as --template, so it is not held out; give another"
                     " template (or an empty one to skip it).")
  _check_words(opts.words)
  steer_layers.check_layers(opts)
  if not opts.scales:
    raise InputError(f"--scales is empty; give one of {', '.join(scales_io.SCALE_SETS)} or a JSON/TSV file.")
  scale_set = scales_io.load_scales(opts.scales)
  names = [s.name for s in scale_set]
  for name in opts.steer:
    if name not in names:
      raise InputError(f"--steer: {name!r} is not a scale of --scales={opts.scales}"
                       f"{assets.did_you_mean(name, names)}; use one of its names.")
  return scale_set


def _check_words(words, least: int = 4) -> None:
  """--words: one norm table name, or at least ``least`` words; a lone word near a norm
  table's name is taken for its typo."""
  words = list(words)
  if len(words) == 1 and words[0] in norms.NORM_NAMES:
    return
  hint = assets.did_you_mean(words[0], norms.NORM_NAMES) if len(words) == 1 else ""
  if hint:
    raise InputError(f"--words={words[0]} is not a norm table{hint}; give one of "
                     f"{', '.join(norms.NORM_NAMES)}, or at least {least} words.")
  if len(words) < least:
    raise InputError(f"--words={','.join(words)}: give a norm table ({', '.join(norms.NORM_NAMES)}) or at "
                     f"least {least} comma-separated words.")


def run_steer(model, opts: SteerOptions, checkpoint_dir: str | os.PathLike | None = None,
              progress: bool = True) -> dict[str, Any]:
  """Runs the steering grid, its controls and the methods comparison (see the module docstring).

  ``progress`` prints every stage's progress lines (rate, ETA) on process 0.

  With ``checkpoint_dir``, every finished batch of the grid, the baseline, the controls
  and the methods' held-out evaluations is kept there, and a run of the same inputs
  (after being killed, or again) takes them from disk instead of computing them.
  """
  if (opts.layers or "").strip():
    return steer_layers.run_steer_layers(model, opts, checkpoint_dir=checkpoint_dir, progress=progress)
  start = time.perf_counter()
  scale_set = check_options(opts)
  alphas = np.asarray(opts.alphas, np.float64)
  site = site_name(opts.site, opts.layer, model.config.n_layers)
  scales = list(scale_set)
  names = [s.name for s in scales]
  steer = list(opts.steer) or names
  steered_index = np.array([names.index(s) for s in steer])
  words, ids, cols = _words(model, opts)
  tok = model.tokenizer
  prompts = readouts.build_prompts(tok, opts.template, ids)
  heldout_prompts = readouts.build_prompts(tok, opts.heldout_template, ids) if opts.heldout_template else None
  dirs = _directions(model, scales, site, opts.template)  # [J, D]
  units = _unit(dirs)
  cos = units[steered_index] @ units.T  # [S, J]
  shared = steer_effects.build_readout(model, opts, scales, site, units)
  # The disjoint readout words are read in the same pass as the shared ones (more logit rows only).
  _, left_out, _ = readouts.disjoint_scales(tok, scales)
  disjoint = None
  if shared.kind == "logodds" and len(left_out) < len(scales):
    disjoint = readouts.logodds_readout(tok, scales, "disjoint")
  readout = shared if disjoint is None else readouts.concat(shared, disjoint)
  grid = grid_lib.Grid(model, prompts, readout, site, batch_size=opts.batch_size)
  unit = _site_unit(model, prompts, site)
  w, s, a, j = len(words), len(steer), len(alphas), len(names)

  def rate(word_index, vectors, what):  # (ratings [N, J], pole log-odds [N, J + J'])
    bar = Progress.maybe(progress, f"steer {what}", len(word_index), unit="prompts")
    bar.update(0)
    out = grid.evaluate(word_index, vectors, progress=bar, checkpoint_dir=checkpoint_dir, name=what)
    bar.close()
    return readout.ratings(out)[:, :j], out[0]

  base, base_lo = rate(np.arange(w), np.zeros((w, model.config.d_model)), "baseline")
  wg = w if opts.grid_words <= 0 else min(w, opts.grid_words)  # the sample is in random order
  wi, vec = grid_lib.grid_rows(wg, units[steered_index] * unit, alphas)
  ratings, lo = rate(wi, vec, "grid")
  ratings, lo = ratings.reshape(wg, s, a, j), lo.reshape(wg, s, a, -1)
  grid_lib.check_finite(ratings, alphas)
  grid_lib.check_finite(lo, alphas)
  effects = ratings - base[:wg, None, None, :]
  key = jax.random.key(opts.seed)
  result: dict[str, Any] = {
      "words": words, "grid_words": wg, "scales": names, "steered": steer, "alphas": alphas.tolist(),
      "site": site, "site_norm": unit, "readout": opts.readout, "read_site": shared.read_site,
      "template": opts.template, "prefix_tokens": len(prompts.prefix), "poles": shared.poles.report,
      "scales_file": str(scale_set.source),
      "cosine": {"matrix": cos.tolist(), "mean_abs_offtarget": float(np.mean(np.abs(
          cos[np.arange(j)[None, :] != steered_index[:, None]])) if j > 1 else 0.0)},
  }
  targets = readouts.validation_targets(scales)
  result["readout_validation"] = steer_effects.validation(base_lo[:, :j], names, targets, cols)
  if opts.rating_check:
    result["rating_readout_validation"] = steer_effects.rating_validation(model, scales, ids, cols, targets,
                                                                          progress=progress)
  direct = None
  if shared.kind == "logodds":
    direct = steer_effects.direct_path(units[steered_index],
                                       readouts.unembedding_directions(model, shared.poles), steered_index)
  result["offtarget"] = steer_effects.analyse(effects, alphas, cos, steered_index, direct, key, opts, steer,
                                              names)
  result["dose_response"] = offtarget.dose_response(effects, alphas, steered_index)

  # The same analysis on the readout words that define no direction.
  dis_cols, why_not = steer_effects.disjoint_columns(steer, j, disjoint)
  info: dict[str, Any] = {"scales": [] if disjoint is None else list(disjoint.names), "left_out": left_out,
                          "words": {} if disjoint is None else disjoint.poles.report}
  if disjoint is None:
    info["note"] = (steer_effects.SHARED_NOTE if shared.kind == "logodds" else
                    "the disjoint readout words are a log-odds readout; this run reads the representation")
  else:
    info["validation"] = steer_effects.validation(base_lo[:, j:], disjoint.names, targets, cols)
    if why_not:
      info["note"] = f"no off-target analysis on the disjoint readout: {why_not}"
  result["offtarget_disjoint"] = None
  if dis_cols is not None:
    d_names = list(disjoint.names)
    d_idx = [names.index(n) for n in d_names]
    e_dis = dis_cols.view(lo - base_lo[:wg, None, None, :])
    d_direct = steer_effects.direct_path(units[steered_index[dis_cols.rows]],
                                         readouts.unembedding_directions(model, disjoint.poles), dis_cols.on)
    try:
      result["offtarget_disjoint"] = steer_effects.analyse(
          e_dis, alphas, cos[dis_cols.rows][:, d_idx], dis_cols.on, d_direct, key, opts,
          [steer[k] for k in dis_cols.rows], d_names)
    except InputError as e:  # e.g. too few pairs; the shared analysis above stands
      info["note"] = f"no off-target analysis on the disjoint readout: {e}"
  result["disjoint_readout"] = info

  # Controls: random unit directions at the same strengths.
  controls: dict[str, Any] = {"shuffled_labels": result["offtarget"].get("shuffled_labels")}
  if opts.n_random > 0:
    rnd = _unit(np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (opts.n_random, dirs.shape[1]))))
    wi, vec = grid_lib.grid_rows(wg, rnd * unit, alphas)
    r_eff = rate(wi, vec, "random")[0].reshape(wg, opts.n_random, a, j) - base[:wg, None, None, :]
    controls["random_directions"] = steer_effects.random_control(r_eff, alphas, effects, steered_index,
                                                                 jax.random.fold_in(key, 2), opts)
  result["controls"] = controls

  grids = [grid]
  if len(opts.methods) > 1 or opts.methods != ("plain",):
    heldout = None
    if heldout_prompts is not None:
      h_read = disjoint if dis_cols is not None else readouts.logodds_readout(tok, scales, "direction")
      h_grid = grid_lib.Grid(model, heldout_prompts, h_read, site, batch_size=opts.batch_size)
      grids.append(h_grid)
      h_cols = (steering_methods.Columns(rows=dis_cols.rows, cols=dis_cols.cols - j, on=dis_cols.on)
                if dis_cols is not None else
                steering_methods.Columns(rows=np.arange(s), cols=np.arange(j), on=steered_index))
      heldout = steering_methods.HeldOut(h_grid, h_cols, "disjoint" if dis_cols is not None else "shared")
    result["methods"] = steering_methods.compare(grid, opts, units, steered_index, unit, (base, base_lo), w,
                                                 checkpoint_dir=checkpoint_dir, n_shared=j, disjoint=dis_cols,
                                                 heldout=heldout, progress=progress)
  result["resumed"] = {"checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
                       "rows_from_checkpoint": sum(g.rows_resumed for g in grids),
                       "rows_computed": sum(g.rows_computed for g in grids)}
  result["seconds"] = round(time.perf_counter() - start, 2)
  return result
