"""The regressions behind the off-target analysis (``offtarget.analyse``): D on the cosine over the
off-target pairs, one fit or one per bootstrap draw, and its direct-path control.

* ``ols``: slope, intercept and Pearson r of ``y [..., n]`` on ``x [n]``.
* ``weighted_fits``: slope and r over weighted pairs (a bootstrap draw's pair counts) and, given the
  direct-path prediction ``z``, the partial correlation of D and the cosine controlling for ``z``.
* ``check_direct``: the direct-path prediction checked against D's shape and off-target pairs.
* ``partial_correlation``: Pearson r of ``y`` and ``x`` after both are residualised on ``[1, z]``.
"""

from __future__ import annotations

import numpy as np

from jaxsem.errors import InputError

# A residual sum of squares below this fraction of the total is rounding: the fit is exact.
EXACT = 1e-20


def ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """OLS ``y ~ slope * x + intercept`` and Pearson r for ``x [n]`` and ``y [..., n]``.

  r is NaN where ``y`` is constant.
  """
  xc = x - x.mean()
  ym = y.mean(axis=-1)
  yc = y - ym[..., None]
  sxx = xc @ xc
  sxy = yc @ xc
  syy = np.sum(yc * yc, axis=-1)
  slope = sxy / sxx
  with np.errstate(invalid="ignore", divide="ignore"):
    r = np.where(syy > 0, sxy / np.sqrt(sxx * np.where(syy > 0, syy, 1.0)), np.nan)
  return slope, ym - slope * x.mean(), np.clip(r, -1.0, 1.0)


def weighted_fits(y: np.ndarray, x: np.ndarray, weights: np.ndarray, z: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
  """Weighted regression statistics of ``y`` on ``x`` (and given ``z``) over the pairs.

  A pair of weight ``k`` counts ``k`` times; weight 0 leaves it out (the on-target pairs).

  Args:
    y: ``[..., S, J]`` values of ``D`` (one matrix per bootstrap draw, or one).
    x: ``[S, J]`` cosines.
    weights: ``[..., S, J]`` (or broadcastable) non-negative pair weights.
    z: optional ``[S, J]`` covariate (the direct-path prediction).

  Returns:
    ``{"slope", "r"}`` of ``y ~ x`` and, with ``z``, ``"r_z"`` (r of ``y`` and ``z``),
    ``"partial_r"`` (r of ``y`` and ``x`` after both are residualised on ``[1, z]``) and
    ``"slope_given_z"`` (the coefficient of ``x`` in ``y ~ x + z``); each ``[...]``, NaN where
    undefined or where a used pair of ``y`` is not finite.
  """
  w = np.broadcast_to(np.asarray(weights, np.float64), np.broadcast_shapes(np.shape(weights), y.shape))
  used = w > 0
  bad = np.any(used & ~np.isfinite(y), axis=(-2, -1))
  y = np.where(used, y, 0.0)
  total = w.sum(axis=(-2, -1))

  def dot(a, b):
    return np.sum(w * a * b, axis=(-2, -1))

  def centre(v):
    return v - (dot(v, 1.0) / total)[..., None, None]

  def corr(a, b):
    return np.clip(dot(a, b) / np.sqrt(dot(a, a) * dot(b, b)), -1.0, 1.0)

  with np.errstate(invalid="ignore", divide="ignore"):
    yc, xc = centre(y), centre(x)
    out = {"slope": dot(xc, yc) / dot(xc, xc), "r": corr(xc, yc)}
    if z is not None:
      zc = centre(z)
      szz = dot(zc, zc)[..., None, None]
      ry = yc - dot(yc, zc)[..., None, None] / szz * zc
      rx = xc - dot(xc, zc)[..., None, None] / szz * zc
      # A residual at rounding level means z explains y (or x) exactly: no partial correlation.
      exact = (dot(ry, ry) <= EXACT * dot(yc, yc)) | (dot(rx, rx) <= EXACT * dot(xc, xc))
      out.update(r_z=corr(yc, zc), partial_r=np.where(exact, np.nan, corr(rx, ry)),
                 slope_given_z=dot(rx, ry) / dot(rx, rx))
  return {k: np.where(bad, np.nan, v) for k, v in out.items()}


def check_direct(direct, shape: tuple[int, int], mask: np.ndarray) -> np.ndarray:
  """``direct`` as float64, checked to have ``shape`` and finite values at the pairs of ``mask [S, J]``."""
  z = np.asarray(direct, np.float64)
  if z.shape != shape:
    raise InputError(f"direct must have shape [S, J] = [{shape[0]}, {shape[1]}] like D, got {z.shape}.")
  if not np.isfinite(z[mask]).all():
    s, j = (int(i) for i in np.argwhere(mask & ~np.isfinite(z))[0])
    raise InputError(f"direct is NaN or inf at steered scale {s}, readout scale {j}; every off-target pair"
                     " needs a direct-path prediction.")
  return z


def partial_correlation(y, x, z) -> float:
  """Pearson r of ``y`` and ``x`` after both are residualised on ``[1, z]`` by least squares.

  Args:
    y: ``[n]`` values.
    x: ``[n]`` values.
    z: ``[n]`` or ``[n, k]`` covariates to control for.

  Returns:
    The partial correlation; NaN when a residual is constant (``y`` or ``x`` is explained by
    ``z`` exactly).

  Raises:
    InputError: for mismatched lengths, NaN/inf, or fewer than ``k + 3`` values.
  """
  y, x, z = (np.asarray(v, np.float64) for v in (y, x, z))
  z = z[:, None] if z.ndim == 1 else z
  if y.ndim != 1 or x.shape != y.shape or z.ndim != 2 or z.shape[0] != y.shape[0]:
    raise InputError(f"partial_correlation needs y [n], x [n] and z [n] or [n, k], got {y.shape}, {x.shape}"
                     f" and {z.shape}.")
  if y.shape[0] < z.shape[1] + 3:
    raise InputError(f"A partial correlation needs at least {z.shape[1] + 3} values (the covariates' count"
                     f" plus 3), got {y.shape[0]}.")
  if not all(np.isfinite(v).all() for v in (y, x, z)):
    raise InputError("partial_correlation got NaN or inf; drop those values first.")
  q, _ = np.linalg.qr(z - z.mean(axis=0))  # an orthonormal basis of the centred covariates
  yc, xc = y - y.mean(), x - x.mean()
  ry, rx = yc - q @ (q.T @ yc), xc - q @ (q.T @ xc)
  if ry @ ry <= EXACT * (yc @ yc) or rx @ rx <= EXACT * (xc @ xc):
    return float("nan")
  return float(np.clip(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)), -1.0, 1.0))
