"""Off-target analysis on planted grids, checked against numpy."""

import jax
import numpy as np
import pytest

from jaxsem.analyses import offtarget, offtarget_fits
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


# --- direct-path control, joint bootstrap, random-direction control --------------------------------


def _table_grid(rng, table, n_words, noise):
  """effects[w, s, a, j] = alpha_a * (table[s, j] + noise * N(0, 1)) per word, plus a little jitter."""
  per_word = table[None] + noise * rng.normal(size=(n_words, *table.shape))
  jitter = 0.001 * rng.normal(size=(n_words, table.shape[0], len(ALPHAS), table.shape[1]))
  return ALPHAS[None, None, :, None] * per_word[:, :, None, :] + jitter


def _numpy_slopes(effects, alphas):
  """Per-word dose slopes through the origin by least squares, one column per (w, s, j)."""
  w, s, a, j = effects.shape
  cols = np.moveaxis(effects, 2, 0).reshape(a, -1)
  return np.linalg.lstsq(alphas[:, None], cols, rcond=None)[0].reshape(w, s, j)


def _numpy_partial(y, x, z):
  design = np.column_stack([np.ones_like(z), z])
  ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
  rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
  return np.corrcoef(ry, rx)[0, 1]


def _geometry(rng, n):
  """Cosines of ``n`` unit directions and a direct-path prediction correlated with them (r ~ 0.8)."""
  cos = _cosines_n(rng, n)
  direct = 0.8 * cos + 0.15 * rng.normal(size=(n, n))
  np.fill_diagonal(direct, 1.0)
  return cos, direct


def _cosines_n(rng, n, dim=8):
  u = rng.normal(size=(n, dim))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  return u @ u.T


def test_partial_correlation_matches_numpy():
  rng = np.random.default_rng(10)
  z = rng.normal(size=50)
  x = 0.7 * z + rng.normal(size=50)
  y = 0.5 * x - 0.8 * z + rng.normal(size=50)
  got = offtarget_fits.partial_correlation(y, x, z)
  assert got == pytest.approx(_numpy_partial(y, x, z), abs=1e-12)
  assert abs(got - np.corrcoef(y, x)[0, 1]) > 0.1  # controlling for z changes the answer
  z2 = np.column_stack([z, rng.normal(size=50)])
  design = np.column_stack([np.ones(50), z2])
  ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
  rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
  assert offtarget_fits.partial_correlation(y, x, z2) == pytest.approx(np.corrcoef(ry, rx)[0, 1], abs=1e-12)
  assert np.isnan(offtarget_fits.partial_correlation(2.0 * z + 1.0, x, z))  # y is explained by z exactly
  with pytest.raises(InputError, match="needs y"):
    offtarget_fits.partial_correlation(y, x[:-1], z)
  with pytest.raises(InputError, match="at least 4 values"):
    offtarget_fits.partial_correlation(y[:2], x[:2], z[:2])


def test_pure_geometry_gives_partial_r_near_zero():
  rng = np.random.default_rng(11)
  n = 24
  cos, direct = _geometry(rng, n)
  effects = _table_grid(rng, direct, n_words=40, noise=0.02)  # D = direct, plus a little noise
  res = offtarget.analyse(effects, ALPHAS, cos, np.arange(n), key_or_seed=3, n_boot=300, n_perm=20,
                          direct=direct)
  dp = res["direct_path"]
  off = ~np.eye(n, dtype=bool)
  d = np.array(res["D"])
  assert dp["r_cos"] > 0.7 and dp["r_cos"] == pytest.approx(res["r"], abs=1e-12)
  assert dp["share_direct"] > 0.98
  assert abs(dp["partial_r"]) < 0.1
  assert dp["partial_ci"][0] < 0 < dp["partial_ci"][1]
  assert dp["n_pairs"] == n * (n - 1)
  # against numpy
  assert dp["r_direct"] == pytest.approx(np.corrcoef(d[off], direct[off])[0, 1], abs=1e-12)
  assert dp["share_direct"] == pytest.approx(dp["r_direct"] ** 2, abs=1e-12)
  assert dp["partial_r"] == pytest.approx(_numpy_partial(d[off], cos[off], direct[off]), abs=1e-10)
  helper = offtarget_fits.partial_correlation(d[off], cos[off], direct[off])
  assert dp["partial_r"] == pytest.approx(helper, abs=1e-10)
  design = np.column_stack([np.ones(off.sum()), cos[off], direct[off]])
  assert dp["slope_cos_given_direct"] == pytest.approx(np.linalg.lstsq(design, d[off], rcond=None)[0][1],
                                                       abs=1e-10)


def test_planted_transformer_effect_survives_the_direct_path():
  rng = np.random.default_rng(12)
  n = 12
  cos, direct = _geometry(rng, n)
  off = ~np.eye(n, dtype=bool)
  design = np.column_stack([np.ones(off.sum()), direct[off]])
  cos_perp = cos[off] - design @ np.linalg.lstsq(design, cos[off], rcond=None)[0]  # independent of direct
  table = direct.copy()
  table[off] += 0.5 * cos_perp
  res = offtarget.analyse(_table_grid(rng, table, n_words=40, noise=0.1), ALPHAS, cos, np.arange(n),
                          key_or_seed=4, n_boot=300, n_perm=20, direct=direct)
  dp = res["direct_path"]
  assert dp["partial_r"] > 0.8
  assert dp["partial_ci"][0] > 0.5 and dp["partial_ci_words"][0] > 0.5
  assert dp["partial_ci"][1] > 0.9 and dp["partial_ci"][1] - dp["partial_ci"][0] < 0.1
  assert dp["slope_cos_given_direct"] == pytest.approx(0.5, abs=0.1)
  assert dp["share_direct"] < dp["r_cos"] ** 2  # the cosine explains more than the direct path


