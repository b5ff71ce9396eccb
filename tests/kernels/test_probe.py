"""Ridge probe: optax vs closed form vs numpy, and nested CV recomputed in numpy."""

import jax
import numpy as np
import pytest
import scipy.stats

from jaxsem.errors import InputError
from jaxsem.kernels import probe


def _planted(seed, n=300, d=20, noise=0.3):
  rng = np.random.default_rng(seed)
  X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
  w = rng.normal(size=d)
  clean = X @ w + 5.0
  y = clean + noise * np.std(clean) * rng.normal(size=n)
  return X.astype(np.float32), y.astype(np.float32), clean


def _ridge_numpy(X, y, l2):
  """Same objective as the kernel, in float64: standardize, solve, map back to raw space."""
  X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
  mu, sd = X.mean(0), X.std(0)
  sd = np.where(sd > 0, sd, 1.0)
  my, sy = y.mean(), y.std()
  xs, ys = (X - mu) / sd, (y - my) / sy
  ws = np.linalg.solve(xs.T @ xs + len(y) * l2 * np.eye(X.shape[1]), xs.T @ ys)
  w = ws * sy / sd
  return w, my - mu @ w


def _rel(a, b):
  return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


@pytest.mark.parametrize("n,d", [(300, 20), (40, 60)])  # primal and dual (D > N) closed forms
@pytest.mark.parametrize("l2", [1e-2, 1.0])
def test_optax_closed_numpy_agree(n, d, l2):
  X, y, _ = _planted(1, n=n, d=d)
  w_ref, b_ref = _ridge_numpy(X, y, l2)
  w_c, b_c = probe.fit_ridge_closed(X, y, l2)
  w_o, b_o = probe.fit_ridge_optax(X, y, l2)
  assert w_c.shape == w_o.shape == (d,)
  assert _rel(w_c, w_ref) < 1e-4 and _rel(w_o, w_ref) < 1e-3 and _rel(w_o, w_c) < 1e-3
  np.testing.assert_allclose([b_c, b_o], [b_ref, b_ref], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(X @ np.asarray(w_o) + b_o, X @ w_ref + b_ref, rtol=1e-3, atol=1e-3)


def test_adam_option_converges_near_closed_form():
  X, y, _ = _planted(2, n=200, d=8)
  w_ref, _ = _ridge_numpy(X, y, 0.1)
  w_a, _ = probe.fit_ridge_optax(X, y, 0.1, steps=2000, lr=0.05)
  assert _rel(w_a, w_ref) < 1e-2


def test_constant_feature_gets_zero_weight():
  X, y, _ = _planted(3, n=100, d=5)
  X[:, 2] = 0.1  # not exact in float32: a rounded mean must not turn it into noise
  w, _ = probe.fit_ridge_closed(X, y, 0.1)
  assert np.all(np.isfinite(w)) and abs(w[2]) < 1e-5
  assert _rel(np.delete(np.asarray(w), 2), _ridge_numpy(np.delete(X, 2, 1), y, 0.1)[0]) < 1e-4


def test_kfold_indices_balanced_and_reproducible():
  ids = np.asarray(probe.kfold_indices(jax.random.key(0), 23, 5))
  assert sorted(np.bincount(ids, minlength=5)) == [4, 4, 5, 5, 5]
  np.testing.assert_array_equal(ids, probe.kfold_indices(jax.random.key(0), 23, 5))
  assert not np.array_equal(ids, probe.kfold_indices(jax.random.key(1), 23, 5))
  outer, inner = map(np.asarray, probe.nested_kfold_indices(jax.random.key(2), 53, 4, 3))
  for f in range(4):
    assert np.all(inner[f][outer == f] == -1)
    sizes = np.bincount(inner[f][outer != f], minlength=3)
    assert sizes.sum() == np.sum(outer != f) and sizes.max() - sizes.min() <= 1


def _cv_numpy(X, y, key, k, inner_k, grid):
  """Nested CV from the same folds, with the numpy ridge: (r, r_per_fold, best_l2, oof)."""
  outer, inner = map(np.asarray, probe.nested_kfold_indices(key, len(y), k, inner_k))
  y64 = np.asarray(y, np.float64)
  oof, best, per_fold = np.zeros(len(y)), [], []
  for f in range(k):
    train = outer != f
    errs = []
    for l2 in grid:
      err = 0.0
      for j in range(inner_k):
        fit_rows, val_rows = train & (inner[f] != j), inner[f] == j
        w, b = _ridge_numpy(X[fit_rows], y[fit_rows], l2)
        err += np.sum((X[val_rows] @ w + b - y64[val_rows]) ** 2)
      errs.append(err)
    best.append(grid[int(np.argmin(errs))])
    w, b = _ridge_numpy(X[train], y[train], best[-1])
    oof[~train] = X[~train] @ w + b
    per_fold.append(scipy.stats.pearsonr(oof[~train], y64[~train]).statistic)
  return scipy.stats.pearsonr(oof, y64).statistic, np.array(per_fold), np.array(best), oof


@pytest.mark.parametrize("solver", ["closed", "optax"])
def test_cv_matches_numpy_recomputation(solver):
  X, y, _ = _planted(4, n=120, d=10, noise=1.0)
  grid = (1e-3, 1e-1, 1.0, 10.0)
  key = jax.random.key(5)
  res = probe.cv_probe_r(X, y, key, k=4, inner_k=3, l2_grid=grid, solver=solver)
  r, per_fold, best, oof = _cv_numpy(X, y, key, 4, 3, grid)
  assert res.n == 120 and res.r_per_fold.shape == (4,) and res.best_l2.shape == (4,)
  np.testing.assert_allclose(res.best_l2, best, rtol=1e-6)
  np.testing.assert_allclose(res.predictions, oof, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(res.r, r, atol=1e-5)
  np.testing.assert_allclose(res.r_per_fold, per_fold, atol=1e-5)


def test_planted_linear_reaches_ceiling():
  X, y, clean = _planted(6, n=400, d=16, noise=0.3)
  ceiling = scipy.stats.pearsonr(clean, y).statistic  # the best any predictor can do
  res = probe.cv_probe_r(X, y, jax.random.key(0), solver="closed")
  assert res.r > 0.9 and abs(res.r - ceiling) < 0.03
  assert np.all(np.asarray(res.r_per_fold) > 0.85)


def test_noise_and_shuffled_targets_give_no_signal():
  X, y, _ = _planted(7, n=400, d=16)
  rng = np.random.default_rng(7)
  noise = probe.cv_probe_r(X, rng.normal(size=400).astype(np.float32), jax.random.key(1), solver="closed")
  shuffled = probe.cv_probe_r(X, rng.permutation(y), jax.random.key(1), solver="closed")
  assert abs(noise.r) < 0.2 and abs(shuffled.r) < 0.2
  # More dimensions than words: a probe that saw its test words would fit them perfectly.
  Xw = rng.normal(size=(150, 300)).astype(np.float32)
  wide = probe.cv_probe_r(Xw, rng.normal(size=150).astype(np.float32), jax.random.key(2), solver="closed")
  assert abs(wide.r) < 0.35 and np.isfinite(np.asarray(wide.predictions)).all()


def test_cv_is_reproducible_and_key_dependent():
  X, y, _ = _planted(8, n=90, d=6, noise=1.0)
  a = probe.cv_probe_r(X, y, jax.random.key(3), k=3, solver="closed")
  b = probe.cv_probe_r(X, y, jax.random.key(3), k=3, solver="closed")
  c = probe.cv_probe_r(X, y, jax.random.key(4), k=3, solver="closed")
  np.testing.assert_array_equal(a.predictions, b.predictions)
  assert not np.array_equal(a.predictions, c.predictions)


@pytest.mark.parametrize("call", [
    lambda X, y: probe.fit_ridge_closed(np.where(np.eye(30, 4, dtype=bool), np.nan, X), y, 0.1),
    lambda X, y: probe.fit_ridge_optax(X, y, 0.0),
    lambda X, y: probe.fit_ridge_closed(X, y[:-1], 0.1),
    lambda X, y: probe.cv_probe_r(X, np.full(30, 3.0, np.float32), jax.random.key(0), k=3),
    lambda X, y: probe.cv_probe_r(X, np.where(np.arange(30) == 4, np.inf, y), jax.random.key(0), k=3),
    lambda X, y: probe.cv_probe_r(X[:8], y[:8], jax.random.key(0), k=3),
    lambda X, y: probe.cv_probe_r(X, y, jax.random.key(0), k=1),
    lambda X, y: probe.cv_probe_r(X, y, jax.random.key(0), k=3, l2_grid=(0.1, -1.0)),
    lambda X, y: probe.cv_probe_r(X, y, jax.random.key(0), k=3, solver="sgd"),
])
def test_bad_input_raises(call):
  X, y, _ = _planted(9, n=30, d=4)
  with pytest.raises(InputError):
    call(X, y)


def test_cv_reports_progress_per_outer_fold_and_equals_one_call():
  """The fits run one outer fold (its inner fits and its refit) per compiled call, with a report
  after each; the result is bit for bit that of every fit in one call."""
  X, y, _ = _planted(6, n=90, d=12, noise=1.0)
  key, grid = jax.random.key(2), jax.numpy.asarray(probe.DEFAULT_L2_GRID, jax.numpy.float32)
  seen = []
  res = probe.cv_probe_r(X, y, key, k=4, inner_k=3, solver="closed", progress=lambda *a: seen.append(a))
  assert seen == [(4, 16), (8, 16), (12, 16), (16, 16)]
  outer, inner, masks = probe._cv_masks(key, 90, 4, 3)
  W, b = probe._cv_fits(X, y, masks, grid, "closed", 500, None, 1e-6)  # all 16 fits at once
  whole = probe._cv_score(X, y, outer, inner, W, b, grid, 4, 3)
  for got, want in zip((res.r, res.r_per_fold, res.best_l2, res.predictions), whole):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  quiet = probe.cv_probe_r(X, y, key, k=4, inner_k=3, solver="closed")
  np.testing.assert_array_equal(np.asarray(quiet.predictions), np.asarray(res.predictions))
