"""Structure nulls (random WordNet-pair sets, shuffled E/P/A tags) and their conclusion.

The planted three-factor case of ``test_structure`` is reused: its scales beat both nulls,
while a scale set drawn from the pool does not; every statistic is checked against numpy.
"""

import dataclasses

import jax
import numpy as np
import pytest

from jaxsem.analyses import structure, structure_nulls
from jaxsem.errors import InputError
from jaxsem.kernels import subspace
from tests.analyses.test_structure import D, FACTOR_OF, S, _cos_scores, _directions, _numpy_pca
from tests.analyses.test_structure import case  # noqa: F401 - the planted case, a module fixture

N_POOL = 300


@pytest.fixture(scope="module")
def pool_case(case):
  """A pool of random pair directions in the same space: near-isotropic, unlike the planted scales."""
  rng = np.random.default_rng(1)
  pool = rng.normal(size=(N_POOL, D))
  pool_dirs = _directions(pool, prefix="pair")
  out = structure.structure(case["d"], case["nw"], key=jax.random.key(0), pair_pool=pool_dirs,
                            n_pair_sets=200, n_tag_perms=500, seed=5, scale_set="toy")
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
  again = structure_nulls.pair_null(pool_case["pool_scores"], out["pca"]["cumulative"], S, n_sets=200, seed=5)
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
    ps.append(structure_nulls.pair_null(scores, np.cumsum(evr), S, n_sets=100, seed=100 + i)["p_value"])
  assert np.mean(np.asarray(ps) < 0.05) <= 0.15
  assert np.mean(ps) > 0.3  # near uniform under the null (mean 0.5)


def test_pair_null_sets_match_numpy_pca(pool_case):
  """Each null set's cumulative variance is the standardised PCA of its columns, and the summary counts."""
  scores = pool_case["pool_scores"]
  sets, cum = structure_nulls.pair_null_cumulative(scores, S, 30, seed=3)
  assert sets.shape == (30, S) and cum.shape == (30, 3)
  assert all(len(set(row)) == S for row in sets)
  for i in (0, 17):
    evr, _, _ = _numpy_pca(scores[:, sets[i]])
    np.testing.assert_allclose(cum[i], np.cumsum(evr)[:3], atol=1e-5)
  observed = [0.2, 0.3, float(np.median(cum[:, 2]))]
  got = structure_nulls.pair_null(scores, observed, S, n_sets=30, seed=3)
  null = cum[:, 2]
  assert got["p_value"] == pytest.approx((1 + np.sum(null >= observed[2])) / 31)
  below, ties = np.sum(null < observed[2]), np.sum(null == observed[2])
  assert got["percentile"] == pytest.approx(100 * (below + 0.5 * ties) / 30)
  np.testing.assert_allclose(got["cumulative_p95"], np.percentile(cum, 95, axis=0))
  with pytest.raises(InputError, match="at least 12 covered WordNet pairs"):
    structure_nulls.pair_null_cumulative(scores[:, :5], S, 10, seed=0)


