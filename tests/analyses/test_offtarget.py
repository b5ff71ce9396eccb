"""Off-target analysis on planted grids, checked against numpy."""

import numpy as np
import pytest

from jaxsem.analyses import offtarget
from jaxsem.errors import InputError
from jaxsem.report import figures

W, J, DIM = 60, 12, 6
ALPHAS = np.array([-4.0, -2.0, 2.0, 4.0, 8.0])


def _cosines(rng, steered):
  """``[S, J]`` cosines of unit directions, steered scale s being readout scale steered[s]."""
  u = rng.normal(size=(J, DIM))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  return (u @ u.T)[steered]


def _grid(rng, table, noise, c=0.7):
  """effects[w, s, a, j] = alpha_a * (c * table[s, j] + noise) per word."""
  s = table.shape[0]
  per_word = c * table[None] + noise * rng.normal(size=(W, s, J))
  jitter = 0.01 * rng.normal(size=(W, s, len(ALPHAS), J))
  return ALPHAS[None, None, :, None] * per_word[:, :, None, :] + jitter


@pytest.fixture(scope="module")
def planted():
  rng = np.random.default_rng(0)
  steered = np.arange(J)
  cos = _cosines(rng, steered)
  return cos, steered, _grid(rng, cos, noise=0.2)


def test_planted_slope_is_recovered_with_ci_and_small_p(planted):
  cos, steered, effects = planted
  res = offtarget.analyse(effects, ALPHAS, cos, steered, key_or_seed=1, n_boot=400, n_perm=400)
  assert res["slope"] == pytest.approx(1.0, abs=0.05)
  assert res["intercept"] == pytest.approx(0.0, abs=0.03)
  assert res["r"] > 0.97 and res["r2"] == pytest.approx(res["r"] ** 2)
  lo, hi = res["ci"]["slope"]
  assert lo < 1.0 < hi and hi - lo < 0.2
  assert res["ci"]["r"][0] > 0.9
  assert res["n_pairs"] == J * (J - 1) and res["n_words"] == W
  assert res["shuffled_labels"]["p_value"] == pytest.approx(1 / 401)
  assert res["shuffled_labels"]["null_r_p95"] < 0.5
  d = np.array(res["D"])
  np.testing.assert_allclose(np.diag(d), 1.0)
  pair = res["per_pair"][0]
  assert (pair["from"], pair["to"]) == (0, 1) and pair["cos"] == pytest.approx(cos[0, 1])
  assert pair["D"] == pytest.approx(d[0, 1])
  dose = res["dose_response"]
  assert dose["alphas"] == ALPHAS.tolist()
  np.testing.assert_allclose(dose["on_target_mean"], 0.7 * ALPHAS, rtol=0.05)
  assert np.all(np.diff(dose["off_target_abs"][2:]) > 0)  # grows with alpha on the positive side


def test_unrelated_effects_give_no_correlation():
  rng = np.random.default_rng(1)
  steered = np.array([3, 0, 7, 5, 9, 1, 11, 2])  # fewer steered than readout scales, shuffled
  cos = _cosines(rng, steered)
  table = 0.5 * rng.normal(size=(len(steered), J))  # off-target structure unrelated to cos
  table[np.arange(len(steered)), steered] = 1.0
  res = offtarget.analyse(_grid(rng, table, noise=0.1), ALPHAS, cos, steered, key_or_seed=2, n_boot=200,
                          n_perm=500, readout_names=[f"r{j}" for j in range(J)])
  assert abs(res["r"]) < 0.25
  assert res["shuffled_labels"]["p_value"] > 0.05
  assert abs(res["r"]) < res["shuffled_labels"]["null_r_p95"]
  assert res["per_pair"][0]["from"] == "r3" and res["per_pair"][0]["to"] == "r0"
  assert all(p["to"] != p["from"] for p in res["per_pair"])


def test_shuffled_labels_keep_on_target_pairs_and_cosines():
  rng = np.random.default_rng(2)
  steered = np.array([4, 1, 6, 0, 9])
  cos = _cosines(rng, steered)
  null = offtarget.shuffled_label_cosines(cos, steered, 3, n_perm=50)
  assert null.shape == (50, 5, J)
  np.testing.assert_allclose(null[:, np.arange(5), steered], 1.0)  # on-target stays on-target
  off = np.ones((5, J), bool)
  off[np.arange(5), steered] = False
  for p in range(50):
    np.testing.assert_allclose(np.sort(null[p][off]), np.sort(cos[off]))
    block = null[p][:, steered]  # the steered x steered block stays symmetric
    np.testing.assert_allclose(block, block.T)
  assert len({null[p].tobytes() for p in range(50)}) > 40  # the labels really move
  sym = _cosines(rng, np.arange(J))
  full = offtarget.shuffled_label_cosines(sym, np.arange(J), 4, n_perm=5)
  for p in range(5):  # all scales steered: rows and columns permuted together
    np.testing.assert_allclose(full[p], full[p].T)
    np.testing.assert_allclose(np.linalg.eigvalsh(full[p]), np.linalg.eigvalsh(sym), atol=1e-10)


