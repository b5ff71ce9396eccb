"""Steered forward passes: off-target effects against direction cosines, and steering
that avoids them.

For words ``W``, steered scales ``S`` (a subset of the readout scales ``J``) and
strengths ``A`` (in units of the site's typical residual norm), every word is steered
along each scale's unit direction at the site and rated on every readout scale. Then:

* ``readout_validation``: the unsteered ratings against the human norms;
* ``offtarget``: ``D[i -> j]`` (rating change on j per unit strength, over the on-target
  change) regressed on ``cos(d_i, d_j)``, with bootstrap CIs and a shuffled-label null
  (``analyses.offtarget``), and the direct-path control (``direct_path``: what the
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
import inspect
import os
import time
from collections.abc import Sequence
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
from jaxsem.analyses import steering_compare
from jaxsem.analyses import steering_methods
from jaxsem.analyses.steering_methods import ORTH_BASES  # noqa: F401 - the launcher's flag choices
from jaxsem.analyses.steering_methods import unit_rows as _unit
from jaxsem.errors import InputError
from jaxsem.io import assets
from jaxsem.io import scales as scales_io
from jaxsem.kernels import stats
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
      Directions are built at each block in that block's space (see ``run_steer_layers``).
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


def _words(model, opts: SteerOptions) -> tuple[list[str], list[tuple[int, ...]], dict[str, np.ndarray]]:
  """(words, their token ids, Warriner columns of the words (NaN where unrated))."""
  norm_words, norm_cols = assets.read_norms("warriner")
  lookup = {w: i for i, w in enumerate(norm_words)}
  if len(opts.words) == 1 and opts.words[0] in assets.NORMS:
    table_words, _ = assets.read_norms(opts.words[0])
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


# ----------------------------------------------------------------------------- methods


def _validation(base: np.ndarray, names: Sequence[str], targets: dict[str, str],
                cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  out = []
  for j, name in enumerate(names):
    target = targets.get(name)
    if not target or not target.startswith("warriner:"):
      continue
    y = cols[target.split(":", 1)[1]]
    ok = np.isfinite(y)
    if ok.sum() < 4:
      continue
    out.append({"scale": name, "norm": target, "n": int(ok.sum()),
                "pearson": float(stats.pearson(base[ok, j], y[ok]))})
  return out


def rating_validation(model, scales, ids, cols, targets: dict[str, str], batch_size: int = 64,
                      max_scales: int = 3, progress: bool = False) -> dict[str, Any]:
  """The rating-prompt readout on unsteered words: one scale per hypothesised factor.

  Each word is asked for a 1-7 rating in the model's chat format (``readouts.rating_readout``);
  the rating is the expected answer under the softmax over the answer tokens "1".."7".
  Reports its correlation with the scale's human norm and how often the most likely answer
  is the same digit (a model that always answers "1" carries no signal). ``progress`` prints
  progress lines (prompts read, rate, ETA).
  """
  chosen, seen = [], set()
  for s in scales:
    f = getattr(s, "factor", None) or s.name
    if s.name in targets and targets[s.name].startswith("warriner:") and f not in seen:
      chosen.append(s)
      seen.add(f)
  out = []
  bar = Progress.maybe(progress, "steer rating check", len(chosen[:max_scales]) * len(ids), unit="prompts")
  bar.update(0)
  for s in chosen[:max_scales]:
    try:
      readout = readouts.rating_readout(model.tokenizer, s)
    except InputError as e:
      return {"skipped": str(e)}
    prompts = readouts.build_prompts(model.tokenizer, readout.template, ids)
    g = grid_lib.Grid(model, prompts, readout, "embed", batch_size=batch_size)
    raw = g.evaluate(np.arange(len(ids)), np.zeros((len(ids), model.config.d_model), np.float32),
                     progress=lambda done, _, o=bar.done: bar.update(o + done))
    rating = readout.ratings(raw)[:, 0]
    y = cols[targets[s.name].split(":", 1)[1]]
    ok = np.isfinite(y)
    top = np.bincount(np.argmax(raw[0], axis=1), minlength=len(readout.poles.rows))
    out.append({"scale": s.name, "norm": targets[s.name], "n": int(ok.sum()),
                "pearson": float(stats.pearson(rating[ok], y[ok])) if np.ptp(rating[ok]) > 0 else None,
                "question": readout.report["question"],
                "most_likely_answer_counts": {str(k + 1): int(c) for k, c in enumerate(top)},
                "mean_rating": float(rating.mean())})
  bar.close()
  return {"scales": out}


def _readout(model, opts: SteerOptions, scales, site: str, units: np.ndarray) -> readouts.Readout:
  """The run's readout: ``opts.readout`` built by its factory in ``readouts.READOUT_FACTORIES``."""
  request = readouts.ReadoutRequest(model=model, scales=scales, site=site, units=units,
                                    read_layer=opts.read_layer)
  return readouts.requested_readout(opts.readout, request)


