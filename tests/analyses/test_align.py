"""Human alignment on planted data: correlations, CIs, nulls and the probe ceiling vs numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxsem.analyses import align, scale_directions, spaces
from jaxsem.errors import InputError
from jaxsem.io.scales import Scale
from jaxsem.kernels import hierarchical, projection, stats
from jaxsem.models.model import Model
from tests import toy
from tests.analyses import toy_tokenizer

N, D = 400, 32
N_NULL = 99
N_BOOT = 100
ROW_KEYS = {"scale", "factor", "scale_norm_tag", "norm", "column", "matches_tag", "pearson", "pearson_ci",
            "spearman", "spearman_ci", "pearson_ci_words", "spearman_ci_words", "leave_one_pole_out",
            "ci_resampling", "n", "coverage", "null_p95", "p_value", "pairs_null_p95", "pairs_p_value",
            "probe_r", "share_of_probe"}


def _directions(vectors, names, factors=None, norms=None, pole_vectors=None):
  s = len(names)
  return scale_directions.Directions(
      names=tuple(names), vectors=jnp.asarray(vectors, jnp.float32),
      factors=tuple(factors or [None] * s), norms=tuple(norms or [None] * s), method="pole_mean",
      policy="single", poles={}, asked=s, dropped={}, pole_vectors=pole_vectors or {})


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
    # Without pole vectors only the words can be resampled, and the row says so.
    assert r["ci_resampling"] == "words" and r["leave_one_pole_out"] is None
    assert r["pearson_ci"] == r["pearson_ci_words"] and r["spearman_ci"] == r["spearman_ci_words"]
  planted = _row(case["out"], "planted", "planted")
  assert planted["factor"] == "E" and planted["scale_norm_tag"] == "toy:planted" and planted["matches_tag"]
  # The scale's tag stays on every row; the column correlated is named apart from it.
  unrelated = _row(case["out"], "planted", "unrelated")
  assert unrelated["scale_norm_tag"] == "toy:planted" and unrelated["column"] == "unrelated"
  assert not unrelated["matches_tag"]
  assert not _row(case["out"], "orthogonal", "planted")["matches_tag"]


def test_settings_record_probe_bootstrap_and_nulls(case):
  """The output records how the probe, the bootstrap and the nulls were run."""
  st = case["out"]["settings"]
  assert st["probe"]["folds"] == 5 and st["probe"]["solver"] == "closed" and st["probe"]["standardised"]
  assert st["probe"]["l2_grid"] == [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
  assert st["bootstrap"] == {"n_boot": N_BOOT, "unit": "words and pole words (within pole)",
                             "interval": "95% percentile", "words_only_unit": "words"}
  assert st["nulls"] == {"n_random": N_NULL, "n_pairs": 12}
  assert st["metric"] == "cosine"


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


def test_words_only_interval_is_the_word_bootstrap(case):
  """pearson_ci_words / spearman_ci_words are stats.bootstrap_ci on the scores, with the documented key."""
  x, u, other = case["x"], case["u"], case["other"]
  k_boot = jax.random.split(jax.random.key(0), 3)[1]
  columns = (("planted", case["ratings"]), ("unrelated", case["unrelated"]))
  for ci_idx, (column, ratings) in enumerate(columns):
    ok = np.isfinite(ratings)
    scores = np.stack([_cosines(x, 2.0 * u), _cosines(x, other)], axis=1)[ok].astype(np.float32)
    for stat in ("pearson", "spearman"):
      want = np.asarray(stats.bootstrap_ci(scores, ratings[ok].astype(np.float32),
                                           jax.random.fold_in(k_boot, ci_idx), stat=stat, n_boot=N_BOOT))
      for s, name in enumerate(("planted", "orthogonal")):
        np.testing.assert_allclose(_row(case["out"], name, column)[f"{stat}_ci_words"], want[s], atol=1e-5)


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
  assert set(got.pole_vectors) == set(got.names)  # the pole vectors follow the kept pairs
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


@pytest.fixture(scope="module")
def pole_case():
  """Scales with known pole vectors: noisy poles of 4 and 3 words, poles of one word, and a mix.

  Words are noise + z*u with ratings 5 + 2z + noise (some unrated); pole words scatter around
  base +/- u, so the chosen pole words move the direction and with it r.
  """
  rng = np.random.default_rng(5)
  d, n = 16, 300
  u = rng.normal(size=d)
  u /= np.linalg.norm(u)
  z = rng.normal(size=n)
  x = rng.normal(size=(n, d)) * 0.5 + z[:, None] * u
  ratings = 5.0 + 2.0 * z + rng.normal(size=n) * 1.5
  ratings[rng.choice(n, size=20, replace=False)] = np.nan
  base = rng.normal(size=d) * 0.3

  def pole(sign, k):
    return (base + sign * u + rng.normal(size=(k, d)) * 0.6).astype(np.float32)

  poles = {"noisy": (pole(1, 4), pole(-1, 3)), "single": (pole(1, 1), pole(-1, 1)),
           "mixed": (pole(1, 1), pole(-1, 3))}
  names = tuple(poles)
  vectors = np.stack([poles[k][0].mean(0) - poles[k][1].mean(0) for k in names])
  dirs = _directions(vectors, names, norms=["toy:planted", None, None], pole_vectors=poles)
  nw = align.NormWords(name="toy", words=tuple(f"w{i}" for i in range(n)),
                       vectors=jnp.asarray(x, jnp.float32), columns={"planted": ratings},
                       report={"coverage": 1.0})
  key = jax.random.key(3)
  out = align.align(dirs, [nw], key=key, n_boot=N_BOOT, n_null=20)
  return dict(x=x, ratings=ratings, poles=poles, names=names, out=out, key=key)


def _np_r(scores, y, stat):
  if stat == "spearman":
    scores, y = scipy_stats.rankdata(scores), scipy_stats.rankdata(y)
  return np.corrcoef(scores, y)[0, 1]


def test_hierarchical_interval_matches_numpy_on_the_same_draws(pole_case):
  """pearson_ci / spearman_ci: numpy percentiles of r over the documented word and pole-word draws."""
  x, y_all, key = pole_case["x"], pole_case["ratings"], pole_case["key"]
  ok = np.isfinite(y_all)
  x, y = x[ok], y_all[ok]
  k_boot = jax.random.split(key, 3)[1]
  idx = np.asarray(stats.bootstrap_indices(jax.random.fold_in(k_boot, 0), int(ok.sum()), N_BOOT))
  for s, name in enumerate(pole_case["names"]):
    pos, neg = pole_case["poles"][name]
    k_pole = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 3), 0), s)
    weights = np.asarray(hierarchical.resample_pole_weights(k_pole, len(pos), len(neg), N_BOOT), np.float64)
    poles = np.concatenate([pos, neg]).astype(np.float64)
    row = _row(pole_case["out"], name, "planted")
    for stat in ("pearson", "spearman"):
      draws = [_np_r(_cosines(x, w @ poles)[i], y[i], stat) for w, i in zip(weights, idx)]
      np.testing.assert_allclose(row[f"{stat}_ci"], np.nanpercentile(draws, [2.5, 97.5]), atol=2e-5)
  assert _row(pole_case["out"], "noisy", "planted")["matches_tag"]


def test_pole_resampling_widens_the_interval_and_leave_one_out(pole_case):
  """Noisy poles widen the interval; one-word poles cannot; leave-one-out drops 2+-word poles only."""
  x, y_all = pole_case["x"], pole_case["ratings"]
  ok = np.isfinite(y_all)
  rows = {name: _row(pole_case["out"], name, "planted") for name in pole_case["names"]}
  noisy = rows["noisy"]
  assert noisy["ci_resampling"] == "words+pole_words"
  width = noisy["pearson_ci"][1] - noisy["pearson_ci"][0]
  width_words = noisy["pearson_ci_words"][1] - noisy["pearson_ci_words"][0]
  assert width > 1.5 * width_words
  single = rows["single"]
  assert single["ci_resampling"] == "words" and single["leave_one_pole_out"] is None
  np.testing.assert_allclose(single["pearson_ci"], single["pearson_ci_words"], atol=1e-6)
  assert rows["mixed"]["ci_resampling"] == "words+pole_words"
  for name, row in rows.items():
    if name == "single":
      continue
    pos, neg = (p.astype(np.float64) for p in pole_case["poles"][name])
    rs = []
    for side, pole in (("pos", pos), ("neg", neg)):
      for i in range(len(pole) if len(pole) > 1 else 0):
        rest = np.delete(pole, i, axis=0)
        d = (rest.mean(0) - neg.mean(0)) if side == "pos" else (pos.mean(0) - rest.mean(0))
        rs.append(np.corrcoef(_cosines(x[ok], d), y_all[ok])[0, 1])
    assert len(rs) == len(pos) * (len(pos) > 1) + len(neg) * (len(neg) > 1)
    np.testing.assert_allclose(row["leave_one_pole_out"], [min(rs), max(rs)], atol=1e-5)
    assert row["leave_one_pole_out"][0] <= row["pearson"] + 0.05


def test_progress_names_each_stage_and_leaves_the_results_unchanged(case, capsys):
  """progress=True prints the nulls', the probe's and the bootstrap's lines, ending at 100%; the
  results are those of the quiet run (same key)."""
  out = align.align(case["dirs"], [case["nw"]], key=jax.random.key(0), n_boot=N_BOOT, n_null=N_NULL,
                    null_pairs=case["pair_dirs"], progress=True)
  lines = capsys.readouterr().err.splitlines()
  at = {}
  for stage, total in (("align nulls", 2 * (N_NULL + 12)), ("align probe", 2 * 30),
                       ("align bootstrap", 2 * 2 * 2 * N_BOOT)):
    at[stage] = [i for i, line in enumerate(lines) if line.startswith(stage + ":")]
    first, last = lines[at[stage][0]], lines[at[stage][-1]]
    assert first.startswith(f"{stage}: 0/{total} ") and last.startswith(f"{stage}: {total}/{total} ")
  # Each stage finishes before the next starts.
  assert at["align nulls"][-1] < at["align probe"][0] and at["align probe"][-1] < at["align bootstrap"][0]
  a = case["out"]
  assert out["results"] == a["results"] and out["nulls"] == a["nulls"] and out["probe"] == a["probe"]
  assert list(out["nulls"]) == ["toy:planted:wordnet_pairs", "toy:planted:random",
                                "toy:unrelated:wordnet_pairs", "toy:unrelated:random"]


def _per_scale_row(proj, y, draws, words, key):
  """The intervals of one scale x column computed scale by scale with the per-scale kernels."""
  if proj is None:
    ci = [np.asarray(stats.percentile_ci(w)).tolist() for w in words]
    return {"pearson_ci": ci[0], "spearman_ci": ci[1], "pearson_ci_words": ci[0], "spearman_ci_words": ci[1],
            "leave_one_pole_out": None, "ci_resampling": "words"}
  k = proj.scores.shape[1]
  n_pos, n_neg = proj.n_positive, k - proj.n_positive
  n_boot = draws.word_indices.shape[0]
  fixed = jnp.broadcast_to(hierarchical.pole_mean_weights(n_pos, n_neg), (n_boot, k))
  words = hierarchical.distribution(proj, draws, fixed)
  both = hierarchical.distribution(proj, draws, hierarchical.resample_pole_weights(key, n_pos, n_neg, n_boot))
  ci = [np.asarray(stats.percentile_ci(d)).tolist() for d in (*words, *both)]
  return {"pearson_ci": ci[2], "spearman_ci": ci[3], "pearson_ci_words": ci[0], "spearman_ci_words": ci[1],
          "leave_one_pole_out": hierarchical.leave_one_out_range(proj, y),
          "ci_resampling": "words+pole_words" if max(n_pos, n_neg) > 1 else "words"}


@pytest.mark.slow  # every kernel in two layouts: over 8 s on a 2-core machine
def test_batched_bootstrap_equals_the_per_scale_path(capsys):
  """Scales of different pole counts (3+2, 6+6, 1+4 words) and one without pole vectors, two columns
  (one with unrated words): every interval and leave-one-out range equals the scale-by-scale kernels on
  the documented keys, and the bootstrap's progress counts two bootstraps per scale x column."""
  rng = np.random.default_rng(11)
  d, n, n_boot = 12, 150, 40
  u = rng.normal(size=d)
  u /= np.linalg.norm(u)
  z = rng.normal(size=n)
  x = (rng.normal(size=(n, d)) * 0.5 + z[:, None] * u).astype(np.float32)
  planted = 5.0 + 2.0 * z + rng.normal(size=n)
  planted[rng.choice(n, size=15, replace=False)] = np.nan
  columns = {"planted": planted, "other": rng.normal(size=n)}

  def pole(sign, k):
    return (sign * u + rng.normal(size=(k, d)) * 0.7).astype(np.float32)

  poles = {"a": (pole(1, 3), pole(-1, 2)), "b": (pole(1, 6), pole(-1, 6)), "c": (pole(1, 1), pole(-1, 4))}
  names = ("a", "bare", "b", "c")
  vectors = np.stack([poles[k][0].mean(0) - poles[k][1].mean(0) if k in poles else rng.normal(size=d)
                      for k in names])
  dirs = _directions(vectors, names, pole_vectors=poles)
  nw = align.NormWords(name="toy", words=tuple(f"w{i}" for i in range(n)), vectors=jnp.asarray(x),
                       columns=columns, report={"coverage": 1.0})
  key = jax.random.key(9)
  out = align.align(dirs, [nw], key=key, n_boot=n_boot, n_null=10, progress=True)
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("align bootstrap:")]
  total = 2 * len(names) * 2 * n_boot
  assert lines[0].startswith(f"align bootstrap: 0/{total} ")
  assert lines[-1].startswith(f"align bootstrap: {total}/{total} ")
  k_boot, k_poles = jax.random.split(key, 3)[1], jax.random.fold_in(key, 3)
  checked = 0
  for ci_idx, column in enumerate(sorted(columns)):
    ok = np.isfinite(columns[column])
    y = columns[column][ok].astype(np.float32)
    idx = stats.bootstrap_indices(jax.random.fold_in(k_boot, ci_idx), int(ok.sum()), n_boot)
    draws = hierarchical.rating_draws(y, idx)
    for s, name in enumerate(names):
      proj, words = None, None
      if name in poles:
        proj = hierarchical.pole_projections(x[ok], *poles[name], "cosine")
      else:
        scores = np.asarray(projection.project(x[ok], vectors[s:s + 1]))
        words = [stats.bootstrap_distribution(scores, y, idx, stat)[:, 0] for stat in ("pearson", "spearman")]
      want = _per_scale_row(proj, y, draws, words, jax.random.fold_in(jax.random.fold_in(k_poles, ci_idx), s))
      row = _row(out, name, column)
      assert row["ci_resampling"] == want["ci_resampling"]
      for field in ("pearson_ci", "spearman_ci", "pearson_ci_words", "spearman_ci_words",
                    "leave_one_pole_out"):
        if want[field] is None:
          assert row[field] is None, (name, column, field)
        else:
          np.testing.assert_allclose(row[field], want[field], atol=1e-6, err_msg=f"{name} {column} {field}")
          checked += 1
  assert checked == 2 * (3 * 5 + 4)
  assert _row(out, "b", "planted")["ci_resampling"] == "words+pole_words"
  assert _row(out, "bare", "planted")["leave_one_pole_out"] is None
