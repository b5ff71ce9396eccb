"""Structure analysis on a planted three-factor case, checked against numpy."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem.analyses import align, scale_directions, structure
from jaxsem.kernels import subspace

D, S, N = 64, 12, 1500
STRENGTH = np.array([2.0, 1.0, 0.5])  # E, P, A: distinct, so the components are identified
EPS = 1.5  # weight of each scale's own (unique) axis
FACTOR_OF = np.repeat([0, 1, 2], 4)


def _directions(vectors, factors=None, prefix="s"):
  s = len(vectors)
  return scale_directions.Directions(
      names=tuple(f"{prefix}{i}" for i in range(s)), vectors=jnp.asarray(vectors, jnp.float32),
      factors=tuple(factors or [None] * s), norms=(None,) * s, method="pole_mean", policy="single",
      poles={}, asked=s, dropped={})


def _planted_share():
  """Variance share of the first 3 components of the population correlation matrix.

  Each scale's score is common (strength^2 + 1 on its factor's axis) plus unique (EPS^2); with
  communality h, a block of m = 4 scales has top eigenvalue 1 + (m - 1) h.
  """
  h = (STRENGTH**2 + 1) / (STRENGTH**2 + 1 + EPS**2)
  return float(np.sum(1 + 3 * h) / S)


@pytest.fixture(scope="module")
def case():
  """Words x = sum_f strength_f F_f u_f + noise; scale s points along u_{f(s)} + EPS w_s.

  u_f and w_s are orthonormal, so the words x scales projection has three latent factors,
  each loaded by four scales tagged with it. Human valence tracks F_E and arousal F_A;
  dominance (pure noise) has unrated words.
  """
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(D, D)))
  f = rng.normal(size=(N, 3))
  x = (f * STRENGTH) @ q[:, :3].T + rng.normal(size=(N, D))
  dirs = np.stack([q[:, FACTOR_OF[s]] + EPS * q[:, 3 + s] for s in range(S)])
  columns = {"valence": f[:, 0] + 0.3 * rng.normal(size=N), "arousal": f[:, 2] + 0.3 * rng.normal(size=N),
             "dominance": rng.normal(size=N), "imagery": rng.normal(size=N)}
  columns["dominance"][rng.choice(N, 100, replace=False)] = np.nan
  nw = align.NormWords("toy", tuple(str(i) for i in range(N)), jnp.asarray(x, jnp.float32), columns,
                       {"coverage": 1.0})
  d = _directions(dirs, ["EPA"[k] for k in FACTOR_OF])
  pairs = _directions(rng.normal(size=(20, D)), prefix="pair")
  out = structure.structure(d, nw, key=jax.random.key(0), pair_dirs=pairs)
  return dict(x=x, dirs=dirs, columns=columns, nw=nw, d=d, out=out)


def _cos_scores(x, dirs):
  units = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
  return (x @ units.T) / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_pca(table):
  """(explained variance ratio, components [S, r], scores [N, r]) of the standardized table,
  each component's largest-magnitude entry made positive."""
  z = (table - table.mean(0)) / table.std(0, ddof=1)
  _, s, vt = np.linalg.svd(z, full_matrices=False)
  v = vt.T
  signs = np.sign(v[np.abs(v).argmax(0), np.arange(v.shape[1])])
  v = v * signs
  return s**2 / np.sum(s**2), v, z @ v


def test_planted_share_and_epa_congruence(case):
  """Three components explain the planted share; varimax factors match the E/P/A tags."""
  pca = case["out"]["pca"]
  assert pca["cumulative_1_2_3"][2] == pytest.approx(_planted_share(), abs=0.03)
  assert pca["explained_variance_ratio"][3] < 0.1  # nothing beyond the three factors
  assert pca["n_components_for"]["0.5"] == 3
  epa = pca["epa_congruence"]
  assert epa["factors"] == ["E", "P", "A"]
  matched = epa["matched"]
  assert sorted(m["component"] for m in matched.values()) == [0, 1, 2]
  for name in ("E", "P", "A"):
    assert matched[name]["congruence"] > 0.9 and matched[name]["sign"] == 1
  assert np.asarray(epa["matrix"]).shape == (3, 3)
  loadings = np.asarray(pca["varimax_loadings"])
  assert loadings.shape == (S, 3)
  assert case["out"]["scales"] == list(case["d"].names)
  assert case["out"]["factors"] == ["E"] * 4 + ["P"] * 4 + ["A"] * 4
  assert case["out"]["n_words"] == N


