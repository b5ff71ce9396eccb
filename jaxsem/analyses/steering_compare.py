"""Steering methods and control directions, compared on the off-target statistic.

The effects are those of ``offtarget``: rating changes ``[W, S, A, J]`` (or ``[W, S, J]`` at
one strength) of word ``w`` steered along direction ``s`` and read out on scale ``j``, with
``steered_index [S]`` the on-target readout column of each direction.

* ``compare_methods``: off-target change per unit on-target change for several steering
  methods at one strength, and each method's paired-bootstrap reduction against ``"plain"``
  (``PLAIN``).
* ``summarise_control``: the mean on-target and |off-target| slopes of control directions
  (e.g. random directions of matched norm), to set beside the antonym directions.
* ``random_control``: the random-direction control, the same statistic as the antonym figure it
  is printed beside, with a paired bootstrap CI of their ratio.

The checks, dose slopes and bootstrap helpers are ``offtarget``'s, so both modules validate
and resample alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxsem.analyses.offtarget import TINY
from jaxsem.analyses.offtarget import as_key
from jaxsem.analyses.offtarget import check_count
from jaxsem.analyses.offtarget import check_effects
from jaxsem.analyses.offtarget import check_steered_index
from jaxsem.analyses.offtarget import ci95
from jaxsem.analyses.offtarget import dose_slopes
from jaxsem.analyses.offtarget import draw_counts
from jaxsem.analyses.offtarget import finite_or_none
from jaxsem.analyses.offtarget import offtarget_mask
from jaxsem.errors import InputError
from jaxsem.kernels import stats

PLAIN = "plain"


def compare_methods(effects_by_method: Mapping[str, Any], steered_index, *, seed,
                    n_boot: int) -> dict[str, Any]:
  """Off-target change per unit on-target change of several steering methods at one strength.

  For each method: the mean on-target change (over words and steered scales), the mean
  |off-target| change (over words, steered scales and ``j != steered_index[s]``) and their ratio
  ``mean|off| / |mean on|``. For each method other than ``"plain"`` (when ``"plain"`` is given):
  the reduction ``1 - ratio_method / ratio_plain``. CIs are 95% percentile intervals from one
  bootstrap over words shared by all methods, so the reduction's CI is paired.

  Args:
    effects_by_method: method name -> ``[W, S, J]`` rating changes, the same words and scales
      for every method.
    steered_index: ``[S]`` on-target readout column of each steered scale.
    seed: int seed or ``jax.random`` key for the bootstrap.
    n_boot: bootstrap resamples of the words.

  Returns:
    ``{"methods": {name: {"on_target", "on_target_ci", "off_target_abs", "off_target_abs_ci",
    "off_per_on", "off_per_on_ci"}}, "reduction_vs_plain": {name: {"value", "ci"}}, "n_words",
    "n_boot"}``.

  Raises:
    InputError: for no methods, mismatched shapes, NaN/inf, a bad index, or a method whose mean
      on-target change is zero.
  """
  check_count("n_boot", n_boot)
  if not effects_by_method:
    raise InputError("compare_methods needs the effects of at least one method.")
  arrays = {name: check_effects(e, ndim=3, what=f"effects of method {name!r}")
            for name, e in effects_by_method.items()}
  first = next(iter(arrays))
  for name in arrays:
    if arrays[name].shape != arrays[first].shape:
      raise InputError(f"Method {name!r} has effects of shape {arrays[name].shape} but {first!r} has"
                       f" {arrays[first].shape}; every method must cover the same words and scales.")
  n_words, n_steered, n_readout = arrays[first].shape
  idx = check_steered_index(steered_index, n_steered, n_readout)
  mask = offtarget_mask(idx, n_readout)
  counts = draw_counts(np.asarray(stats.bootstrap_indices(as_key(seed), n_words, n_boot)), n_words)

  methods, ratios = {}, {}
  for name, e in arrays.items():
    on_w = e[:, np.arange(n_steered), idx].mean(axis=1)  # [W]
    off_w = np.abs(e[:, mask]).mean(axis=1)  # [W]
    on, off = on_w.mean(), off_w.mean()
    if not abs(on) >= TINY:
      raise InputError(f"Method {name!r} has a mean on-target change of {on:.3g}, so its off-target change"
                       " per unit on-target change is undefined; check its steering.")
    on_b, off_b = counts @ on_w / n_words, counts @ off_w / n_words
    ratio_b = off_b / np.where(np.abs(on_b) >= TINY, np.abs(on_b), np.nan)
    ratios[name] = (off / abs(on), ratio_b)
    methods[name] = {"on_target": float(on), "on_target_ci": ci95(on_b), "off_target_abs": float(off),
                     "off_target_abs_ci": ci95(off_b), "off_per_on": float(off / abs(on)),
                     "off_per_on_ci": ci95(ratio_b)}
  reduction = {}
  if PLAIN in ratios:
    base, base_b = ratios[PLAIN]
    for name, (ratio, ratio_b) in ratios.items():
      if name != PLAIN:
        with np.errstate(invalid="ignore", divide="ignore"):
          reduction[name] = {"value": finite_or_none(1.0 - ratio / base), "ci": ci95(1.0 - ratio_b / base_b)}
  return {"methods": methods, "reduction_vs_plain": reduction, "n_words": int(n_words),
          "n_boot": int(n_boot)}


def summarise_control(effects, alphas, steered_index) -> dict[str, Any]:
  """Mean on-target and |off-target| slopes, for control (e.g. random) steering directions.

  The same summary applied to antonym directions makes the two comparable: a random direction of
  matched norm sets how much off-target movement any push of that size causes. ``random_control``
  computes the random-direction figure itself (random directions have no on-target readout) with
  CIs.

  Args:
    effects: ``[W, S, A, J]`` rating changes; ``S`` indexes the control directions, each paired
      with the readout column ``steered_index[s]`` it stands in for.
    alphas: ``[A]`` strengths.
    steered_index: ``[S]`` readout column of each control direction.

  Returns:
    ``{"mean_ontarget_slope", "mean_abs_offtarget_slope", "off_per_on", "n_words"}``, where
    ``off_per_on = mean|off-target slope| / |mean on-target slope|`` (``None`` when the mean
    on-target slope is zero).
  """
  slopes = dose_slopes(effects, alphas)
  n_words, n_steered, n_readout = slopes.shape
  idx = check_steered_index(steered_index, n_steered, n_readout)
  on = float(slopes[:, np.arange(n_steered), idx].mean())
  off = float(np.abs(slopes[:, offtarget_mask(idx, n_readout)]).mean())
  return {"mean_ontarget_slope": on, "mean_abs_offtarget_slope": off,
          "off_per_on": off / abs(on) if abs(on) >= TINY else None, "n_words": int(n_words)}


def random_control(effects, alphas, antonym_effects, antonym_steered_index, *, key_or_seed,
                   n_boot: int) -> dict[str, Any]:
  """Random-direction control, computed exactly like the antonym figure it is printed beside.

  The statistic, for both: per word, the dose slope of every (direction, readout) pair
  (``dose_slopes``); then the mean over words, directions and readouts of ``|slope|``. For the
  antonym directions only the off-target readouts (``j != steered_index[s]``) count; a random
  direction has no target, so all its readouts count. The mean of a signed slope over words is
  never taken first, so the two numbers differ only in the directions. CIs are 95% percentile
  intervals from one bootstrap over words (``stats.bootstrap_indices(key, W, n_boot)``) shared by
  both, so the ratio's CI is paired.

  Args:
    effects: ``[W, R, A, J]`` rating changes of ``R`` random unit directions, at the strengths
      of the antonym directions and on the same words and readout scales.
    alphas: ``[A]`` strengths.
    antonym_effects: ``[W, S, A, J]`` rating changes of the antonym directions.
    antonym_steered_index: ``[S]`` on-target readout column of each antonym direction.
    key_or_seed: ``jax.random`` key or int seed for the bootstrap.
    n_boot: bootstrap resamples of the words.

  Returns:
    ``{"n_directions": R, "random_mean_abs_slope", "random_ci", "antonym_mean_abs_offtarget_slope",
    "antonym_ci", "ratio", "ratio_ci", "antonym_mean_ontarget_slope", "n_words", "n_boot",
    "statistic"}``: ``ratio`` is antonym / random (``None`` when the random statistic is 0),
    ``antonym_mean_ontarget_slope`` the mean signed on-target slope, ``statistic`` a one-line
    description of the statistic for the report.

  Raises:
    InputError: for bad shapes or values, or random and antonym effects on different words,
      strengths or readout scales.
  """
  check_count("n_boot", n_boot)
  rnd = check_effects(effects, what="random-direction effects")
  ant = check_effects(antonym_effects, what="antonym effects")
  for axis, what in ((0, "words"), (2, "strengths"), (3, "readout scales")):
    if rnd.shape[axis] != ant.shape[axis]:
      raise InputError(f"The random-direction effects have {rnd.shape[axis]} {what} but the antonym effects"
                       f" have {ant.shape[axis]}; run both on the same words, strengths and readouts.")
  rnd_slopes, ant_slopes = dose_slopes(rnd, alphas), dose_slopes(ant, alphas)  # [W, R, J], [W, S, J]
  n_words, n_steered, _, n_readout = ant.shape
  idx = check_steered_index(antonym_steered_index, n_steered, n_readout)
  rnd_w = np.abs(rnd_slopes).mean(axis=(1, 2))  # [W]
  ant_w = np.abs(ant_slopes[:, offtarget_mask(idx, n_readout)]).mean(axis=1)  # [W]
  rnd_mean, ant_mean = rnd_w.mean(), ant_w.mean()

  counts = draw_counts(np.asarray(stats.bootstrap_indices(as_key(key_or_seed), n_words, n_boot)), n_words)
  rnd_b, ant_b = counts @ rnd_w / n_words, counts @ ant_w / n_words
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio_b = ant_b / np.where(rnd_b >= TINY, rnd_b, np.nan)
  return {"n_directions": int(rnd.shape[1]),
          "random_mean_abs_slope": float(rnd_mean), "random_ci": ci95(rnd_b),
          "antonym_mean_abs_offtarget_slope": float(ant_mean), "antonym_ci": ci95(ant_b),
          "ratio": float(ant_mean / rnd_mean) if rnd_mean >= TINY else None, "ratio_ci": ci95(ratio_b),
          "antonym_mean_ontarget_slope": float(ant_slopes[:, np.arange(n_steered), idx].mean()),
          "n_words": int(n_words), "n_boot": int(n_boot),
          "statistic": "mean over words of |dose slope|, off-target readouts only (random: all readouts)"}