def test_joint_ci_reproduces_a_numpy_resampling_of_words_and_scales():
  rng = np.random.default_rng(13)
  n_w, n_s, n_j, n_boot, seed = 15, 5, 7, 40, 21
  steered = np.array([3, 0, 6, 1, 4])
  u = rng.normal(size=(n_j, 4))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  cos = (u @ u.T)[steered]
  direct = 0.7 * cos + 0.2 * rng.normal(size=cos.shape)
  table = cos + 0.3 * rng.normal(size=cos.shape)
  table[np.arange(n_s), steered] = 1.0
  effects = _table_grid(rng, table, n_w, noise=0.3)
  res = offtarget.analyse(effects, ALPHAS, cos, steered, key_or_seed=seed, n_boot=n_boot, n_perm=10,
                          direct=direct)
  key_boot, _ = jax.random.split(jax.random.key(seed))
  words, scales = offtarget._boot_draws(key_boot, n_w, n_s, n_boot)
  slopes = _numpy_slopes(effects, ALPHAS)
  dist = {k: [] for k in ("slope", "r", "partial", "slope_w", "r_w", "partial_w")}
  for b in range(n_boot):
    mean = slopes[words[b]].mean(axis=0)
    d = mean / mean[np.arange(n_s), steered][:, None]
    for rows, tag in ((scales[b], ""), (np.arange(n_s), "_w")):
      pairs = np.array([(cos[s, j], d[s, j], direct[s, j])
                        for s in rows for j in range(n_j) if j != steered[s]])
      dist["slope" + tag].append(np.polyfit(pairs[:, 0], pairs[:, 1], 1)[0])
      dist["r" + tag].append(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])
      dist["partial" + tag].append(_numpy_partial(pairs[:, 1], pairs[:, 0], pairs[:, 2]))
  ci = {k: np.percentile(v, [2.5, 97.5]) for k, v in dist.items()}
  assert res["ci_resampling"] == "words+steered_scales"
  np.testing.assert_allclose(res["ci"]["slope"], ci["slope"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res["ci"]["r"], ci["r"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res["ci_words"]["slope"], ci["slope_w"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res["ci_words"]["r"], ci["r_w"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res["direct_path"]["partial_ci"], ci["partial"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res["direct_path"]["partial_ci_words"], ci["partial_w"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(ci["slope"], ci["slope_w"])  # the scale draws matter


def test_joint_ci_is_wider_when_steered_scales_differ(planted):
  cos, steered, effects = planted  # homogeneous: D = cos for every steered scale
  res = offtarget.analyse(effects, ALPHAS, cos, steered, key_or_seed=5, n_boot=400, n_perm=20)
  for ci in (res["ci"]["slope"], res["ci_words"]["slope"]):
    assert ci[0] < 1.0 < ci[1]

  rng = np.random.default_rng(14)
  n = 16
  cos = _cosines_n(rng, n)
  gain = rng.normal(scale=0.4, size=n)
  gain -= gain.mean()
  table = (1.0 + gain)[:, None] * cos  # each steered scale has its own slope; their mean is 1
  np.fill_diagonal(table, 1.0)
  res = offtarget.analyse(_table_grid(rng, table, n_words=80, noise=0.05), ALPHAS, cos, np.arange(n),
                          key_or_seed=6, n_boot=400, n_perm=20)
  joint, words = np.diff(res["ci"]["slope"])[0], np.diff(res["ci_words"]["slope"])[0]
  assert joint > 3 * words
  assert res["ci"]["slope"][0] < 1.0 < res["ci"]["slope"][1]


def test_direct_must_match_d():
  rng = np.random.default_rng(15)
  cos, direct = _geometry(rng, 4)
  effects = _table_grid(rng, direct, n_words=10, noise=0.1)
  with pytest.raises(InputError, match=r"direct must have shape \[S, J\] = \[4, 4\]"):
    offtarget.analyse(effects, ALPHAS, cos, np.arange(4), key_or_seed=0, n_boot=5, n_perm=5,
                      direct=direct[:3])
  direct[0, 2] = np.nan
  with pytest.raises(InputError, match="steered scale 0, readout scale 2"):
    offtarget.analyse(effects, ALPHAS, cos, np.arange(4), key_or_seed=0, n_boot=5, n_perm=5, direct=direct)
  direct[0, 2] = 0.1
  direct[1, 1] = np.nan  # on-target entries are not used
  assert "direct_path" in offtarget.analyse(effects, ALPHAS, cos, np.arange(4), key_or_seed=0, n_boot=5,
                                            n_perm=5, direct=direct)
  assert "direct_path" not in offtarget.analyse(effects, ALPHAS, cos, np.arange(4), key_or_seed=0, n_boot=5,
                                                n_perm=5)