def test_dot_metric_recovers_the_same_share(case):
  """With the scalar projection the planted share is recovered as well."""
  out = structure.structure(case["d"], case["nw"], key=jax.random.key(0), metric="dot")
  assert out["pca"]["cumulative_1_2_3"][2] == pytest.approx(_planted_share(), abs=0.03)


def test_matrices_match_numpy(case):
  """Cosines of the directions, correlations of the projections and the PCA equal numpy's."""
  out, dirs = case["out"], case["dirs"]
  units = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out["cosine"]["matrix"]), units @ units.T, atol=1e-5)
  off = ~np.eye(S, dtype=bool)
  assert out["cosine"]["mean_abs_offdiag"] == pytest.approx(np.abs(units @ units.T)[off].mean(), abs=1e-5)
  scores = _cos_scores(case["x"], dirs)
  corr = np.corrcoef(scores.T)
  np.testing.assert_allclose(np.asarray(out["correlation"]["matrix"]), corr, atol=1e-5)
  assert out["correlation"]["mean_abs_offdiag"] == pytest.approx(np.abs(corr[off]).mean(), abs=1e-5)
  evr, _, comp_scores = _numpy_pca(scores)
  np.testing.assert_allclose(out["pca"]["explained_variance_ratio"], evr, atol=1e-5)
  np.testing.assert_allclose(out["pca"]["cumulative"], np.cumsum(evr), atol=1e-5)
  eig = evr * S  # standardized: eigenvalues sum to S
  assert out["pca"]["participation_ratio"] == pytest.approx(eig.sum() ** 2 / np.sum(eig**2), rel=1e-4)
  # Components against the human columns, on the rated words only.
  vs = out["pca"]["component_vs_norms"]
  assert set(vs) == {"valence", "arousal", "dominance"}  # imagery is not a default human column
  for col, rs in vs.items():
    y = case["columns"][col]
    ok = np.isfinite(y)
    want = [np.corrcoef(comp_scores[ok, j], y[ok])[0, 1] for j in range(3)]
    np.testing.assert_allclose(rs, want, atol=1e-4)
  assert vs["valence"][0] > 0.7  # the E component tracks valence
  assert abs(vs["arousal"][2]) > 0.3 and abs(vs["arousal"][2]) == max(abs(r) for r in vs["arousal"])


def test_random_baselines(case):
  """Random directions: near-orthogonal cosines, a flatter scree; WordNet-pair baseline when given."""
  out = case["out"]
  base = out["cosine"]["baseline"]
  # E|cos| of two random directions in 64 dimensions is sqrt(2 / (pi * 64)) ~ 0.1.
  assert 0.05 < base["random_directions_mean_abs"] < 0.16
  assert 0.05 < base["wordnet_pairs_mean_abs"] < 0.16
  rnd = out["random_pca"]
  assert set(rnd) == {"explained_variance_ratio", "cumulative", "participation_ratio", "n_components_for"}
  assert len(rnd["explained_variance_ratio"]) == S
  assert rnd["cumulative"][2] < out["pca"]["cumulative_1_2_3"][2] - 0.1
  assert rnd["participation_ratio"] > out["pca"]["participation_ratio"]
  without = structure.structure(case["d"], case["nw"], key=jax.random.key(0))
  assert "wordnet_pairs_mean_abs" not in without["cosine"]["baseline"]


