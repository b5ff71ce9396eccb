"""Human alignment on planted data: correlations, CIs, nulls and the probe ceiling vs numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem.analyses import align, scale_directions, spaces
from jaxsem.errors import InputError
from jaxsem.io.scales import Scale
from jaxsem.models.model import Model
from tests import toy
from tests.analyses import toy_tokenizer

N, D = 400, 32
N_NULL = 99
N_BOOT = 100
ROW_KEYS = {"scale", "factor", "target", "norm", "column", "pearson", "pearson_ci", "spearman", "spearman_ci",
            "n", "coverage", "null_p95", "p_value", "pairs_null_p95", "pairs_p_value", "probe_r",
            "share_of_probe"}


def _directions(vectors, names, factors=None, norms=None):
  s = len(names)
  return scale_directions.Directions(
      names=tuple(names), vectors=jnp.asarray(vectors, jnp.float32),
      factors=tuple(factors or [None] * s), norms=tuple(norms or [None] * s), method="pole_mean",
      policy="single", poles={}, asked=s, dropped={})


def _ranks(a):
  """Average ranks (1 = smallest), ties sharing their mean rank: an independent numpy version."""
  a = np.asarray(a, np.float64)
  order = np.argsort(a, kind="stable")
  ranks = np.empty(len(a))
  sorted_a = a[order]
  i = 0
  while i < len(a):
    j = i
    while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def _cosines(x, d):
  x = np.asarray(x, np.float64)
  d = np.asarray(d, np.float64)
  return (x @ (d / np.linalg.norm(d))) / np.linalg.norm(x, axis=1)


@pytest.fixture(scope="module")
def case():
  """Words whose vectors are noise + z*u for ratings 5 + 2z; a second column unrelated to the vectors.

  Directions: the planted u (scaled by 2, so normalisation matters) and a direction orthogonal to u.
  Some planted ratings are NaN (unrated words).
  """
  rng = np.random.default_rng(0)
  u = rng.normal(size=D)
  u /= np.linalg.norm(u)
  z = rng.normal(size=N)
  x = rng.normal(size=(N, D)) * 0.3 + z[:, None] * u
  ratings = 5.0 + 2.0 * z
  nan_at = rng.choice(N, size=37, replace=False)
  ratings[nan_at] = np.nan
  unrelated = rng.normal(size=N)
  other = rng.normal(size=D)
  other -= other.dot(u) * u
  nw = align.NormWords(name="toy", words=tuple(f"w{i}" for i in range(N)),
                       vectors=jnp.asarray(x, jnp.float32),
                       columns={"planted": ratings, "unrelated": unrelated},
                       report={"coverage": 0.8})
  dirs = _directions(np.stack([2.0 * u, other]), ["planted", "orthogonal"], factors=["E", None],
                     norms=["toy:planted", None])
  pair_dirs = _directions(rng.normal(size=(12, D)), [f"pair{i}" for i in range(12)])
  out = align.align(dirs, [nw], key=jax.random.key(0), n_boot=N_BOOT, n_null=N_NULL, null_pairs=pair_dirs)
  return dict(x=x, u=u, other=other, ratings=ratings, unrelated=unrelated, dirs=dirs, nw=nw,
              pair_dirs=pair_dirs, out=out)


def _row(out, scale, column):
  rows = [r for r in out["results"] if r["scale"] == scale and r["column"] == column]
  assert len(rows) == 1
  return rows[0]


def test_rows_have_every_field(case):
  """One row per scale x column, each with all documented fields and the scale's tags."""
  rows = case["out"]["results"]
  assert len(rows) == 4
  assert {(r["scale"], r["column"]) for r in rows} == {
      (s, c) for s in ("planted", "orthogonal") for c in ("planted", "unrelated")}
  for r in rows:
    assert set(r) == ROW_KEYS
    assert r["norm"] == "toy" and r["coverage"] == 0.8
  planted = _row(case["out"], "planted", "planted")
  assert planted["factor"] == "E" and planted["target"] == "toy:planted"


def test_correlations_match_numpy_and_skip_unrated_words(case):
  """Pearson and Spearman equal numpy on the cosine projections of the rated words only."""
  x, y = case["x"], case["ratings"]
  ok = np.isfinite(y)
  for s, d in enumerate((2.0 * case["u"], case["other"])):
    scores = _cosines(x, d)
    for column, ratings in (("planted", y), ("unrelated", case["unrelated"])):
      keep = np.isfinite(ratings)
      row = _row(case["out"], case["dirs"].names[s], column)
      assert row["n"] == int(keep.sum())
      want_p = np.corrcoef(scores[keep], ratings[keep])[0, 1]
      want_s = np.corrcoef(_ranks(scores[keep]), _ranks(ratings[keep]))[0, 1]
      assert row["pearson"] == pytest.approx(want_p, abs=1e-5)
      assert row["spearman"] == pytest.approx(want_s, abs=1e-5)
  assert _row(case["out"], "planted", "planted")["n"] == N - 37 == int(ok.sum())
  assert _row(case["out"], "planted", "unrelated")["n"] == N
  assert _row(case["out"], "planted", "planted")["pearson"] > 0.9


def test_cis_contain_the_estimate(case):
  """Bootstrap CIs are ordered intervals around the point estimate."""
  for r in case["out"]["results"]:
    for stat in ("pearson", "spearman"):
      lo, hi = r[f"{stat}_ci"]
      assert lo <= r[stat] <= hi
      assert hi - lo < 0.5
  lo, hi = _row(case["out"], "planted", "planted")["pearson_ci"]
  assert lo > 0.85 and hi - lo < 0.1  # 363 words with r ~ 0.95 leave a narrow interval


