"""Off-target effects of steering: does steering along scale i move scale j by cos(d_i, d_j)?

An upstream grid steers each word's token along the direction of steered scale ``s`` with
strengths ``alphas [A]`` and reads the model's rating out on every readout scale ``j``:

* ``effects [W, S, A, J]``: rating change (steered minus unsteered) of word ``w``;
* ``cosines [S, J]``: cos(d_s, d_j) between the steering direction and readout scale ``j``;
* ``steered_index [S]``: the readout column of each steered scale (its on-target column).

The functions:

* ``dose_slopes``: per word, the least-squares slope through the origin of the change
  against the strength, ``[W, S, J]``.
* ``offtarget_matrix``: ``D [S, J]``, the mean slope on each readout scale per unit of mean
  on-target slope, so ``D[s, steered_index[s]] == 1``.
* ``regress``: OLS of ``D`` on the cosine over the off-target pairs. If the readout is linear
  in the hidden state and the on-target cosine is 1, ``D[s, j] ~ cosines[s, j]``: slope 1,
  intercept 0.
* ``analyse``: the above, bootstrap CIs, the shuffled-label null (below), the dose-response
  summary (``dose_response``) and, given the direct-path prediction, the direct-path control.
* the regressions themselves and ``partial_correlation`` live in ``offtarget_fits``; the per-block
  summaries of a run at many blocks (``on_target_per_unit``, ``depth_trend``) in ``offtarget_depth``.

The checks and bootstrap helpers (``check_effects``, ``check_steered_index``, ``offtarget_mask``,
``draw_counts``, ``ci95``, ...) are shared with ``steering_compare``, which compares steering
methods and control directions on the same effects.

Shuffled-label null (``shuffled_label_cosines``). It asks whether ``D`` follows the cosine of
the right pair of scales, not merely the distribution of cosines. ``D`` is kept and the scales
of the cosine matrix are relabelled: a permutation ``pi`` of the ``J`` readout scales, uniform
among those that map steered scales to steered scales and unsteered to unsteered (any
permutation when every readout scale is steered), says that readout scale ``j`` is "really"
scale ``pi(j)``. Steered scale ``s`` (read out at ``steered_index[s]``) then becomes the steered
scale ``s'`` with ``steered_index[s'] == pi(steered_index[s])``, and
``cos'[s, j] = cosines[s', pi(j)]``. Rows and columns move together, as in a Mantel test:
on-target pairs map onto on-target pairs (and stay excluded), each null keeps exactly the
observed off-target cosines, only their pairing with ``D`` changes, and a symmetric block of
``cosines`` stays symmetric.

Uncertainty. ``ci`` resamples the words and the steered scales jointly: each draw resamples the
words with replacement (and recomputes the slopes' means and ``D`` from them) and the steered
scales with replacement (a scale drawn twice contributes its off-target pairs twice). The
steered scales are a sample of the scales one could have steered, so an interval over words
alone is too narrow when the scales' rows of ``D`` differ systematically. ``ci_words`` is the
interval over words alone, from the same word draws.

Direct-path control. When the readout of scale ``j`` is a logit difference along (nearly) the
direction of ``j``, part of ``D[s, j] ~ cos(d_s, d_j)`` is built in: the steering vector moves
the readout through the tied embedding alone, without the transformer blocks. ``direct [S, J]``
is that prediction in the units of ``D`` (on-target entries 1). ``partial_r`` is the correlation
of ``D`` with the cosine once both are residualised on ``direct``: near 0 when the direct path
explains the cosine law, clearly non-zero when the model adds cosine-shaped structure of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxsem.analyses import offtarget_fits
from jaxsem.errors import InputError
from jaxsem.kernels import stats

# A mean on-target change below this is treated as none: nothing to divide by.
TINY = 1e-12


def as_key(key_or_seed) -> jax.Array:
  """A ``jax.random`` key: ``key_or_seed`` itself, or the key of an int seed."""
  if isinstance(key_or_seed, (int, np.integer)):
    return jax.random.key(int(key_or_seed))
  return key_or_seed


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A numpy generator seeded from the bits of the ``jax.random`` key ``key``."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())


def finite_or_none(x) -> float | None:
  """A JSON-friendly float: ``None`` for NaN/inf."""
  x = float(x)
  return x if np.isfinite(x) else None


def ci95(dist: np.ndarray) -> list[float | None]:
  """95% percentile interval ``[lo, hi]`` of the draws ``dist [B]``, ``None`` where not finite."""
  return [finite_or_none(v) for v in np.asarray(stats.percentile_ci(np.asarray(dist, np.float64), 0.95))]


def check_count(name: str, n: int) -> None:
  """Raises ``InputError`` unless the count ``n`` (argument ``name``) is at least 1."""
  if n < 1:
    raise InputError(f"{name} must be at least 1, got {n}.")


def check_effects(effects, ndim: int = 4, what: str = "effects") -> np.ndarray:
  """``effects`` as float64, checked to be a non-empty, finite array of ``ndim`` axes.

  ``ndim`` is 4 for ``[W, S, A, J]`` and 3 for ``[W, S, J]``; ``what`` names the array in the error.
  """
  e = np.asarray(effects, np.float64)
  shape = "[W, S, A, J]" if ndim == 4 else "[W, S, J]"
  if e.ndim != ndim or min(e.shape, default=0) < 1:
    raise InputError(f"The {what} must be a non-empty array of shape {shape}, got shape {e.shape}.")
  bad = ~np.isfinite(e)
  if bad.any():
    w, s = (int(i) for i in np.argwhere(bad)[0][:2])
    raise InputError(f"The {what} contain NaN or inf at word {w}, steered scale {s}; drop that word first.")
  return e


def _alphas(alphas, n: int) -> np.ndarray:
  a = np.asarray(alphas, np.float64)
  if a.shape != (n,):
    raise InputError(f"alphas must have shape [{n}] (one per strength in the effects), got {a.shape}.")
  if not np.isfinite(a).all() or not np.any(a != 0):
    raise InputError(f"alphas must be finite and not all zero, got {a.tolist()}.")
  return a


def check_steered_index(steered_index, n_steered: int, n_readout: int) -> np.ndarray:
  """Checks ``steered_index [S]`` against ``J`` readout scales and returns it as int64."""
  idx = np.asarray(steered_index)
  if idx.shape != (n_steered,) or not np.issubdtype(idx.dtype, np.integer):
    raise InputError(f"steered_index must hold {n_steered} integers (one readout column per steered"
                     f" scale), got {idx.dtype} of shape {idx.shape}.")
  if n_steered < 1:
    raise InputError("Off-target effects need at least 1 steered scale, got none.")
  if n_readout < 2:
    raise InputError(f"Off-target effects need at least 2 readout scales, got {n_readout}.")
  if idx.min() < 0 or idx.max() >= n_readout:
    raise InputError(f"steered_index must lie in [0, {n_readout}) (the readout scales), got values from"
                     f" {idx.min()} to {idx.max()}.")
  if len(np.unique(idx)) != n_steered:
    raise InputError(f"steered_index {idx.tolist()} repeats a readout column; give each steered scale its"
                     " own on-target readout scale.")
  return idx.astype(np.int64)


def offtarget_mask(idx: np.ndarray, n_readout: int) -> np.ndarray:
  """``[S, J]`` True where ``j != steered_index[s]``."""
  mask = np.ones((len(idx), n_readout), bool)
  mask[np.arange(len(idx)), idx] = False
  return mask


def _names(names: Sequence[str] | None, n: int, arg: str, kind: str) -> list[str] | None:
  if names is None:
    return None
  names = [str(x) for x in names]
  if len(names) != n:
    raise InputError(f"{arg} has {len(names)} names but the arrays have {n} {kind} scales.")
  return names


def _scale(names: list[str] | None, s: int) -> str:
  return f"{names[s]!r} (index {s})" if names else f"index {s}"


def draw_counts(indices: np.ndarray, n: int) -> np.ndarray:
  """``[B, n]`` times each word is drawn in each resample of ``indices [B, n]``."""
  b = indices.shape[0]
  flat = (indices + n * np.arange(b)[:, None]).ravel()
  return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)



def _pairs(d: np.ndarray, c: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  x = c[mask]
  if x.size < 3:
    raise InputError(f"The regression needs at least 3 off-target pairs, got {x.size}; add readout scales.")
  if not np.isfinite(x).all() or x.max() == x.min():
    raise InputError("The off-target cosines are constant or not finite, so D cannot be regressed on them.")
  return x, d[mask]


def _boot_draws(key_or_seed, n_words: int, n_steered: int, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
  """``[B, W]`` word and ``[B, S]`` steered-scale indices, each drawn with replacement.

  The word draws are ``stats.bootstrap_indices(key, W, n_boot)``, so the words-only interval and
  the joint one share them.
  """
  key = as_key(key_or_seed)
  words = np.asarray(stats.bootstrap_indices(key, n_words, n_boot))
  scales = np.asarray(stats.bootstrap_indices(jax.random.fold_in(key, 1), n_steered, n_boot))
  return words, scales



def _dose(e: np.ndarray, a: np.ndarray) -> np.ndarray:
  return np.einsum("wsaj,a->wsj", e, a) / np.sum(a * a)


def dose_slopes(effects, alphas) -> np.ndarray:
  """Per-word slope of the rating change against the steering strength, through the origin.

  Args:
    effects: ``[W, S, A, J]`` rating changes.
    alphas: ``[A]`` strengths (zeros are allowed and carry no weight).

  Returns:
    ``[W, S, J]`` float64 ``sum_a alpha_a * E[w, s, a, j] / sum_a alpha_a^2``.

  Raises:
    InputError: for a wrong shape, NaN/inf, or alphas that are all zero.
  """
  e = check_effects(effects)
  return _dose(e, _alphas(alphas, e.shape[2]))


def offtarget_matrix(slopes, steered_index, names: Sequence[str] | None = None) -> np.ndarray:
  """Mean slope on every readout scale per unit of mean on-target slope.

  Args:
    slopes: ``[W, S, J]`` per-word slopes (``dose_slopes``).
    steered_index: ``[S]`` on-target readout column of each steered scale.
    names: optional ``[S]`` steered-scale names, for error messages.

  Returns:
    ``D [S, J]`` with ``D[s, j] = mean_w slopes[w, s, j] / mean_w slopes[w, s, steered_index[s]]``.

  Raises:
    InputError: for a bad shape or index, or a steered scale whose mean on-target slope is
      zero (``|.| < 1e-12``) or not finite.
  """
  sl = np.asarray(slopes, np.float64)
  if sl.ndim != 3 or min(sl.shape, default=0) < 1:
    raise InputError(f"The slopes must be a non-empty array of shape [W, S, J], got shape {sl.shape}.")
  _, n_steered, n_readout = sl.shape
  idx = check_steered_index(steered_index, n_steered, n_readout)
  names = _names(names, n_steered, "names", "steered")
  mean = sl.mean(axis=0)
  on = mean[np.arange(n_steered), idx]
  bad = ~np.isfinite(on) | (np.abs(on) < TINY)
  if bad.any():
    s = int(np.flatnonzero(bad)[0])
    raise InputError(f"Steered scale {_scale(names, s)} has a mean on-target slope of {on[s]:.3g}, so its"
                     " off-target effects cannot be measured per unit on-target change; drop that scale"
                     " or check its steering direction.")
  return mean / on[:, None]


def regress(D, cosines, steered_index) -> dict[str, Any]:
  """OLS of ``D`` on the cosine over the off-target pairs (``j != steered_index[s]``).

  Args:
    D: ``[S, J]`` off-target matrix (``offtarget_matrix``).
    cosines: ``[S, J]`` cosine of each steering direction with each readout direction.
    steered_index: ``[S]`` on-target readout column of each steered scale.

  Returns:
    ``{"slope", "intercept", "r", "r2", "n_pairs"}``; ``r`` and ``r2`` are ``None`` when the
    off-target ``D`` values are all equal.

  Raises:
    InputError: for mismatched shapes, a bad index, fewer than 3 pairs or constant cosines.
  """
  d = np.asarray(D, np.float64)
  c = np.asarray(cosines, np.float64)
  if d.ndim != 2 or d.shape != c.shape:
    raise InputError(f"D and cosines must both have shape [S, J], got {d.shape} and {c.shape}.")
  idx = check_steered_index(steered_index, *d.shape)
  x, y = _pairs(d, c, offtarget_mask(idx, d.shape[1]))
  if not np.isfinite(y).all():
    raise InputError("D contains NaN or inf; build it with offtarget_matrix from finite slopes.")
  slope, intercept, r = offtarget_fits.ols(x, y)
  return {"slope": float(slope), "intercept": float(intercept), "r": finite_or_none(r),
          "r2": finite_or_none(r * r), "n_pairs": int(x.size)}


def shuffled_label_cosines(cosines, steered_index, key_or_seed, n_perm: int) -> np.ndarray:
  """Cosine matrices with the scale labels shuffled, for the shuffled-label null.

  See the module docstring: ``cos'[p, s, j] = cosines[s', pi_p(j)]`` where ``pi_p`` permutes the
  readout scales (steered among steered, unsteered among unsteered) and ``s'`` is the steered
  scale read out at ``pi_p(steered_index[s])``. On-target pairs stay on-target.

  Args:
    cosines: ``[S, J]`` cosines.
    steered_index: ``[S]`` on-target readout column of each steered scale.
    key_or_seed: ``jax.random`` key or int seed.
    n_perm: number of relabellings ``P``.

  Returns:
    ``[P, S, J]`` relabelled cosines.
  """
  c = np.asarray(cosines, np.float64)
  if c.ndim != 2:
    raise InputError(f"cosines must have shape [S, J], got {c.shape}.")
  check_count("n_perm", n_perm)
  n_steered, n_readout = c.shape
  idx = check_steered_index(steered_index, n_steered, n_readout)
  rng = numpy_rng(as_key(key_or_seed))
  steered = np.sort(idx)
  rest = np.setdiff1d(np.arange(n_readout), idx)
  pi = np.empty((n_perm, n_readout), np.int64)
  pi[:, steered] = rng.permuted(np.tile(steered, (n_perm, 1)), axis=1)
  pi[:, rest] = rng.permuted(np.tile(rest, (n_perm, 1)), axis=1)
  row_of = np.empty(n_readout, np.int64)
  row_of[idx] = np.arange(n_steered)  # readout column -> steered scale
  rows = row_of[pi[:, idx]]  # [P, S]
  return c[rows[:, :, None], pi[:, None, :]]


def dose_response(effects, alphas, steered_index) -> dict[str, Any]:
  """Mean on-target and |off-target| rating change at each strength.

  Args:
    effects: ``[W, S, A, J]`` rating changes.
    alphas: ``[A]`` strengths.
    steered_index: ``[S]`` on-target readout column of each steered scale.

  Returns:
    ``{"alphas": [A], "on_target": [S][A] (mean over words), "on_target_mean": [A] (also over
    steered scales), "off_target_abs": [A] (mean |change| over words, steered scales and
    j != on-target)}`` as lists.
  """
  e = check_effects(effects)
  n_words, n_steered, _, n_readout = e.shape
  a = _alphas(alphas, e.shape[2])
  idx = check_steered_index(steered_index, n_steered, n_readout)
  by_alpha = np.moveaxis(e, 2, 1)  # [W, A, S, J]
  on = by_alpha[..., np.arange(n_steered), idx].mean(axis=0)  # [A, S]
  off = np.abs(by_alpha[..., offtarget_mask(idx, n_readout)]).mean(axis=(0, 2))  # [A]
  return {"alphas": a.tolist(), "on_target": on.T.tolist(), "on_target_mean": on.mean(axis=1).tolist(),
          "off_target_abs": off.tolist()}


def analyse(effects, alphas, cosines, steered_index, *, key_or_seed, n_boot: int,
            n_perm: int, names: Sequence[str] | None = None,
            readout_names: Sequence[str] | None = None, direct=None) -> dict[str, Any]:
  """Off-target matrix, its regression on the cosines, bootstrap CIs and shuffled-label null.

  Args:
    effects: ``[W, S, A, J]`` rating changes.
    alphas: ``[A]`` strengths.
    cosines: ``[S, J]`` cosine of each steering direction with each readout direction.
    steered_index: ``[S]`` on-target readout column of each steered scale.
    key_or_seed: ``jax.random`` key or int seed for the bootstrap and the permutations.
    n_boot: bootstrap draws; each resamples the words (slopes -> D -> regression) and, for
      ``ci``, the steered scales too (see the module docstring). Draws whose mean on-target
      slope is zero for some scale are left out.
    n_perm: relabellings in the shuffled-label null.
    names: optional ``[S]`` steered-scale names; by default ``readout_names[steered_index]``.
    readout_names: optional ``[J]`` readout-scale names.
    direct: optional ``[S, J]`` direct-path prediction of ``D`` (same units, on-target entries
      1; only the off-target entries are used). Adds ``direct_path``.

  Returns:
    JSON-friendly ``{"slope", "intercept", "r", "r2", "ci": {"slope": [lo, hi], "r": [lo, hi]},
    "ci_resampling": "words+steered_scales", "ci_words": {"slope", "r"}, "n_pairs", "n_words",
    "n_boot", "D": [S][J], "per_pair": [{"from", "to", "cos", "D"}], "shuffled_labels":
    {"null_r_p95", "p_value", "n"}, "dose_response": {...}}``. ``from`` and ``to`` are names
    when given, else indices. ``p_value`` is two-sided, ``(1 + #{|r_null| >= |r|}) / (1 +
    n_perm)``; ``null_r_p95`` is the 95th percentile of ``|r_null|``. CIs are 95% percentile
    intervals. With ``direct``, ``"direct_path": {"r_direct"`` (r of D and direct),
    ``"partial_r"`` (of D and the cosine, controlling for direct), ``"partial_ci"`` (words and
    steered scales), ``"partial_ci_words"``, ``"share_direct"`` (R² of D on direct), ``"r_cos"``
    (r of D and the cosine), ``"slope_cos_given_direct"`` (coefficient of the cosine in OLS
    ``D ~ cos + direct``), ``"n_pairs"}``, all over the off-target pairs.

  Raises:
    InputError: for bad shapes or values (see ``dose_slopes``, ``offtarget_matrix``, ``regress``).
  """
  check_count("n_boot", n_boot)
  check_count("n_perm", n_perm)
  slopes = dose_slopes(effects, alphas)
  n_words, n_steered, n_readout = slopes.shape
  c = np.asarray(cosines, np.float64)
  if c.shape != (n_steered, n_readout):
    raise InputError(f"cosines must have shape [S, J] = [{n_steered}, {n_readout}] to match the effects,"
                     f" got {c.shape}.")
  idx = check_steered_index(steered_index, n_steered, n_readout)
  readout_names = _names(readout_names, n_readout, "readout_names", "readout")
  if names is None and readout_names is not None:
    names = [readout_names[j] for j in idx]
  names = _names(names, n_steered, "names", "steered")
  d = offtarget_matrix(slopes, idx, names)
  fit = regress(d, c, idx)
  mask = offtarget_mask(idx, n_readout)
  z = None if direct is None else offtarget_fits.check_direct(direct, (n_steered, n_readout), mask)
  _, y = _pairs(d, c, mask)
  key_boot, key_perm = jax.random.split(as_key(key_or_seed))

  # A draw's mean slopes are count-weighted means of the words'; its steered scales weight the pairs.
  word_idx, scale_idx = _boot_draws(key_boot, n_words, n_steered, n_boot)
  counts = draw_counts(word_idx, n_words)
  means = (counts @ slopes.reshape(n_words, -1) / n_words).reshape(n_boot, n_steered, n_readout)
  on = means[:, np.arange(n_steered), idx]  # [B, S]
  on = np.where(np.isfinite(on) & (np.abs(on) >= TINY), on, np.nan)
  d_boot = means / on[..., None]  # [B, S, J]
  words_only = offtarget_fits.weighted_fits(d_boot, c, mask, z)
  joint = offtarget_fits.weighted_fits(d_boot, c, draw_counts(scale_idx, n_steered)[:, :, None] * mask, z)

  null = shuffled_label_cosines(c, idx, key_perm, n_perm)[:, mask]  # [P, n_pairs]
  shuffled = {"null_r_p95": None, "p_value": None, "n": int(n_perm)}
  if fit["r"] is not None:
    _, _, r_null = offtarget_fits.ols(y, null)  # Pearson r is symmetric in its arguments
    summary = stats.null_summary(np.float64(fit["r"]), r_null)
    shuffled.update(null_r_p95=finite_or_none(summary["p95"]), p_value=finite_or_none(summary["p_value"]))

  label_from = names or list(range(n_steered))
  label_to = readout_names or list(range(n_readout))
  per_pair = [{"from": label_from[s], "to": label_to[j], "cos": float(c[s, j]), "D": float(d[s, j])}
              for s, j in zip(*np.nonzero(mask))]
  out = {**{k: fit[k] for k in ("slope", "intercept", "r", "r2")},
         "ci": {"slope": ci95(joint["slope"]), "r": ci95(joint["r"])},
         "ci_resampling": "words+steered_scales",
         "ci_words": {"slope": ci95(words_only["slope"]), "r": ci95(words_only["r"])},
         "n_pairs": fit["n_pairs"], "n_words": int(n_words), "n_boot": int(n_boot),
         "D": d.tolist(), "per_pair": per_pair, "shuffled_labels": shuffled,
         "dose_response": dose_response(effects, alphas, idx)}
  if z is not None:
    point = offtarget_fits.weighted_fits(d, c, mask, z)
    out["direct_path"] = {
        "r_direct": finite_or_none(point["r_z"]), "partial_r": finite_or_none(point["partial_r"]),
        "partial_ci": ci95(joint["partial_r"]), "partial_ci_words": ci95(words_only["partial_r"]),
        "share_direct": finite_or_none(point["r_z"] ** 2), "r_cos": finite_or_none(point["r"]),
        "slope_cos_given_direct": finite_or_none(point["slope_given_z"]), "n_pairs": fit["n_pairs"]}
  return out