def test_human_pca(case):
  """The human columns get their own PCA over the words rated on all of them; one column gets none."""
  human = case["out"]["human_pca"]
  cols = ["valence", "arousal", "dominance"]
  assert human["columns"] == cols
  table = np.stack([case["columns"][c] for c in cols], axis=1)
  table = table[np.isfinite(table).all(axis=1)]
  assert human["n_words"] == table.shape[0] == N - 100
  evr, _, _ = _numpy_pca(table)
  np.testing.assert_allclose(human["explained_variance_ratio"], evr, atol=1e-5)
  assert np.asarray(human["loadings"]).shape == (3, 3)
  one = align.NormWords("toy", case["nw"].words, case["nw"].vectors, {"valence": case["columns"]["valence"]},
                        {"coverage": 1.0})
  out = structure.structure(case["d"], one, key=jax.random.key(0))
  assert out["human_pca"] is None and set(out["pca"]["component_vs_norms"]) == {"valence"}
  two = structure.structure(case["d"], one, key=jax.random.key(0), human_columns=("valence", "imagery"))
  assert two["human_pca"] is None  # "imagery" is not in this table


def test_hypothesis_matrix_and_congruence_edge_cases():
  """Tags become an indicator matrix; fewer than two tagged factors give no congruence."""
  h = structure.hypothesis_matrix(["E", "P", None, "A", "E"])
  np.testing.assert_array_equal(h, [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0]])
  loadings = np.array([[0.9, 0.1], [0.8, 0.0], [0.1, 0.9], [0.0, 0.7]])
  assert structure.epa_congruence(loadings, ["E", "E", None, None]) is None
  assert structure.epa_congruence(loadings[:, :1], ["E", "E", "P", "P"]) is None
  got = structure.epa_congruence(loadings, ["E", "E", "A", "A"])
  assert got["factors"] == ["E", "A"]
  want_e = (0.9 + 0.8) / (np.linalg.norm(loadings[:, 0]) * np.sqrt(2))
  assert got["matched"]["E"] == {"component": 0, "sign": 1, "congruence": pytest.approx(want_e, abs=1e-6)}
  assert got["matched"]["A"]["component"] == 1
  flipped = structure.epa_congruence(-loadings, ["E", "E", "A", "A"])
  assert flipped["matched"]["E"]["sign"] == -1 and flipped["matched"]["E"]["congruence"] < -0.9


# --- Nulls that match the claims: random WordNet-pair sets and shuffled E/P/A tags. ---

N_POOL = 300


@pytest.fixture(scope="module")
def pool_case(case):
  """A pool of random pair directions in the same space: near-isotropic, unlike the planted scales."""
  rng = np.random.default_rng(1)
  pool = rng.normal(size=(N_POOL, D))
  pool_dirs = _directions(pool, prefix="pair")
  out = structure.structure(case["d"], case["nw"], key=jax.random.key(0), pair_pool=pool_dirs, n_pair_sets=200,
                            n_tag_perms=500, seed=5, scale_set="toy")
  return dict(pool=pool, pool_dirs=pool_dirs, pool_scores=_cos_scores(case["x"], pool), out=out)


def test_planted_structure_beats_the_pair_null(case, pool_case):
  """Three planted factors keep more variance than any random set of as many pool pairs."""
  out = pool_case["out"]
  pair = out["pair_null"]
  assert pair["n_sets"] == 200 and pair["n_pairs_per_set"] == S and pair["pool_size"] == N_POOL
  assert pair["seed"] == 5 and pair["pool"] == "wordnet" and pair["excluded_scale_pairs"] == []
  assert pair["observed"] == pytest.approx(out["pca"]["cumulative_1_2_3"][2])
  assert pair["percentile"] > 95
  assert pair["p_value"] == pytest.approx(1 / 201) and pair["p_at_floor"] is True
  assert pair["cumulative_p95"][2] < pair["observed"] - 0.1
  for f in ("cumulative_mean", "cumulative_p95", "cumulative_p05"):
    assert len(pair[f]) == 3
  assert np.all(np.diff(pair["cumulative_mean"]) > 0)
  assert np.all(np.asarray(pair["cumulative_p05"]) <= pair["cumulative_mean"])
  assert np.all(np.asarray(pair["cumulative_mean"]) <= pair["cumulative_p95"])
  assert "is specific to toy (p ≤ 0.005)" in out["conclusion"].replace("share is specific", "is specific")
  assert "not specific" not in out["conclusion"]
  # The same words projected with numpy give the same null (same seed, same sets).
  again = structure.pair_null(pool_case["pool_scores"], out["pca"]["cumulative"], S, n_sets=200, seed=5)
  np.testing.assert_allclose(again["cumulative_mean"], pair["cumulative_mean"], atol=1e-5)
  assert again["percentile"] == pair["percentile"]