def direct_path(steer_units: np.ndarray, readout_dirs: np.ndarray, on_index) -> np.ndarray:
  """``[S, J]`` the readout change steering causes through the output embedding alone, in D's units.

  ``direct[s, j] = (u_s . r_j) / (u_s . r_on(s))``: a vector ``a u_s`` added to the final
  residual moves the log-odds of readout ``j`` by ``a u_s . r_j`` (``r_j`` its pole tokens'
  mean unembedding difference, ``readouts.unembedding_directions``), with no transformer
  block in between; per unit of the same path's on-target change, as ``D`` is.

  Args:
    steer_units: ``[S, D]`` unit steering directions.
    readout_dirs: ``[J, D]`` unembedding differences of the readout columns.
    on_index: ``[S]`` each steered scale's on-target column.
  """
  raw = np.asarray(steer_units, np.float64) @ np.asarray(readout_dirs, np.float64).T  # [S, J]
  on = raw[np.arange(raw.shape[0]), np.asarray(on_index)]
  with np.errstate(divide="ignore", invalid="ignore"):
    return raw / on[:, None]


def _analyse(effects, alphas, cos, on, direct, key, opts, names, readout_names) -> dict[str, Any]:
  """``offtarget.analyse`` with the direct-path prediction where it takes one; the raw matrix
  is kept as ``direct`` for plotting."""
  extra = {}
  if direct is not None and "direct" in inspect.signature(offtarget.analyse).parameters:
    extra["direct"] = direct
  out = offtarget.analyse(effects, alphas, cos, on, key_or_seed=key, n_boot=opts.n_boot, n_perm=opts.n_perm,
                          names=names, readout_names=readout_names, **extra)
  if direct is not None:
    out["direct"] = [[None if not np.isfinite(x) else float(x) for x in row] for row in direct]
  return out


def _random_control(r_eff, alphas, effects, steered_index, key, opts) -> dict[str, Any]:
  """``steering_compare.random_control`` (the antonym figure's own summary, with CIs)."""
  plain = steering_compare.summarise_control(effects, alphas, steered_index)
  out = {"n": opts.n_random, "norm": "same strengths (site-norm units), unit directions"}
  out.update(steering_compare.random_control(r_eff, alphas, effects, steered_index, key_or_seed=key,
                                             n_boot=opts.n_boot))
  out.setdefault("mean_abs_slope", out.get("random_mean_abs_slope"))
  out.setdefault("antonym_mean_ontarget_slope", plain["mean_ontarget_slope"])
  return out


def _disjoint_columns(steer: Sequence[str], n_shared: int, disjoint: readouts.Readout | None):
  """The disjoint readout's view of the grid (``Columns`` over the pole log-odds), or a reason why not."""
  if disjoint is None:
    return None, None
  rows = np.array([k for k, name in enumerate(steer) if name in disjoint.names], np.int64)
  if not len(rows):
    return None, "no steered scale has readout words of its own"
  if len(disjoint.names) < 2:
    return None, "fewer than 2 scales have readout words, so there is no off-target readout"
  on = np.array([disjoint.names.index(steer[k]) for k in rows], np.int64)
  return steering_methods.Columns(rows=rows, cols=n_shared + np.arange(len(disjoint.names)), on=on), None