def test_scale_pairs_are_excluded_from_the_pool():
  """A pool pair with the same words as a scale, either orientation, leaves the pool and is named."""
  rng = np.random.default_rng(0)
  scale_poles = {"good-bad": {"positive": ["good"], "negative": ["bad"]},
                 "hot-cold": {"positive": ["hot", "warm"], "negative": ["cold"]}}
  dirs = dataclasses.replace(_directions(rng.normal(size=(2, 8))), names=("good-bad", "hot-cold"),
                             poles=scale_poles)
  pool_names = ("bad-good", "warm-cold", "hot-mild", "big-small")
  pool_poles = {"bad-good": {"positive": ["bad"], "negative": ["good"]},
                "warm-cold": {"positive": ["warm"], "negative": ["cold"]},
                "hot-mild": {"positive": ["hot"], "negative": ["mild"]},
                "big-small": {"positive": ["big"], "negative": ["small"]}}
  vectors = rng.normal(size=(4, 8))
  pool = dataclasses.replace(_directions(vectors, prefix="p"), names=pool_names, poles=pool_poles)
  kept, removed = structure_nulls.exclude_scale_pairs(pool, dirs)
  assert removed == ["bad-good", "warm-cold"]
  assert kept.names == ("hot-mild", "big-small") and set(kept.poles) == {"hot-mild", "big-small"}
  np.testing.assert_allclose(np.asarray(kept.vectors), vectors[2:], rtol=1e-6)
  assert kept.dropped["bad-good"] == "a pair of the scales under test"
  same, none = structure_nulls.exclude_scale_pairs(kept, dirs)
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
  aligned = structure_nulls.epa_null(lo, ["EPA"[t] for t in true], n_perms=1000, seed=0)
  assert aligned["observed"] > 0.9 and aligned["n_perms"] == 1000 and aligned["seed"] == 0
  assert aligned["p_value"] == pytest.approx(1 / 1001) and aligned["p_at_floor"] is True
  assert aligned["null_mean"] < aligned["null_p95"] < aligned["observed"]
  # Each tag group holds two scales of every planted factor: the tags carry no information.
  balanced = ["EPA"[i % 3] for i in range(18)]
  shuffled = structure_nulls.epa_null(lo, balanced, n_perms=1000, seed=0)
  assert shuffled["p_value"] > 0.05 and shuffled["p_at_floor"] is False
  assert shuffled["observed"] < shuffled["null_p95"]
  text = structure_nulls.conclusion(None, aligned, "toy")
  assert "better than shuffled tags" in text and "no better" not in text and "p ≤ 0.001" in text
  assert "no better than shuffled tags" in structure_nulls.conclusion(None, shuffled, "toy")


def test_epa_null_matches_epa_congruence():
  """The vectorised statistic equals the mean |matched congruence| of ``structure.epa_congruence``,
  permutation by permutation."""
  rng = np.random.default_rng(1)
  tags = ["E"] * 5 + ["P"] * 4 + [None] * 2 + ["A"] * 5
  lo = rng.normal(size=(len(tags), 3))

  def mean_matched(t):
    return np.mean([abs(m["congruence"]) for m in structure.epa_congruence(lo, t)["matched"].values()])

  got = structure_nulls.epa_null(lo, tags, n_perms=60, seed=7)
  assert got["observed"] == pytest.approx(mean_matched(tags), abs=1e-6)
  perm_rng = np.random.default_rng(7)
  null = np.array([mean_matched([tags[i] for i in perm_rng.permutation(len(tags))]) for _ in range(60)])
  assert got["null_mean"] == pytest.approx(null.mean(), abs=1e-6)
  assert got["null_p95"] == pytest.approx(np.percentile(null, 95), abs=1e-6)
  assert got["p_value"] == pytest.approx((1 + np.sum(null >= got["observed"] - 1e-12)) / 61)
  batch = structure_nulls.hypothesis_matrix(tags)[None]
  assert structure_nulls.matched_congruence(lo, batch)[0] == pytest.approx(mean_matched(tags), abs=1e-6)
  assert structure_nulls.epa_null(lo, ["E"] * 16, n_perms=10) is None


@pytest.mark.parametrize("counts", [(10, 9, 9, 0), (10, 9, 7, 2)])
def test_uniform_general_factor_baseline(counts):
  """One factor with uniform loadings matches tag f with congruence n_f / sqrt(S n_f)."""
  tags = ["E"] * counts[0] + ["P"] * counts[1] + ["A"] * counts[2] + [None] * counts[3]
  s = len(tags)
  lo = np.random.default_rng(0).normal(size=(s, 3))
  uni = structure_nulls.epa_null(lo, tags, n_perms=10)["uniform_baseline"]
  want = {f: n / np.sqrt(s * n) for f, n in zip("EPA", counts)}
  assert uni["per_factor"] == pytest.approx(want, abs=1e-6)
  assert uni["mean"] == pytest.approx(np.mean(list(want.values())), abs=1e-6)
  if counts[3] == 0:
    assert uni["per_factor"]["E"] == pytest.approx(0.5976, abs=1e-4)  # 10 E of 28 scales