def test_random_set_from_the_pool_does_not_beat_the_pair_null(case, pool_case):
  """A scale set drawn from the pool sits inside the null; across draws p < 0.05 stays rare."""
  rng = np.random.default_rng(2)
  beat = 0
  for _ in range(3):  # under the null p is uniform: two of three below 0.05 has chance < 1%
    idx = rng.choice(N_POOL, S, replace=False)
    rand = _directions(pool_case["pool"][idx], ["EPA"[k] for k in FACTOR_OF], prefix="r")
    out = structure.structure(rand, case["nw"], key=jax.random.key(0), pair_pool=pool_case["pool_dirs"],
                              n_pair_sets=200, n_tag_perms=200, seed=5, scale_set="random12")
    pair = out["pair_null"]
    assert pair["p_at_floor"] is False and pair["observed"] < pool_case["out"]["pair_null"]["observed"] - 0.1
    beat += pair["p_value"] < 0.05
    assert ("not specific to random12" in out["conclusion"]) == (pair["p_value"] >= 0.05)
  assert beat <= 1
  scores = pool_case["pool_scores"]
  ps = []
  for i in range(40):
    cols = rng.choice(N_POOL, S, replace=False)
    evr, _, _ = _numpy_pca(scores[:, cols])
    ps.append(structure.pair_null(scores, np.cumsum(evr), S, n_sets=100, seed=100 + i)["p_value"])
  assert np.mean(np.asarray(ps) < 0.05) <= 0.15
  assert np.mean(ps) > 0.3  # near uniform under the null (mean 0.5)


def test_pair_null_sets_match_numpy_pca(pool_case):
  """Each null set's cumulative variance is the standardised PCA of its columns, and the summary counts."""
  scores = pool_case["pool_scores"]
  sets, cum = structure.pair_null_cumulative(scores, S, 30, seed=3)
  assert sets.shape == (30, S) and cum.shape == (30, 3)
  assert all(len(set(row)) == S for row in sets)
  for i in (0, 17):
    evr, _, _ = _numpy_pca(scores[:, sets[i]])
    np.testing.assert_allclose(cum[i], np.cumsum(evr)[:3], atol=1e-5)
  observed = [0.2, 0.3, float(np.median(cum[:, 2]))]
  got = structure.pair_null(scores, observed, S, n_sets=30, seed=3)
  null = cum[:, 2]
  assert got["p_value"] == pytest.approx((1 + np.sum(null >= observed[2])) / 31)
  assert got["percentile"] == pytest.approx(100 * (np.sum(null < observed[2]) + 0.5 * np.sum(null == observed[2])) / 30)
  np.testing.assert_allclose(got["cumulative_p95"], np.percentile(cum, 95, axis=0))
  with pytest.raises(structure.InputError, match="at least 12 covered WordNet pairs"):
    structure.pair_null_cumulative(scores[:, :5], S, 10, seed=0)


def test_scale_pairs_are_excluded_from_the_pool():
  """A pool pair with the same words as a scale, either orientation, leaves the pool and is named."""
  rng = np.random.default_rng(0)
  scale_poles = {"good-bad": {"positive": ["good"], "negative": ["bad"]},
                 "hot-cold": {"positive": ["hot", "warm"], "negative": ["cold"]}}
  dirs = dataclasses.replace(_directions(rng.normal(size=(2, 8))), names=("good-bad", "hot-cold"), poles=scale_poles)
  pool_names = ("bad-good", "warm-cold", "hot-mild", "big-small")
  pool_poles = {"bad-good": {"positive": ["bad"], "negative": ["good"]},
                "warm-cold": {"positive": ["warm"], "negative": ["cold"]},
                "hot-mild": {"positive": ["hot"], "negative": ["mild"]},
                "big-small": {"positive": ["big"], "negative": ["small"]}}
  vectors = rng.normal(size=(4, 8))
  pool = dataclasses.replace(_directions(vectors, prefix="p"), names=pool_names, poles=pool_poles)
  kept, removed = structure.exclude_scale_pairs(pool, dirs)
  assert removed == ["bad-good", "warm-cold"]
  assert kept.names == ("hot-mild", "big-small") and set(kept.poles) == {"hot-mild", "big-small"}
  np.testing.assert_allclose(np.asarray(kept.vectors), vectors[2:], rtol=1e-6)
  assert kept.dropped["bad-good"] == "a pair of the scales under test"
  same, none = structure.exclude_scale_pairs(kept, dirs)
  assert same is kept and none == []


