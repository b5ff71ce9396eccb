"""What the steering run computes from its ratings: the readout's validation, the off-target
analysis with its direct-path control, the random-direction control and the disjoint readout's view.

``steer.run_steer`` and ``steer_layers.run_steer_layers`` share these; each takes arrays and the
run's options and returns JSON-friendly blocks of the result.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxsem.analyses import grid as grid_lib
from jaxsem.analyses import offtarget
from jaxsem.analyses import readouts
from jaxsem.analyses import steering_compare
from jaxsem.analyses import steering_methods
from jaxsem.errors import InputError
from jaxsem.kernels import stats
from jaxsem.progress import Progress

if TYPE_CHECKING:  # the options live with the run that builds on this module
  from jaxsem.analyses.steer import SteerOptions


def validation(base: np.ndarray, names: Sequence[str], targets: dict[str, str],
               cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  """Pearson r of the unsteered readout ``base [W, J]`` with each Warriner-tagged scale's norm column.

  Scales without a ``warriner:`` target, or with fewer than 4 rated words, are left out.
  """
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


def build_readout(model, opts: SteerOptions, scales, site: str, units: np.ndarray) -> readouts.Readout:
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


def analyse(effects, alphas, cos, on, direct, key, opts, names, readout_names) -> dict[str, Any]:
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


def random_control(r_eff, alphas, effects, steered_index, key, opts) -> dict[str, Any]:
  """``steering_compare.random_control`` (the antonym figure's own summary, with CIs)."""
  plain = steering_compare.summarise_control(effects, alphas, steered_index)
  out = {"n": opts.n_random, "norm": "same strengths (site-norm units), unit directions"}
  out.update(steering_compare.random_control(r_eff, alphas, effects, steered_index, key_or_seed=key,
                                             n_boot=opts.n_boot))
  out.setdefault("mean_abs_slope", out.get("random_mean_abs_slope"))
  out.setdefault("antonym_mean_ontarget_slope", plain["mean_ontarget_slope"])
  return out


def disjoint_columns(steer: Sequence[str], n_shared: int, disjoint: readouts.Readout | None):
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
