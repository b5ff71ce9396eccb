"""Steering at many blocks (``steer_layers``): per-block summaries of the rating changes and their
trend over depth.

* ``on_target_per_unit``: each word's dose slope on its own scale, with a bootstrap CI over words.
* ``depth_trend``: Spearman's rho of a per-block value on the block, with a permutation p.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxsem.analyses.offtarget import as_key
from jaxsem.analyses.offtarget import check_count
from jaxsem.analyses.offtarget import check_steered_index
from jaxsem.analyses.offtarget import ci95
from jaxsem.analyses.offtarget import dose_slopes
from jaxsem.analyses.offtarget import finite_or_none
from jaxsem.analyses.offtarget import numpy_rng
from jaxsem.kernels import stats


def on_target_per_unit(effects, alphas, steered_index, key_or_seed, n_boot: int) -> dict[str, Any]:
  """The on-target rating change per unit strength: each word's dose slope on its own scale.

  Args:
    effects: ``[W, S, A, J]`` rating changes.
    alphas: ``[A]`` strengths (site-norm units).
    steered_index: ``[S]`` on-target readout column of each steered scale.
    key_or_seed: key or seed of the bootstrap over words.
    n_boot: bootstrap draws.

  Returns:
    ``{"mean", "ci" (95%, words resampled), "per_scale": [S]}``: means over words (and steered scales).
  """
  check_count("n_boot", n_boot)
  slopes = dose_slopes(effects, alphas)  # [W, S, J]
  n_words, n_steered, n_readout = slopes.shape
  idx = check_steered_index(steered_index, n_steered, n_readout)
  on = slopes[:, np.arange(n_steered), idx]  # [W, S]
  words = numpy_rng(as_key(key_or_seed)).integers(0, n_words, size=(n_boot, n_words))
  boot = on.mean(axis=1)[words].mean(axis=1)
  return {"mean": float(on.mean()), "ci": ci95(boot), "per_scale": on.mean(axis=0).tolist()}


def depth_trend(layers, values, n_perm: int = 9999) -> dict[str, Any]:
  """Whether ``values`` (e.g. the off-target r per layer) grow or shrink with depth.

  Args:
    layers: ``[L]`` block numbers.
    values: ``[L]`` values (None or NaN where missing).
    n_perm: shuffles of the layer order in the two-sided permutation p of rho (seeded, fixed).

  Returns:
    ``{"spearman_rho", "p_value", "direction", "n_layers"}``: Spearman's rho of the values on
    the block over the blocks with a finite value (None below 3); ``direction`` is ``grows`` or
    ``shrinks`` where p < 0.05, else ``no clear trend`` (None without a rho).
  """
  x = np.asarray(layers, np.float64)
  y = np.array([np.nan if v is None else v for v in values], np.float64)
  ok = np.isfinite(y)
  out = {"spearman_rho": None, "p_value": None, "direction": None, "n_layers": int(ok.sum())}
  if ok.sum() < 3 or np.ptp(y[ok]) == 0:
    return out
  rho = float(stats.spearman(x[ok], y[ok]))
  rx, ry = np.argsort(np.argsort(x[ok])), np.asarray(stats.rank(y[ok]), np.float64)
  shuffled = np.random.default_rng(0).permuted(np.broadcast_to(rx, (n_perm, len(rx))), axis=1)
  cx, cy = shuffled - shuffled.mean(axis=1, keepdims=True), ry - ry.mean()
  null = cx @ cy / np.sqrt(np.sum(cx * cx, axis=1) * (cy @ cy))
  p = float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + n_perm))
  out.update(spearman_rho=finite_or_none(rho), p_value=p,
             direction=("grows" if rho > 0 else "shrinks") if p < 0.05 else "no clear trend")
  return out