def _planted_loadings(tags_of, rng, s=18):
  """``[s, 3]`` loadings: scale i loads 0.8 on factor ``tags_of[i]``, noise elsewhere."""
  lo = 0.1 * rng.normal(size=(s, 3))
  lo[np.arange(s), tags_of] += 0.8
  return lo


def test_epa_null_planted_and_shuffled_tags():
  """Tags aligned with planted factors beat shuffled tags; tags unrelated to them do not."""
  rng = np.random.default_rng(0)
  true = np.repeat([0, 1, 2], 6)
  lo = _planted_loadings(true, rng)
  aligned = structure.epa_null(lo, ["EPA"[t] for t in true], n_perms=1000, seed=0)
  assert aligned["observed"] > 0.9 and aligned["n_perms"] == 1000 and aligned["seed"] == 0
  assert aligned["p_value"] == pytest.approx(1 / 1001) and aligned["p_at_floor"] is True
  assert aligned["null_mean"] < aligned["null_p95"] < aligned["observed"]
  # Each tag group holds two scales of every planted factor: the tags carry no information.
  balanced = ["EPA"[i % 3] for i in range(18)]
  shuffled = structure.epa_null(lo, balanced, n_perms=1000, seed=0)
  assert shuffled["p_value"] > 0.05 and shuffled["p_at_floor"] is False
  assert shuffled["observed"] < shuffled["null_p95"]
  text = structure.conclusion(None, aligned, "toy")
  assert "better than shuffled tags" in text and "no better" not in text and "p ≤ 0.001" in text
  assert "no better than shuffled tags" in structure.conclusion(None, shuffled, "toy")


def test_epa_null_matches_epa_congruence():
  """The vectorised statistic equals the mean |matched congruence| of ``epa_congruence``, permutation by permutation."""
  rng = np.random.default_rng(1)
  tags = ["E"] * 5 + ["P"] * 4 + [None] * 2 + ["A"] * 5
  lo = rng.normal(size=(len(tags), 3))

  def mean_matched(t):
    return np.mean([abs(m["congruence"]) for m in structure.epa_congruence(lo, t)["matched"].values()])

  got = structure.epa_null(lo, tags, n_perms=60, seed=7)
  assert got["observed"] == pytest.approx(mean_matched(tags), abs=1e-6)
  perm_rng = np.random.default_rng(7)
  null = np.array([mean_matched([tags[i] for i in perm_rng.permutation(len(tags))]) for _ in range(60)])
  assert got["null_mean"] == pytest.approx(null.mean(), abs=1e-6)
  assert got["null_p95"] == pytest.approx(np.percentile(null, 95), abs=1e-6)
  assert got["p_value"] == pytest.approx((1 + np.sum(null >= got["observed"] - 1e-12)) / 61)
  batch = structure.hypothesis_matrix(tags)[None]
  assert structure.matched_congruence(lo, batch)[0] == pytest.approx(mean_matched(tags), abs=1e-6)
  assert structure.epa_null(lo, ["E"] * 16, n_perms=10) is None