def test_dose_slopes_exact_and_diagonal_one_and_regress_matches_numpy():
  rng = np.random.default_rng(3)
  base = rng.normal(size=(7, 4, J)) + 3.0
  effects = ALPHAS[None, None, :, None] * base[:, :, None, :]
  slopes = offtarget.dose_slopes(effects, ALPHAS)
  np.testing.assert_allclose(slopes, base, rtol=0, atol=1e-12)
  steered = np.array([2, 7, 0, 5])
  d = offtarget.offtarget_matrix(slopes, steered)
  np.testing.assert_allclose(d[np.arange(4), steered], 1.0, atol=1e-15)
  np.testing.assert_allclose(d, base.mean(0) / base.mean(0)[np.arange(4), steered][:, None], atol=1e-12)
  cos = rng.uniform(-1, 1, size=(4, J))
  fit = offtarget.regress(d, cos, steered)
  off = np.ones((4, J), bool)
  off[np.arange(4), steered] = False
  slope, intercept = np.polyfit(cos[off], d[off], 1)
  r = np.corrcoef(cos[off], d[off])[0, 1]
  assert fit["n_pairs"] == 4 * (J - 1)
  assert abs(fit["slope"] - slope) < 1e-10 and abs(fit["intercept"] - intercept) < 1e-10
  assert abs(fit["r"] - r) < 1e-10 and abs(fit["r2"] - r * r) < 1e-10


def test_compare_methods_planted_half_offtarget():
  rng = np.random.default_rng(4)
  n_w, s = 200, 6
  steered = np.arange(s)
  table = rng.uniform(0.2, 0.6, size=(s, J)) * rng.choice([-1, 1], size=(s, J))

  def method(scale):
    e = scale * table[None] * (1 + 0.3 * rng.normal(size=(n_w, s, J)))
    e[:, steered, steered] = 1.0 + 0.2 * rng.normal(size=(n_w, s))
    return e

  res = offtarget.compare_methods({"plain": method(1.0), "orth": method(0.5), "same": method(1.0)}, steered,
                                  seed=5, n_boot=500)
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


def test_zero_on_target_slope_names_the_scale():
  rng = np.random.default_rng(5)
  steered = np.arange(4)
  effects = _grid(rng, _cosines(rng, steered), noise=0.1)
  effects[:, 2, :, 2] = 0.0
  slopes = offtarget.dose_slopes(effects, ALPHAS)
  with pytest.raises(InputError, match=r"'s2' \(index 2\)"):
    offtarget.offtarget_matrix(slopes, steered, names=["s0", "s1", "s2", "s3"])
  with pytest.raises(InputError, match=r"index 2"):
    offtarget.analyse(effects, ALPHAS, _cosines(rng, steered), steered, key_or_seed=0, n_boot=5, n_perm=5)
  with pytest.raises(InputError, match="repeats"):
    offtarget.offtarget_matrix(slopes, np.array([0, 1, 1, 3]))
  with pytest.raises(InputError, match="alphas"):
    offtarget.dose_slopes(effects, np.zeros(len(ALPHAS)))


def test_summarise_control():
  rng = np.random.default_rng(6)
  steered = np.arange(3)
  table = np.full((3, J), -0.25)
  table[steered, steered] = 2.0
  out = offtarget.summarise_control(_grid(rng, table, noise=0.0, c=1.0), ALPHAS, steered)
  assert out["mean_ontarget_slope"] == pytest.approx(2.0, abs=1e-3)
  assert out["mean_abs_offtarget_slope"] == pytest.approx(0.25, abs=1e-3)
  assert out["off_per_on"] == pytest.approx(0.125, abs=1e-3) and out["n_words"] == W


def test_figures_write_pngs(tmp_path, planted):
  cos, steered, effects = planted
  res = offtarget.analyse(effects, ALPHAS, cos, steered, key_or_seed=0, n_boot=20, n_perm=20)
  pairs = res["per_pair"]
  paths = [
      figures.offtarget_scatter(tmp_path / "scatter.png", [p["cos"] for p in pairs], [p["D"] for p in pairs],
                                res["slope"], res["intercept"], res["r"], title="planted"),
      figures.dose_response(tmp_path / "sub" / "dose.png", res["dose_response"]["alphas"],
                            res["dose_response"]["on_target"], res["dose_response"]["off_target_abs"],
                            [f"s{i}" for i in range(J)], title="planted"),
  ]
  for path in paths:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
  assert not [p for p in tmp_path.rglob("*") if "tmp" in p.name]
