"""Correlations, bootstrap CIs and null summaries against plain numpy/scipy."""

import jax
import numpy as np
import pytest
import scipy.stats

from jaxsem.errors import InputError
from jaxsem.kernels import stats


def _pair(seed, n=60, rho=0.5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=n)
  y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=n)
  return x.astype(np.float32), y.astype(np.float32)


def _ties(seed, n=80):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 6, size=n).astype(np.float32)
  y = (x + rng.integers(0, 4, size=n)).astype(np.float32)
  return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pearson_spearman_match_scipy(seed):
  for x, y in (_pair(seed), _ties(seed), (_pair(seed)[0] * 1e3 + 5e3, _pair(seed)[1] * 1e-3 - 2.0)):
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    np.testing.assert_allclose(stats.pearson(x, y), scipy.stats.pearsonr(x64, y64).statistic, atol=1e-5)
    np.testing.assert_allclose(stats.spearman(x, y), scipy.stats.spearmanr(x64, y64).statistic, atol=1e-5)


def test_rank_matches_scipy_average_ties():
  x, _ = _ties(3)
  np.testing.assert_array_equal(stats.rank(x), scipy.stats.rankdata(x))
  grid = np.stack([x, -x, np.arange(x.size, dtype=np.float32)], axis=1)
  np.testing.assert_array_equal(stats.rank(grid), scipy.stats.rankdata(grid, axis=0))


def test_columns_equal_loop_and_scipy():
  rng = np.random.default_rng(4)
  y = rng.normal(size=70).astype(np.float32)
  X = (y[:, None] * rng.uniform(-1, 1, size=6) + rng.normal(size=(70, 6))).astype(np.float32)
  X[:, 5] = np.round(X[:, 5])  # ties
  pc, sc = stats.pearson_columns(X, y), stats.spearman_columns(X, y)
  assert pc.shape == sc.shape == (6,)
  for j in range(6):
    np.testing.assert_allclose(pc[j], stats.pearson(X[:, j], y), atol=1e-6)
    np.testing.assert_allclose(sc[j], stats.spearman(X[:, j], y), atol=1e-6)
    np.testing.assert_allclose(pc[j], scipy.stats.pearsonr(X[:, j], y).statistic, atol=1e-5)
    np.testing.assert_allclose(sc[j], scipy.stats.spearmanr(X[:, j], y).statistic, atol=1e-5)


def test_jit_and_constant_under_jit():
  x, y = _pair(5)
  np.testing.assert_allclose(jax.jit(stats.spearman)(x, y), stats.spearman(x, y), atol=1e-7)
  np.testing.assert_allclose(jax.jit(stats.pearson)(x, y), stats.pearson(x, y), atol=1e-7)
  assert np.isnan(jax.jit(stats.pearson)(np.ones_like(x), y))


def _numpy_boot(x, y, idx, stat, level):
  corr = scipy.stats.pearsonr if stat == "pearson" else scipy.stats.spearmanr
  dist = []
  for row in idx:
    xb, yb = np.asarray(x, np.float64)[row], np.asarray(y, np.float64)[row]
    dist.append(np.nan if np.ptp(xb) == 0 or np.ptp(yb) == 0 else corr(xb, yb).statistic)
  tail = 50 * (1 - level)
  return np.array(dist), np.nanpercentile(dist, [tail, 100 - tail])


@pytest.mark.parametrize("stat", ["pearson", "spearman"])
def test_bootstrap_ci_equals_numpy_with_same_indices(stat):
  x, y = _ties(6, n=50) if stat == "spearman" else _pair(6, n=50)
  key = jax.random.key(11)
  idx = np.asarray(stats.bootstrap_indices(key, 50, 300))
  assert idx.shape == (300, 50) and idx.min() >= 0 and idx.max() < 50
  dist_ref, ci_ref = _numpy_boot(x, y, idx, stat, 0.9)
  np.testing.assert_allclose(stats.bootstrap_distribution(x, y, idx, stat), dist_ref, atol=1e-5)
  ci = stats.bootstrap_ci(x, y, key, stat=stat, n_boot=300, level=0.9)
  assert ci.shape == (2,)
  np.testing.assert_allclose(ci, ci_ref, atol=1e-5)
  # Batched over columns: every column uses the same resamples.
  X = np.stack([x, y, x + y], axis=1)
  ci_cols = stats.bootstrap_ci(X, y, key, stat=stat, n_boot=300, level=0.9)
  assert ci_cols.shape == (3, 2)
  np.testing.assert_allclose(ci_cols[0], ci_ref, atol=1e-5)
  np.testing.assert_allclose(ci_cols[2], _numpy_boot(X[:, 2], y, idx, stat, 0.9)[1], atol=1e-5)


