"""Geometry kernels: pairwise-complete r, Mantel test, the relation over pairs, a planted case."""

import jax
import numpy as np
import pytest
from scipy import stats as sp_stats

from jaxsem.errors import InputError
from jaxsem.kernels import geometry as geo


def _numpy_pairwise(x):
  c = x.shape[1]
  r, n = np.full((c, c), np.nan), np.zeros((c, c), int)
  for i in range(c):
    for j in range(c):
      ok = np.isfinite(x[:, i]) & np.isfinite(x[:, j])
      n[i, j] = ok.sum()
      r[i, j] = np.corrcoef(x[ok, i], x[ok, j])[0, 1]
  return r, n


def test_pairwise_complete_r_matches_plain_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 5)) * [1, 2, 3, 0.5, 10] + [0, 5, -3, 100, 1]
  x[:, 1] += 0.8 * x[:, 0]
  x[rng.random(x.shape) < 0.3] = np.nan
  x[:200, 4] = np.nan  # a column rated on half of the words only
  r, n = geo.pairwise_corr(x)
  want_r, want_n = _numpy_pairwise(x)
  np.testing.assert_allclose(r, want_r, atol=2e-5)
  np.testing.assert_array_equal(n, want_n)
  np.testing.assert_array_equal(np.diag(r), 1.0)
  assert np.allclose(r, r.T)


def test_a_bootstrap_draw_equals_r_on_the_drawn_rows():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(300, 4))
  x[rng.random(x.shape) < 0.2] = np.nan
  counts = geo.bootstrap_counts(jax.random.key(0), 300, 6)
  assert np.all(np.asarray(counts).sum(axis=1) == 300)
  draws = geo.pairwise_corr_draws(x, counts)
  for b in (0, 5):
    rows = np.repeat(np.arange(300), np.asarray(counts[b]).astype(int))
    np.testing.assert_allclose(draws[b], _numpy_pairwise(x[rows])[0], atol=2e-5)


def test_constant_or_disjoint_columns_give_nan():
  x = np.array([[1.0, 2.0, np.nan], [2.0, 2.0, np.nan], [3.0, 2.0, 1.0], [4.0, 2.0, 2.0]])
  r, n = geo.pairwise_corr(x)
  assert np.isnan(r[0, 1]) and np.isnan(r[1, 1])  # column 1 is constant
  assert n[0, 2] == 2 and np.isclose(r[0, 2], 1.0)


def _random_corr(rng, s, k=40):
  return np.corrcoef(rng.normal(size=(s, k)))


def test_mantel_statistic_and_null_match_plain_numpy():
  rng = np.random.default_rng(2)
  a, b = _random_corr(rng, 7), _random_corr(rng, 7)
  key = jax.random.key(3)
  out = geo.mantel(a, b, key, n_perm=50)
  iu = np.triu_indices(7, k=1)
  assert np.isclose(out["r"], np.corrcoef(a[iu], b[iu])[0, 1])
  perms = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, 7))(jax.random.split(key, 50)))
  want = [np.corrcoef(a[iu], b[np.ix_(p, p)][iu])[0, 1] for p in perms]
  np.testing.assert_allclose(out["null"], want, atol=1e-5)
  assert out["p_value"] == pytest.approx((1 + np.sum(np.asarray(want) >= out["r"] - 1e-6)) / 51)


def test_relation_matches_numpy_fit():
  rng = np.random.default_rng(4)
  x = rng.normal(size=20)
  y = 0.5 * x + 0.1 * rng.normal(size=20)
  x[3] = np.nan
  rel = geo.relation(y, x)
  ok = np.isfinite(x)
  slope, intercept = np.polyfit(x[ok], y[ok], 1)
  assert np.isclose(rel["r"], np.corrcoef(x[ok], y[ok])[0, 1])
  assert np.isclose(rel["slope"], slope) and np.isclose(rel["intercept"], intercept)
  assert rel["n"] == 19


def _planted(seed, s=8, d=40, n=3000, noise=0.5):
  """Human ratings as projections of random words on known axes, plus noise."""
  rng = np.random.default_rng(seed)
  axes = rng.normal(size=(s, 3)) @ rng.normal(size=(3, d))  # low rank: cosines spread over [-1, 1]
  words = rng.normal(size=(n, d))
  unit = axes / np.linalg.norm(axes, axis=1, keepdims=True)
  ratings = words @ unit.T + noise * rng.normal(size=(n, s))
  ratings[rng.random(ratings.shape) < 0.2] = np.nan
  return axes, ratings


def test_planted_axes_recover_the_relation():
  axes, ratings = _planted(0)
  human, _ = geo.pairwise_corr(ratings)
  cos = geo.cosine_matrix(axes)
  rel = geo.relation(geo.upper(human), geo.upper(cos))
  assert rel["r"] > 0.98
  # With unit axes, isotropic words and noise variance 0.25, human r = cos / (1 + 0.25).
  assert rel["slope"] == pytest.approx(1 / 1.25, abs=0.05)
  assert geo.mantel(human, cos, jax.random.key(0), n_perm=500)["p_value"] < 0.01


def _uniform_d(p):
  """Kolmogorov-Smirnov distance of p-values from the uniform distribution."""
  return sp_stats.kstest(p, "uniform").statistic


def test_mantel_null_is_uniform_and_the_check_catches_a_related_pair():
  rng = np.random.default_rng(5)
  null_p = [geo.mantel(_random_corr(rng, 8), _random_corr(rng, 8), jax.random.key(i), n_perm=99)["p_value"]
            for i in range(200)]
  # KS critical distance at alpha 0.01 for 200 draws is 1.63 / sqrt(200) = 0.115; the p-values move in
  # steps of 1/100, which adds at most 0.01.
  assert _uniform_d(null_p) < 0.125
  assert 0.42 < np.mean(null_p) < 0.58
  related = [geo.mantel(*(lambda a: (a, a + 0.3 * _random_corr(rng, 8)))(_random_corr(rng, 8)),
                        jax.random.key(i), n_perm=99)["p_value"] for i in range(200)]
  assert _uniform_d(related) > 0.125  # the same check fails a test whose p-values are not uniform


def test_mantel_input_errors():
  a = np.eye(3)
  with pytest.raises(InputError, match="at least 3"):
    geo.mantel(np.eye(2), np.eye(2), jax.random.key(0), 10)
  with pytest.raises(InputError, match="one shape"):
    geo.mantel(a, np.eye(4), jax.random.key(0), 10)
  with pytest.raises(InputError, match="alternative"):
    geo.mantel(a, a, jax.random.key(0), 10, alternative="less")


def test_pole_cosine_draws_with_one_word_poles_equal_the_cosine():
  rng = np.random.default_rng(6)
  poles = [(rng.normal(size=(1, 16)), rng.normal(size=(1, 16))) for _ in range(4)]
  dirs = np.stack([p[0] - n[0] for p, n in poles])
  draws = geo.pole_cosine_draws(jax.random.key(0), poles, 5)
  np.testing.assert_allclose(draws, np.broadcast_to(geo.cosine_matrix(dirs), (5, 4, 4)), atol=1e-5)
  many = [(rng.normal(size=(6, 16)), rng.normal(size=(5, 16))) for _ in range(4)]
  spread = geo.pole_cosine_draws(jax.random.key(0), many, 50)
  assert spread[:, 0, 1].std() > 0.01  # resampled pole words move the cosines
