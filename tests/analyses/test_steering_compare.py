"""Steering methods and control directions compared on planted effects, checked against numpy."""

import jax
import numpy as np
import pytest

from jaxsem.analyses import steering_compare
from jaxsem.errors import InputError
from jaxsem.kernels import stats
from tests.analyses.test_offtarget import ALPHAS, J, W, _grid, _numpy_slopes


def test_compare_methods_planted_half_offtarget():
  rng = np.random.default_rng(4)
  n_w, s = 200, 6
  steered = np.arange(s)
  table = rng.uniform(0.2, 0.6, size=(s, J)) * rng.choice([-1, 1], size=(s, J))

  def method(scale):
    e = scale * table[None] * (1 + 0.3 * rng.normal(size=(n_w, s, J)))
    e[:, steered, steered] = 1.0 + 0.2 * rng.normal(size=(n_w, s))
    return e

  res = steering_compare.compare_methods({"plain": method(1.0), "orth": method(0.5), "same": method(1.0)},
                                         steered, seed=5, n_boot=500)
  orth = res["reduction_vs_plain"]["orth"]
  assert orth["value"] == pytest.approx(0.5, abs=0.05)
  assert orth["ci"][0] < 0.5 < orth["ci"][1] and orth["ci"][0] > 0.3
  same = res["reduction_vs_plain"]["same"]
  assert same["ci"][0] < 0 < same["ci"][1]
  plain = res["methods"]["plain"]
  assert plain["on_target"] == pytest.approx(1.0, abs=0.05)
  assert plain["on_target_ci"][0] < plain["on_target"] < plain["on_target_ci"][1]
  assert plain["off_per_on"] == pytest.approx(plain["off_target_abs"] / abs(plain["on_target"]))
  assert plain["off_target_abs"] == pytest.approx(np.abs(table[~np.eye(s, J, dtype=bool)]).mean(), rel=0.05)
  assert "plain" not in res["reduction_vs_plain"] and res["n_words"] == n_w


def test_summarise_control():
  rng = np.random.default_rng(6)
  steered = np.arange(3)
  table = np.full((3, J), -0.25)
  table[steered, steered] = 2.0
  out = steering_compare.summarise_control(_grid(rng, table, noise=0.0, c=1.0), ALPHAS, steered)
  assert out["mean_ontarget_slope"] == pytest.approx(2.0, abs=1e-3)
  assert out["mean_abs_offtarget_slope"] == pytest.approx(0.25, abs=1e-3)
  assert out["off_per_on"] == pytest.approx(0.125, abs=1e-3) and out["n_words"] == W


def test_random_control_matches_numpy_and_counts_signs_per_word():
  rng = np.random.default_rng(16)
  n_w, n_r, n_s, n_j, n_boot, seed = 30, 6, 4, 9, 200, 8
  steered = np.array([2, 5, 0, 7])
  # Random directions: per-word slopes of +-0.25 with a random sign per word, so the mean over
  # words of the signed slope is near 0 while the mean |slope| is 0.25.
  rnd_table = 0.25 * rng.choice([-1.0, 1.0], size=(n_w, n_r, n_j))
  ant_table = 0.5 * rng.choice([-1.0, 1.0], size=(n_w, n_s, n_j))
  ant_table[:, np.arange(n_s), steered] = 2.0
  rnd = ALPHAS[None, None, :, None] * rnd_table[:, :, None, :] + 0.01 * rng.normal(size=(n_w, n_r, 5, n_j))
  ant = ALPHAS[None, None, :, None] * ant_table[:, :, None, :] + 0.01 * rng.normal(size=(n_w, n_s, 5, n_j))
  res = steering_compare.random_control(rnd, ALPHAS, ant, steered, key_or_seed=seed, n_boot=n_boot)

  rnd_s, ant_s = _numpy_slopes(rnd, ALPHAS), _numpy_slopes(ant, ALPHAS)
  rnd_w = np.array([np.mean(np.abs(rnd_s[w])) for w in range(n_w)])
  ant_w = np.array([np.mean([abs(ant_s[w, s, j]) for s in range(n_s) for j in range(n_j) if j != steered[s]])
                    for w in range(n_w)])
  assert res["random_mean_abs_slope"] == pytest.approx(rnd_w.mean(), abs=1e-12)
  assert res["antonym_mean_abs_offtarget_slope"] == pytest.approx(ant_w.mean(), abs=1e-12)
  assert res["ratio"] == pytest.approx(ant_w.mean() / rnd_w.mean(), abs=1e-12)
  on = ant_s[:, np.arange(n_s), steered].mean()
  assert res["antonym_mean_ontarget_slope"] == pytest.approx(on, abs=1e-12)
  idx = np.asarray(stats.bootstrap_indices(jax.random.key(seed), n_w, n_boot))
  rnd_b, ant_b = rnd_w[idx].mean(axis=1), ant_w[idx].mean(axis=1)
  np.testing.assert_allclose(res["random_ci"], np.percentile(rnd_b, [2.5, 97.5]), rtol=1e-5)
  np.testing.assert_allclose(res["antonym_ci"], np.percentile(ant_b, [2.5, 97.5]), rtol=1e-5)
  np.testing.assert_allclose(res["ratio_ci"], np.percentile(ant_b / rnd_b, [2.5, 97.5]), rtol=1e-5)
  # planted values
  assert res["random_mean_abs_slope"] == pytest.approx(0.25, abs=0.01)
  assert res["antonym_mean_abs_offtarget_slope"] == pytest.approx(0.5, abs=0.01)
  assert res["ratio"] == pytest.approx(2.0, abs=0.1) and res["ratio_ci"][0] < 2.0 < res["ratio_ci"][1] + 1e-3
  assert np.mean(np.abs(rnd_s.mean(axis=0))) < 0.15  # what averaging signed slopes first would report
  assert (res["n_directions"], res["n_words"], res["n_boot"]) == (n_r, n_w, n_boot)
  assert res["statistic"].startswith("mean over words of |dose slope|")
  with pytest.raises(InputError, match="12 words but the antonym effects have 30"):
    steering_compare.random_control(rnd[:12], ALPHAS, ant, steered, key_or_seed=0, n_boot=5)
  with pytest.raises(InputError, match="random-direction effects contain NaN"):
    bad = rnd.copy()
    bad[3, 1, 0, 0] = np.nan
    steering_compare.random_control(bad, ALPHAS, ant, steered, key_or_seed=0, n_boot=5)