def test_bootstrap_small_n_drops_constant_resamples():
  x = np.array([0.0, 1.0, 2.0, 4.0], np.float32)
  y = np.array([1.0, 0.0, 3.0, 2.0], np.float32)
  idx = np.asarray(stats.bootstrap_indices(jax.random.key(0), 4, 400))
  dist = np.asarray(stats.bootstrap_distribution(x, y, idx, "pearson"))
  dist_ref, ci_ref = _numpy_boot(x, y, idx, "pearson", 0.95)
  assert np.isnan(dist_ref).any()  # some resamples repeat one word only
  np.testing.assert_array_equal(np.isnan(dist), np.isnan(dist_ref))
  np.testing.assert_allclose(stats.bootstrap_ci(x, y, jax.random.key(0), n_boot=400), ci_ref, atol=1e-5)


def test_bootstrap_covers_truth_and_narrows_with_n():
  rho = 0.5
  covered, widths = 0, {}
  for rep in range(20):
    x, y = _pair(100 + rep, n=150, rho=rho)
    low, high = np.asarray(stats.bootstrap_ci(x, y, jax.random.key(rep), n_boot=500))
    covered += low <= rho <= high
  assert covered >= 16  # nominal 95%: 19 expected of 20
  for n in (50, 800):
    x, y = _pair(7, n=n, rho=rho)
    low, high = np.asarray(stats.bootstrap_ci(x, y, jax.random.key(1), n_boot=500))
    widths[n] = high - low
    fz = np.asarray(stats.fisher_z_ci(stats.pearson(x, y), n))
    np.testing.assert_allclose([low, high], fz, atol=0.06)  # analytic cross-check
  assert widths[800] < 0.5 * widths[50]


def test_fisher_z_ci_formula():
  r, n = 0.3, 40
  z, crit = np.arctanh(r), scipy.stats.norm.ppf(0.975)
  ref = np.tanh([z - crit / np.sqrt(37), z + crit / np.sqrt(37)])
  np.testing.assert_allclose(stats.fisher_z_ci(r, n), ref, atol=1e-6)
  spear = np.asarray(stats.fisher_z_ci(np.array([r, -r]), n, stat="spearman"))
  assert spear.shape == (2, 2) and spear[0, 1] - spear[0, 0] > ref[1] - ref[0]


def test_null_summary_matches_formula():
  rng = np.random.default_rng(8)
  null = rng.normal(scale=0.2, size=(3, 200)).astype(np.float32)
  obs = np.array([0.5, -0.1, 0.05], np.float32)
  out = stats.null_summary(obs, null)
  for i in range(3):
    hits = np.sum(np.abs(null[i]) >= abs(obs[i]))
    np.testing.assert_allclose(out["p_value"][i], (1 + hits) / 201, rtol=1e-6)
    np.testing.assert_allclose(out["p95"][i], np.percentile(np.abs(null[i]), 95), rtol=1e-6)
  greater = stats.null_summary(obs, null, alternative="greater")["p_value"]
  less = stats.null_summary(obs, null, alternative="less")["p_value"]
  np.testing.assert_allclose(greater, (1 + np.sum(null >= obs[:, None], axis=1)) / 201, rtol=1e-6)
  np.testing.assert_allclose(less, (1 + np.sum(null <= obs[:, None], axis=1)) / 201, rtol=1e-6)
  shared = stats.null_summary(obs, null[0])  # one null for every observed value
  assert shared["p_value"].shape == (3,) and shared["p95"].shape == ()


def test_null_planted_signal_and_random_observed():
  rng = np.random.default_rng(9)
  n, d, m = 300, 32, 199
  vectors = rng.normal(size=(n, d)).astype(np.float32)
  truth = rng.normal(size=d)
  y = (vectors @ truth / np.linalg.norm(truth) + 0.5 * rng.normal(size=n)).astype(np.float32)
  null_dirs = rng.normal(size=(d, m))
  null = stats.null_distribution((vectors @ null_dirs).astype(np.float32), y)
  assert null.shape == (m,)
  np.testing.assert_allclose(null[:5], [scipy.stats.pearsonr(vectors @ null_dirs[:, j], y).statistic
                                        for j in range(5)], atol=1e-5)
  observed = stats.pearson((vectors @ truth).astype(np.float32), y)
  out = stats.null_summary(observed, null)
  np.testing.assert_allclose(out["p_value"], 1 / (m + 1), rtol=1e-6)
  assert out["p95"] < 0.5 < observed
  # Random "observed" directions are exchangeable with the nulls: p-values are not small.
  random_obs = stats.pearson_columns((vectors @ rng.normal(size=(d, 40))).astype(np.float32), y)
  p = np.asarray(stats.null_summary(random_obs, null)["p_value"])
  assert np.mean(p < 0.05) <= 0.15 and 0.3 < np.median(p) < 0.7