def test_nulls_p_values_and_probe(case):
  """The planted direction beats every random direction; the orthogonal one does not; the probe sees u."""
  out = case["out"]
  planted = _row(out, "planted", "planted")
  orthogonal = _row(out, "orthogonal", "planted")
  assert planted["p_value"] == pytest.approx(1 / (N_NULL + 1))
  assert planted["pearson"] > planted["null_p95"] > 0
  assert orthogonal["p_value"] > 0.1 and abs(orthogonal["pearson"]) < orthogonal["null_p95"]
  assert orthogonal["null_p95"] == planted["null_p95"]  # one null per column, shared by the scales
  summary = out["nulls"]["toy:planted:random"]
  assert summary["n"] == N_NULL and summary["p95"] == pytest.approx(planted["null_p95"])
  assert 0 < summary["mean_abs_r"] < summary["p95"]
  pairs = out["nulls"]["toy:planted:wordnet_pairs"]
  assert pairs["n"] == 12 and planted["pairs_null_p95"] == pytest.approx(pairs["p95"])
  assert planted["pairs_p_value"] == pytest.approx(1 / 13)
  assert planted["probe_r"] > 0.9
  assert _row(out, "planted", "unrelated")["probe_r"] < 0.3
  assert planted["share_of_probe"] == pytest.approx(abs(planted["pearson"]) / planted["probe_r"])
  probe = out["probe"]["toy:planted"]
  assert probe["r"] == planted["probe_r"] and probe["n"] == N - 37 and len(probe["r_per_fold"]) == 5
  assert set(out["probe"]) == {"toy:planted", "toy:unrelated"}


def test_dot_metric_and_no_pair_null(case):
  """metric='dot' correlates the scalar projections; without null_pairs the pair fields are None."""
  out = align.align(case["dirs"], [case["nw"]], key=jax.random.key(1), n_boot=N_BOOT, n_null=N_NULL,
                    metric="dot")
  x, y, u = case["x"], case["ratings"], case["u"]
  ok = np.isfinite(y)
  row = _row(out, "planted", "planted")
  assert row["pearson"] == pytest.approx(np.corrcoef((x @ u)[ok], y[ok])[0, 1], abs=1e-5)
  assert row["pairs_null_p95"] is None and row["pairs_p_value"] is None
  assert not any(k.endswith("wordnet_pairs") for k in out["nulls"])
  assert row["p_value"] == pytest.approx(1 / (N_NULL + 1))


def test_seed_reproduces_results(case):
  """The same key gives the same CIs, nulls and probe; another key changes the resamples only."""
  kw = dict(n_boot=N_BOOT, n_null=N_NULL, null_pairs=case["pair_dirs"])
  a = case["out"]
  b = align.align(case["dirs"], [case["nw"]], key=jax.random.key(0), **kw)
  c = align.align(case["dirs"], [case["nw"]], key=jax.random.key(6), **kw)
  assert a["results"] == b["results"] and a["nulls"] == b["nulls"] and a["probe"] == b["probe"]
  assert [r["pearson"] for r in a["results"]] == [r["pearson"] for r in c["results"]]
  assert [r["pearson_ci"] for r in a["results"]] != [r["pearson_ci"] for r in c["results"]]


@pytest.fixture(scope="module")
def toy_model():
  cfg = toy.gemma_config()
  return Model(config=cfg, params=toy.params_for(cfg), tokenizer=toy_tokenizer(), provenance={})


def test_random_pair_directions_skip_uncovered_pairs(toy_model):
  """Pairs the model cannot cover are skipped; at most n remain, seeded, each built like build()."""
  space = spaces.make_space(toy_model, "input_embedding")
  pairs = [Scale("kind-cruel", ("kind",), ("cruel",)), Scale("good-bad", ("good",), ("bad",)),
           Scale("hot-cold", ("hot",), ("cold",)), Scale("happy-sad", ("Happy",), ("SAD",)),
           Scale("kindness-x", ("kindness",), ("cruel",)), Scale("unkindly-y", ("unkindly",), ("good",))]
  covered = {"kind-cruel", "good-bad", "hot-cold", "happy-sad"}
  got = align.random_pair_directions(toy_model, space, pairs, 3, jax.random.key(0))
  assert len(got.names) == 3 and set(got.names) <= covered
  assert got.vectors.shape == (3, toy_model.config.d_model)
  assert len(got.factors) == len(got.norms) == 3
  again = align.random_pair_directions(toy_model, space, pairs, 3, jax.random.key(0))
  assert again.names == got.names
  np.testing.assert_array_equal(np.asarray(again.vectors), np.asarray(got.vectors))
  by_name = {p.name: p for p in pairs}
  ref = scale_directions.build(toy_model, space, [by_name[n] for n in got.names])
  np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(ref.vectors), rtol=1e-6)
  every = align.random_pair_directions(toy_model, space, pairs, 10, jax.random.key(1))
  assert set(every.names) == covered


def test_norm_words_coverage_error_names_the_table(toy_model):
  """A tokenizer that covers few rated words fails --min_coverage naming the norm table."""
  space = spaces.make_space(toy_model, "input_embedding")
  with pytest.raises(InputError, match=r"^warriner norms: only \d+ of 200 words"):
    align.norm_words(toy_model, space, "warriner", max_words=200)
  with pytest.raises(InputError, match="Unknown word norms 'nosuchnorm'"):
    align.norm_words(toy_model, space, "nosuchnorm")
