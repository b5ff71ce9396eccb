"""Structure analysis on a planted three-factor case, checked against numpy.

The nulls and the conclusion are tested in ``test_structure_nulls.py`` on the same case.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem.analyses import align, scale_directions, structure, structure_nulls

D, S, N = 64, 12, 1500
STRENGTH = np.array([2.0, 1.0, 0.5])  # E, P, A: distinct, so the components are identified
EPS = 1.5  # weight of each scale's own (unique) axis
FACTOR_OF = np.repeat([0, 1, 2], 4)
# The nulls' sizes and seed (structure.structure takes them explicitly; the pair null runs only with a pool).
NULLS = dict(n_pair_sets=200, n_tag_perms=1000, seed=0)


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
  out = structure.structure(d, nw, key=jax.random.key(0), pair_dirs=pairs, **NULLS)
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
  out = structure.structure(case["d"], case["nw"], key=jax.random.key(0), metric="dot", **NULLS)
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
  without = structure.structure(case["d"], case["nw"], key=jax.random.key(0), **NULLS)
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
  out = structure.structure(case["d"], one, key=jax.random.key(0), **NULLS)
  assert out["human_pca"] is None and set(out["pca"]["component_vs_norms"]) == {"valence"}
  two = structure.structure(case["d"], one, key=jax.random.key(0), human_columns=("valence", "imagery"), **NULLS)
  assert two["human_pca"] is None  # "imagery" is not in this table


def test_hypothesis_matrix_and_congruence_edge_cases():
  """Tags become an indicator matrix; fewer than two tagged factors give no congruence."""
  h = structure_nulls.hypothesis_matrix(["E", "P", None, "A", "E"])
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



def test_progress_prints_the_nulls_and_leaves_the_result_unchanged(case, capsys):
  """progress=True prints each null's lines under ``what``, ending at 100%; the result is the quiet one."""
  rng = np.random.default_rng(1)
  pool = _directions(rng.normal(size=(60, D)), prefix="pair")
  kw = dict(key=jax.random.key(0), pair_pool=pool, n_pair_sets=20, n_tag_perms=300, seed=2)
  quiet = structure.structure(case["d"], case["nw"], **kw)
  assert capsys.readouterr().err == ""
  loud = structure.structure(case["d"], case["nw"], progress=True, what="structure toy", **kw)
  lines = capsys.readouterr().err.splitlines()
  assert lines[0].startswith("structure toy pair null: 0/20 sets")
  assert any(line.startswith("structure toy pair null: 20/20 sets (100.0%)") for line in lines)
  assert lines[-1].startswith("structure toy E/P/A null: 300/300 permutations (100.0%)")
  assert loud == quiet