@pytest.mark.parametrize("call", [
    lambda: stats.pearson(np.array([1.0, np.nan, 2.0, 3.0]), np.arange(4.0)),
    lambda: stats.spearman(np.arange(4.0), np.array([1.0, np.inf, 2.0, 3.0])),
    lambda: stats.pearson(np.array([1.0, 2.0]), np.array([2.0, 1.0])),
    lambda: stats.pearson(np.ones(5), np.arange(5.0)),
    lambda: stats.spearman(np.arange(5.0), np.full(5, 2.0)),
    lambda: stats.pearson(np.arange(5.0), np.arange(4.0)),
    lambda: stats.pearson_columns(np.stack([np.arange(5.0), np.ones(5)], 1), np.arange(5.0)),
    lambda: stats.pearson_columns(np.arange(5.0), np.arange(5.0)),
    lambda: stats.bootstrap_ci(np.arange(5.0), np.arange(5.0)[::-1], jax.random.key(0), stat="kendall"),
    lambda: stats.bootstrap_ci(np.arange(5.0), np.arange(5.0)[::-1], jax.random.key(0), level=95),
    lambda: stats.null_distribution(np.full((5, 3), np.nan), np.arange(5.0)),
    lambda: stats.null_summary(0.3, np.array([0.1, np.nan])),
    lambda: stats.null_summary(0.3, np.array([0.1, 0.2]), alternative="two_sided"),
    lambda: stats.fisher_z_ci(0.5, 3),
])
def test_bad_input_raises(call):
  with pytest.raises(InputError):
    call()


def test_error_message_names_the_problem():
  with pytest.raises(InputError, match="word 1"):
    stats.pearson(np.array([1.0, np.nan, 2.0, 3.0]), np.arange(4.0))
  with pytest.raises(InputError, match="column 1"):
    stats.spearman_columns(np.stack([np.arange(5.0), np.ones(5)], 1), np.arange(5.0))
  with pytest.raises(InputError, match="at least 3"):
    stats.spearman(np.array([1.0, 2.0]), np.array([2.0, 1.0]))


def test_null_summary_flags_the_floor_and_the_null_size():
  null = np.array([[0.1, -0.2, 0.3, 0.05], [0.1, -0.6, 0.3, 0.05]], np.float32)
  out = stats.null_summary(np.array([0.5, 0.5], np.float32), null)
  assert out["n_null"] == 4 and isinstance(out["n_null"], int)
  np.testing.assert_array_equal(out["p_at_floor"], [True, False])  # -0.6 is as extreme as 0.5
  np.testing.assert_allclose(out["p_value"], [1 / 5, 2 / 5], rtol=1e-6)
  one_sided = stats.null_summary(np.float32(0.5), null[1], alternative="greater")
  assert bool(one_sided["p_at_floor"]) and float(one_sided["p_value"]) == pytest.approx(1 / 5)


def test_empirical_p_matches_the_null_summary_formula():
  out = stats.empirical_p(0, 499)
  assert out == {"p_value": pytest.approx(0.002), "p_at_floor": True, "n_null": 499}
  arr = stats.empirical_p(np.array([0, 3, 499]), 499)
  np.testing.assert_allclose(arr["p_value"], [1 / 500, 4 / 500, 1.0])
  np.testing.assert_array_equal(arr["p_at_floor"], [True, False, False])
  for bad in ((-1, 10), (11, 10), (1.5, 10), (0, 0)):
    with pytest.raises(InputError):
      stats.empirical_p(*bad)


def _holm_loop(p):
  """Holm's step-down procedure, written out as in the textbook."""
  idx = [i for i, v in enumerate(p) if v is not None and not np.isnan(v)]
  order = sorted(idx, key=lambda i: p[i])
  m = len(order)
  out = [np.nan] * len(p)
  running = 0.0
  for rank_, i in enumerate(order):
    running = max(running, min(1.0, (m - rank_) * p[i]))
    out[i] = running
  return out


def test_holm_textbook_example():
  # Sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06).
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
  np.testing.assert_allclose(stats.holm([0.2, 0.9]), [0.4, 0.9])
  np.testing.assert_allclose(stats.holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1, still monotone
  assert stats.holm([]).shape == (0,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holm_matches_a_plain_loop_with_missing_tests_and_ties(seed):
  rng = np.random.default_rng(seed)
  p = list(np.round(rng.beta(0.5, 2.0, size=25), 2))  # rounding makes ties
  for i in rng.choice(25, size=4, replace=False):
    p[i] = None if i % 2 else np.nan
  got = stats.holm(p)
  np.testing.assert_allclose(got, _holm_loop(p), equal_nan=True)
  ok = ~np.isnan(got)
  raw = np.array([np.nan if v is None else v for v in p])
  assert ok.sum() == 21 and np.all(got[ok] >= raw[ok]) and np.all(got[ok] <= 1)
  order = np.argsort(raw[ok])
  assert np.all(np.diff(got[ok][order]) >= 0)  # monotone in the raw p-values
  assert stats.holm(np.array(raw).reshape(5, 5)).shape == (5, 5)


def test_holm_rejects_values_outside_zero_one():
  for bad in ([0.1, 1.2], [-0.1], [np.inf]):
    with pytest.raises(InputError, match="Holm"):
      stats.holm(bad)