SHARED_NOTE = ("the scale file gives no readout words disjoint from the direction words, so the readout is"
               " shared with the direction words (each scale is read along its own direction)")


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
  check_layers(opts)
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
  if len(words) == 1 and words[0] in assets.NORM_NAMES:
    return
  hint = assets.did_you_mean(words[0], assets.NORM_NAMES) if len(words) == 1 else ""
  if hint:
    raise InputError(f"--words={words[0]} is not a norm table{hint}; give one of "
                     f"{', '.join(assets.NORM_NAMES)}, or at least {least} words.")
  if len(words) < least:
    raise InputError(f"--words={','.join(words)}: give a norm table ({', '.join(assets.NORM_NAMES)}) or at "
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
    return run_steer_layers(model, opts, checkpoint_dir=checkpoint_dir, progress=progress)
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
  shared = _readout(model, opts, scales, site, units)
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
  result["readout_validation"] = _validation(base_lo[:, :j], names, targets, cols)
  if opts.rating_check:
    result["rating_readout_validation"] = rating_validation(model, scales, ids, cols, targets,
                                                            progress=progress)
  direct = None
  if shared.kind == "logodds":
    direct = direct_path(units[steered_index], readouts.unembedding_directions(model, shared.poles),
                         steered_index)
  result["offtarget"] = _analyse(effects, alphas, cos, steered_index, direct, key, opts, steer, names)
  result["dose_response"] = offtarget.dose_response(effects, alphas, steered_index)

  # The same analysis on the readout words that define no direction.
  dis_cols, why_not = _disjoint_columns(steer, j, disjoint)
  info: dict[str, Any] = {"scales": [] if disjoint is None else list(disjoint.names), "left_out": left_out,
                          "words": {} if disjoint is None else disjoint.poles.report}
  if disjoint is None:
    info["note"] = (SHARED_NOTE if shared.kind == "logodds" else
                    "the disjoint readout words are a log-odds readout; this run reads the representation")
  else:
    info["validation"] = _validation(base_lo[:, j:], disjoint.names, targets, cols)
    if why_not:
      info["note"] = f"no off-target analysis on the disjoint readout: {why_not}"
  result["offtarget_disjoint"] = None
  if dis_cols is not None:
    d_names = list(disjoint.names)
    d_idx = [names.index(n) for n in d_names]
    e_dis = dis_cols.view(lo - base_lo[:wg, None, None, :])
    d_direct = direct_path(units[steered_index[dis_cols.rows]],
                           readouts.unembedding_directions(model, disjoint.poles), dis_cols.on)
    try:
      result["offtarget_disjoint"] = _analyse(e_dis, alphas, cos[dis_cols.rows][:, d_idx], dis_cols.on,
                                              d_direct, key, opts, [steer[k] for k in dis_cols.rows], d_names)
    except InputError as e:  # e.g. too few pairs; the shared analysis above stands
      info["note"] = f"no off-target analysis on the disjoint readout: {e}"
  result["disjoint_readout"] = info

  # Controls: random unit directions at the same strengths.
  controls: dict[str, Any] = {"shuffled_labels": result["offtarget"].get("shuffled_labels")}
  if opts.n_random > 0:
    rnd = _unit(np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (opts.n_random, dirs.shape[1]))))
    wi, vec = grid_lib.grid_rows(wg, rnd * unit, alphas)
    r_eff = rate(wi, vec, "random")[0].reshape(wg, opts.n_random, a, j) - base[:wg, None, None, :]
    controls["random_directions"] = _random_control(r_eff, alphas, effects, steered_index,
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


# ----------------------------------------------------------------------------- every layer

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
  start = time.perf_counter()
  scale_set = check_options(opts)
  layers, compare = check_layers(opts, model.config.n_layers)
  alphas = np.asarray(opts.alphas, np.float64)
  scales = list(scale_set)
  names = [sc.name for sc in scales]
  steer = list(opts.steer) or names
  steered_index = np.array([names.index(x) for x in steer])
  words, ids, _ = _words(model, opts)
  tok = model.tokenizer
  prompts = readouts.build_prompts(tok, opts.template, ids)
  shared = readouts.logodds_readout(tok, scales, "direction")
  _, left_out, _ = readouts.disjoint_scales(tok, scales)
  disjoint = readouts.logodds_readout(tok, scales, "disjoint") if len(left_out) < len(scales) else None
  readout = shared if disjoint is None else readouts.concat(shared, disjoint)
  w, s, a, j = len(words), len(steer), len(alphas), len(names)
  dis_cols, _ = _disjoint_columns(steer, j, disjoint)
  wg = w if opts.grid_words <= 0 else min(w, opts.grid_words)
  grid = grid_lib.Grid(model, prompts, readout, opts.site, batch_size=opts.batch_size, layers=layers)

  units, norms = [], []
  for layer in layers:  # each block's directions in its own space, strengths in its own site norm
    site = f"{opts.site}.{layer}"
    units.append(_unit(_directions(model, scales, site, opts.template)))
    norms.append(_site_unit(model, prompts, site))
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
    direct = direct_path(units[k][steered_index], r_dirs, steered_index)
    ot = _analyse(effects, alphas, cos, steered_index, direct, key, opts, steer, names)
    dis = None
    if dis_cols is not None:
      d_idx = [names.index(n) for n in disjoint.names]
      try:
        dis = _analyse(dis_cols.view(lo[k] - base_lo[:, None, None, :]), alphas, cos[dis_cols.rows][:, d_idx],
                       dis_cols.on, direct_path(units[k][steered_index[dis_cols.rows]], d_dirs, dis_cols.on),
                       key, opts, [steer[x] for x in dis_cols.rows], list(disjoint.names))
      except InputError:  # e.g. too few pairs; the shared analysis stands
        dis = None
    off = np.abs(cos[np.arange(j)[None, :] != steered_index[:, None]])
    entries.append({
        "layer": int(layer), "site": f"{opts.site}.{layer}", "site_norm": norms[k],
        "offtarget": _layer_brief(ot), "offtarget_disjoint": _layer_brief(dis),
        "on_target_per_unit": offtarget.on_target_per_unit(effects, alphas, steered_index,
                                                           jax.random.fold_in(key, 3), opts.n_boot),
        "n_pairs": ot["n_pairs"], "cosine_mean_abs_offtarget": float(off.mean()) if off.size else 0.0})
  rows_layered = grid.rows_computed, grid.rows_resumed

  runs = {}
  for layer in compare:
    sub = dataclasses.replace(opts, layer=layer, layers="", compare_layers="")
    where = None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"compare_{opts.site}.{layer}")
    runs[layer] = run_steer(model, sub, checkpoint_dir=where, progress=progress)
  result = dict(runs[compare[0]])
  result["layers"] = entries
  result["layers_site"] = opts.site
  result["compare_layers"] = list(compare)
  result["layers_trend"] = {
      "r": offtarget.depth_trend(layers, [e["offtarget"]["r"] for e in entries]),
      "slope": offtarget.depth_trend(layers, [e["offtarget"]["slope"] for e in entries]),
      "on_target_per_unit": offtarget.depth_trend(layers, [e["on_target_per_unit"]["mean"] for e in entries])}
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