def test_settings_reproduce_the_varimax(case, pool_case):
  """``settings`` records the PCA/varimax/null choices; rerunning varimax with them gives the stored
  loadings."""
  out = pool_case["out"]
  st = out["settings"]
  assert st["pca"] == {"standardised": True, "k": 3, "method": "svd"}
  vm = st["varimax"]
  assert vm["normalisation"] == "kaiser" and vm["gamma"] == 1.0
  rotated, _ = subspace.varimax(np.asarray(out["pca"]["loadings"]), gamma=vm["gamma"],
                                max_iter=vm["max_iter"], tol=vm["tol"],
                                normalize=vm["normalisation"] == "kaiser")
  np.testing.assert_allclose(np.asarray(rotated), np.asarray(out["pca"]["varimax_loadings"]), atol=1e-6)
  unnormalised, _ = subspace.varimax(np.asarray(out["pca"]["loadings"]), normalize=False)
  assert not np.allclose(np.asarray(unnormalised), np.asarray(rotated), atol=1e-4)
  assert st["pair_null"]["n_sets"] == 200 and st["pair_null"]["pool_size"] == N_POOL
  assert st["pair_null"]["seed"] == 5 and st["pair_null"]["excluded_scale_pairs"] == []
  assert st["epa_null"]["n_perms"] == 500
  assert out["epa_null"]["p_at_floor"] is True  # the planted E/P/A structure
  bare = structure.structure(case["d"], case["nw"], key=jax.random.key(0), n_pair_sets=200, n_tag_perms=0,
                              seed=0)
  assert bare["pair_null"] is None and bare["epa_null"] is None and bare["settings"]["pair_null"] is None
  assert bare["conclusion"].startswith("No null")


def test_conclusion_wording():
  """The conclusion says "specific" only below p = 0.05, prints floors as bounds, and names the uniform
  factor."""
  pair = {"observed": 0.51, "cumulative_mean": [0.3, 0.42, 0.49], "cumulative_p95": [0.35, 0.48, 0.56],
          "n_pairs_per_set": 28, "percentile": 72.4, "p_value": 0.29, "p_at_floor": False}
  epa = {"factors": ["E", "P", "A"], "observed": 0.45, "null_mean": 0.40, "null_p95": 0.5, "p_value": 0.2,
         "p_at_floor": False,
         "uniform_baseline": {"per_factor": {"E": 0.6, "P": 0.57, "A": 0.57}, "mean": 0.58}}
  text = structure_nulls.conclusion(pair, epa, "osgood28")
  assert text.startswith("3 components keep 51% of the variance; random sets of 28 WordNet pairs keep 49% "
                         "on average (95th percentile 56%): osgood28 is at the 72nd percentile, so this "
                         "share is not specific to osgood28 (p=0.29).")
  assert "mean matched congruence 0.45 vs shuffled tags 0.40" in text
  assert "(95th percentile 0.50, p=0.2)" in text
  assert "no better than shuffled tags" in text
  assert "a single uniform factor scores 0.60 with E (mean 0.58, at least the varimax factors' 0.45)." in text
  floor = dict(pair, percentile=100.0, p_value=1 / 301, p_at_floor=True)
  text = structure_nulls.conclusion(floor, None, "osgood28")
  assert "at the 100th percentile" in text and "this share is specific to osgood28 (p ≤ 0.0034)" in text
  assert "at the 11th" in structure_nulls.conclusion(dict(pair, percentile=11.2), None, "x")
  assert "at the 23rd" in structure_nulls.conclusion(dict(pair, percentile=23.0), None, "x")


def test_nulls_report_progress_and_chunks_leave_the_null_unchanged(monkeypatch):
  """The E/P/A null scores its permutations in chunks (a report after each) and equals the
  null scored in one piece; the pair null reports after every set."""
  rng = np.random.default_rng(3)
  lo = _planted_loadings(np.repeat([0, 1, 2], 6), rng)
  tags = ["EPA"[i % 3] for i in range(18)]
  seen = []
  chunked = structure_nulls.epa_null(lo, tags, n_perms=450, seed=4, progress=lambda *a: seen.append(a))
  assert seen == [(200, 450), (400, 450), (450, 450)]
  monkeypatch.setattr(structure_nulls, "PERM_CHUNK", 10_000)
  assert structure_nulls.epa_null(lo, tags, n_perms=450, seed=4) == chunked
  sets = []
  structure_nulls.pair_null(rng.normal(size=(50, 30)), [0.3, 0.5, 0.6], 6, n_sets=7, seed=1,
                            progress=lambda *a: sets.append(a))
  assert sets == [(i, 7) for i in range(1, 8)]