@pytest.mark.parametrize("counts", [(10, 9, 9, 0), (10, 9, 7, 2)])
def test_uniform_general_factor_baseline(counts):
  """One factor with uniform loadings matches tag f with congruence n_f / sqrt(S n_f)."""
  tags = ["E"] * counts[0] + ["P"] * counts[1] + ["A"] * counts[2] + [None] * counts[3]
  s = len(tags)
  lo = np.random.default_rng(0).normal(size=(s, 3))
  uni = structure.epa_null(lo, tags, n_perms=10)["uniform_baseline"]
  want = {f: n / np.sqrt(s * n) for f, n in zip("EPA", counts)}
  assert uni["per_factor"] == pytest.approx(want, abs=1e-6)
  assert uni["mean"] == pytest.approx(np.mean(list(want.values())), abs=1e-6)
  if counts[3] == 0:
    assert uni["per_factor"]["E"] == pytest.approx(0.5976, abs=1e-4)  # 10 E of 28 scales


def test_settings_reproduce_the_varimax(case, pool_case):
  """``settings`` records the PCA/varimax/null choices; rerunning varimax with them gives the stored loadings."""
  out = pool_case["out"]
  st = out["settings"]
  assert st["pca"] == {"standardised": True, "k": 3, "method": "svd"}
  vm = st["varimax"]
  assert vm["normalisation"] == "kaiser" and vm["gamma"] == 1.0
  rotated, _ = subspace.varimax(np.asarray(out["pca"]["loadings"]), gamma=vm["gamma"], max_iter=vm["max_iter"],
                                tol=vm["tol"], normalize=vm["normalisation"] == "kaiser")
  np.testing.assert_allclose(np.asarray(rotated), np.asarray(out["pca"]["varimax_loadings"]), atol=1e-6)
  unnormalised, _ = subspace.varimax(np.asarray(out["pca"]["loadings"]), normalize=False)
  assert not np.allclose(np.asarray(unnormalised), np.asarray(rotated), atol=1e-4)
  assert st["pair_null"]["n_sets"] == 200 and st["pair_null"]["pool_size"] == N_POOL
  assert st["pair_null"]["seed"] == 5 and st["pair_null"]["excluded_scale_pairs"] == []
  assert st["epa_null"]["n_perms"] == 500
  assert out["epa_null"]["p_at_floor"] is True  # the planted E/P/A structure
  bare = structure.structure(case["d"], case["nw"], key=jax.random.key(0), n_tag_perms=0)
  assert bare["pair_null"] is None and bare["epa_null"] is None and bare["settings"]["pair_null"] is None
  assert bare["conclusion"].startswith("No null")


def test_conclusion_wording():
  """The conclusion says "specific" only below p = 0.05, prints floors as bounds, and names the uniform factor."""
  pair = {"observed": 0.51, "cumulative_mean": [0.3, 0.42, 0.49], "cumulative_p95": [0.35, 0.48, 0.56],
          "n_pairs_per_set": 28, "percentile": 72.4, "p_value": 0.29, "p_at_floor": False}
  epa = {"factors": ["E", "P", "A"], "observed": 0.45, "null_mean": 0.40, "null_p95": 0.5, "p_value": 0.2,
         "p_at_floor": False, "uniform_baseline": {"per_factor": {"E": 0.6, "P": 0.57, "A": 0.57}, "mean": 0.58}}
  text = structure.conclusion(pair, epa, "osgood28")
  assert text.startswith("3 components keep 51% of the variance; random sets of 28 WordNet pairs keep 49% on "
                         "average (95th percentile 56%): osgood28 is at the 72nd percentile, so this share is "
                         "not specific to osgood28 (p=0.29).")
  assert "mean matched congruence 0.45 vs shuffled tags 0.40" in text and "(95th percentile 0.50, p=0.2)" in text
  assert "no better than shuffled tags" in text
  assert "a single uniform factor scores 0.60 with E (mean 0.58, at least the varimax factors' 0.45)." in text
  floor = dict(pair, percentile=100.0, p_value=1 / 301, p_at_floor=True)
  text = structure.conclusion(floor, None, "osgood28")
  assert "at the 100th percentile" in text and "this share is specific to osgood28 (p ≤ 0.0034)" in text
  assert "at the 11th" in structure.conclusion(dict(pair, percentile=11.2), None, "x")
  assert "at the 23rd" in structure.conclusion(dict(pair, percentile=23.0), None, "x")
