"""Steering grid and analysis: batching, sharding, layout, Jacobian, off-target, methods, errors."""

import dataclasses
import inspect
import json
import types

import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.analyses import grid as grid_lib
from jaxsem.analyses import offtarget, readouts, steer, steering_methods
from jaxsem.errors import InputError
from jaxsem.io import scales as scales_io
from jaxsem.report import writers
from tests.analyses import toy_model
from tests.test_launch import _assert_one_line_error, _run  # shared subprocess helpers
from tests.test_launch_analyses import _assert_png

# Every word is one word-initial token of the toy tokenizer.
WORDS = ("kind", "cruel", "good", "bad", "hot", "cold", "ice", "cream", "word", "the", "un", "Happy")
TOY_SCALES = {"name": "toy-steer", "scales": [
    {"name": "kind-cruel", "positive": ["kind"], "negative": ["cruel"], "factor": "E"},
    {"name": "good-bad", "positive": ["good"], "negative": ["bad"], "factor": "E"},
    {"name": "hot-cold", "positive": ["hot"], "negative": ["cold"], "factor": "A"},
    {"name": "happy-sad", "positive": ["Happy"], "negative": ["SAD"]},
    {"name": "ice-cream", "positive": ["ice"], "negative": ["cream"]}]}
NAMES = tuple(x["name"] for x in TOY_SCALES["scales"])
SUBSET = ("kind-cruel", "good-bad", "hot-cold")


@pytest.fixture(scope="module")
def model():
  return toy_model()


@pytest.fixture(scope="module")
def scales_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("scales") / "toy.json"
  path.write_text(json.dumps(TOY_SCALES))
  return str(path)


def _opts(scales_file, **kw):
  base = dict(scales=scales_file, steer=NAMES, words=WORDS, alphas=(-1.0, -0.5, 0.5, 1.0), n_random=2,
              fit_steps=50, n_boot=20, n_perm=20, batch_size=64, seed=0)
  base.update(kw)
  return steer.SteerOptions(**base)


# The Jacobian tests take 9 words, as many as run_steer fits on (fit_share 0.75 of 12): the Jacobian's batch
# is no bigger than its words, so the programs compiled for run_steer serve them too.
JACOBIAN_ROWS = np.array([1, 4, 9, 2, 7, 11, 3, 5, 8])


def _word_ids(tokenizer, words):
  return [tokenizer.encode(" " + w, add_special_tokens=False) for w in words]


def _scales():
  return [types.SimpleNamespace(**s) for s in TOY_SCALES["scales"]]


def _grid(model, batch_size=256, read_dirs=None, site="embed"):
  ids = _word_ids(model.tokenizer, WORDS)
  prompts = readouts.build_prompts(model.tokenizer, readouts.DEFAULT_TEMPLATE, ids)
  if read_dirs is None:
    readout = readouts.logodds_readout(model.tokenizer, _scales())
  else:
    readout = readouts.representation_readout(model.tokenizer, _scales(), "embed", read_dirs)
  return grid_lib.Grid(model, prompts, readout, site, batch_size=batch_size)


def _random_rows(d, n_rows=23, seed=0, scale=8.0):
  rng = np.random.default_rng(seed)
  wi = rng.integers(0, len(WORDS), size=n_rows)
  vec = (rng.normal(size=(n_rows, d)) * scale).astype(np.float32)
  vec[::5] = 0.0  # some unsteered rows among them
  return wi, vec


def _unit_dirs(j, d, seed):
  x = np.random.default_rng(seed).normal(size=(j, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- the grid


def test_evaluate_does_not_depend_on_batch_size_or_row_order(model):
  d = model.config.d_model
  wi, vec = _random_rows(d)
  dirs = _unit_dirs(len(TOY_SCALES["scales"]), d, 1)
  big_r, big_rep = _grid(model, 64, dirs).evaluate(wi, vec)  # the batch size of _opts: compiled once
  seen = []
  small = _grid(model, 5, dirs)  # 23 rows: 4 full batches and a padded one
  small_r, small_rep = small.evaluate(wi, vec, progress=lambda done, total: seen.append((done, total)))
  assert big_r.shape == (23, 5) and big_rep.shape == (23, 5) and np.isfinite(big_r).all()
  np.testing.assert_allclose(small_r, big_r, atol=1e-5, rtol=1e-6)
  np.testing.assert_allclose(small_rep, big_rep, atol=1e-5, rtol=1e-6)
  assert seen == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
  order = np.random.default_rng(3).permutation(23)
  perm_r, perm_rep = small.evaluate(wi[order], vec[order])
  np.testing.assert_allclose(perm_r, small_r[order], atol=1e-5, rtol=1e-6)
  np.testing.assert_allclose(perm_rep, small_rep[order], atol=1e-5, rtol=1e-6)
  # Rows do differ, so the comparisons above can fail.
  assert np.ptp(big_r, axis=0).min() > 1e-3


def test_short_last_batch_runs_at_the_smallest_power_of_two_size(model, monkeypatch):
  """The short last batch of a longer evaluation is compiled for the smallest ``multiple * 2**i`` that
  holds it, not a full batch."""
  assert [grid_lib.last_batch_rows(k, 256) for k in (1, 2, 3, 100, 128, 129, 256)] == [1, 2, 4, 128, 128, 256,
                                                                                       256]
  assert [grid_lib.last_batch_rows(k, 24, 8) for k in (1, 8, 9, 17, 24)] == [8, 8, 16, 24, 24]
  d = model.config.d_model
  wi, vec = _random_rows(d)  # 23 rows
  sizes = []
  real = grid_lib.steering_k.steered_readout

  def recording(params, config, cache, ids, *args, **kwargs):
    sizes.append(ids.shape[0])
    return real(params, config, cache, ids, *args, **kwargs)

  monkeypatch.setattr(grid_lib.steering_k, "steered_readout", recording)
  r, _ = _grid(model, 8).evaluate(wi, vec)
  assert sizes == [8, 8, 8] and r.shape[0] == 23  # 7 left: a batch of 8
  sizes.clear()
  _grid(model, 16).evaluate(wi, vec)
  assert sizes == [16, 8]  # 7 left: 8, not 16
  sizes.clear()
  _grid(model, 64).evaluate(wi[:5], vec[:5])
  assert sizes == [64]  # one batch or less: the full size, shared by every small evaluation


def test_zero_strength_rows_equal_the_baseline_exactly(model):
  """Steered and unsteered rows run through the same program: alpha = 0 changes nothing. (The baseline
  runs the same rows in the same batches: programs of other batch sizes, or a row elsewhere in a batch,
  may round differently in the last bits.)"""
  g = _grid(model, 64, site=f"resid_post.{model.config.n_layers - 2}")
  w = len(WORDS)
  wi, vec = grid_lib.grid_rows(w, _unit_dirs(2, model.config.d_model, 2) * 10.0, [0.0, 1.0])
  base, _ = g.evaluate(wi, np.zeros_like(vec))
  r, _ = g.evaluate(wi, vec)
  r, base = r.reshape(w, 2, 2, -1), base.reshape(w, 2, 2, -1)
  np.testing.assert_array_equal(r[:, :, 0], base[:, :, 0])
  assert np.abs(r[:, :, 1] - base[:, :, 1]).max() > 1e-3
  np.testing.assert_allclose(base, np.broadcast_to(base[:, :1, :1], base.shape), rtol=1e-5, atol=1e-5)


def test_sharded_equals_unsharded(model):
  d = model.config.d_model
  wi, vec = _random_rows(d, n_rows=19, seed=5)
  dirs = _unit_dirs(len(TOY_SCALES["scales"]), d, 6)
  plain = _grid(model, 64, dirs)
  sharded_model = toy_model(sharding.make_mesh("data:2,model:4"))
  sharded = _grid(sharded_model, 7, dirs)
  assert sharded.batch_size == 8  # rounded up to the data axis
  r0, rep0 = plain.evaluate(wi, vec)
  r1, rep1 = sharded.evaluate(wi, vec)
  np.testing.assert_allclose(r1, r0, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(rep1, rep0, atol=1e-5, rtol=1e-5)
  rows = JACOBIAN_ROWS  # 9 rows: padded to 10 over the data axis
  np.testing.assert_allclose(grid_lib.jacobian(sharded, rows), grid_lib.jacobian(plain, rows),
                             atol=1e-5, rtol=1e-4)


def test_grid_rows_layout_matches_a_direct_loop():
  rng = np.random.default_rng(0)
  w, s, a, d = 3, 4, 5, 6
  dirs = rng.normal(size=(s, d))
  alphas = [-2.0, -0.5, 0.25, 1.0, 3.0]
  wi, vec = grid_lib.grid_rows(w, dirs, alphas)
  assert wi.shape == (w * s * a,) and vec.shape == (w * s * a, d) and vec.dtype == np.float32
  by_cell = vec.reshape(w, s, a, d)  # how run_steer reshapes the rows' ratings
  for iw in range(w):
    for isc in range(s):
      for ia in range(a):
        n = (iw * s + isc) * a + ia
        assert wi[n] == iw
        np.testing.assert_allclose(vec[n], dirs[isc] * alphas[ia], rtol=1e-6)
        np.testing.assert_allclose(by_cell[iw, isc, ia], dirs[isc] * alphas[ia], rtol=1e-6)
  np.testing.assert_array_equal(wi.reshape(w, s, a), np.broadcast_to(np.arange(w)[:, None, None], (w, s, a)))


def test_check_finite_names_the_worst_strength():
  ratings = np.zeros((2, 1, 3, 2))
  grid_lib.check_finite(ratings, [1.0, 2.0, 3.0])
  ratings[1, 0, 1, 0] = np.nan
  ratings[0, 0, 2, 1] = np.inf
  with pytest.raises(InputError, match=r"--alphas: strength 3 makes"):
    grid_lib.check_finite(ratings, [1.0, 2.0, 3.0])


def test_jacobian_equals_finite_differences(model):
  g = _grid(model, 64)
  rows = JACOBIAN_ROWS
  jac = grid_lib.jacobian(g, rows)
  d = model.config.d_model
  assert jac.shape == (9, 5, d) and np.isfinite(jac).all()
  eps = 0.25  # the embedding rows have norm ~30 here
  steepest = jac[0, 0] / np.linalg.norm(jac[0, 0])
  for k, e in enumerate([*_unit_dirs(2, d, 7), steepest]):
    plus, _ = g.evaluate(rows, np.tile(eps * e, (len(rows), 1)))
    minus, _ = g.evaluate(rows, np.tile(-eps * e, (len(rows), 1)))
    fd = (plus.astype(np.float64) - minus) / (2 * eps)
    want = jac @ e  # [9, J]
    assert np.abs(want).max() > 1e-2, k
    np.testing.assert_allclose(fd, want, atol=1e-4, rtol=1e-2)


# ----------------------------------------------------------------------------- off-target statistics


@pytest.fixture(scope="module")
def representation_run(model, scales_file):
  return steer.run_steer(model, _opts(scales_file, readout="representation", methods=("plain",), n_random=0))


def _numpy_directions(model):
  """Pole-mean directions in the (unscaled is fine for cosines) input embedding, in float64."""
  e = np.asarray(model.params["embed"], np.float64) * model.config.embed_scale
  tok = model.tokenizer
  rows = []
  for s in TOY_SCALES["scales"]:
    pos = np.mean([e[tok.encode(" " + w, add_special_tokens=False)[0]] for w in s["positive"]], axis=0)
    neg = np.mean([e[tok.encode(" " + w, add_special_tokens=False)[0]] for w in s["negative"]], axis=0)
    rows.append(pos - neg)
  rows = np.stack(rows)
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_representation_offtarget_equals_the_cosine(model, representation_run):
  res = representation_run
  assert res["site"] == "embed" and res["read_site"] == "embed" and "methods" not in res
  units = _numpy_directions(model)
  cos = units @ units.T
  np.testing.assert_allclose(res["cosine"]["matrix"], cos, atol=1e-5)
  ot = res["offtarget"]
  np.testing.assert_allclose(ot["D"], cos, atol=2e-4)
  assert ot["slope"] == pytest.approx(1.0, abs=1e-3)
  assert ot["intercept"] == pytest.approx(0.0, abs=1e-3)
  assert ot["r"] > 0.9999 and ot["n_pairs"] == 20
  for p in ot["per_pair"]:
    assert p["D"] == pytest.approx(p["cos"], abs=2e-4)
  # Random toy directions are far from orthogonal, so slope 1 is not a trivial zero fit.
  assert np.ptp([p["cos"] for p in ot["per_pair"]]) > 0.2
  # The rating change is alpha * site_norm * cos: linear in alpha.
  dr = res["dose_response"]
  on = np.array(dr["on_target"])  # [S, A]
  np.testing.assert_allclose(on, np.outer(np.ones(5), np.array(dr["alphas"]) * res["site_norm"]), rtol=1e-4)


def test_analyse_on_hand_built_effects_recovers_the_planted_matrix():
  """Effects E[w, s, a, j] = alpha * slope_w * M[s, j]: D equals M row-normalised by its on-target entry."""
  rng = np.random.default_rng(0)
  w, s, j = 10, 3, 5
  idx = np.array([0, 2, 4])
  cos = rng.uniform(-0.6, 0.6, size=(s, j))
  cos[np.arange(s), idx] = 1.0
  alphas = np.array([-1.0, -0.5, 0.5, 1.0])
  slope_w = rng.uniform(0.5, 2.0, size=w)
  effects = slope_w[:, None, None, None] * alphas[None, None, :, None] * cos[None, :, None, :]
  res = offtarget.analyse(effects, alphas, cos, idx, key_or_seed=0, n_boot=50, n_perm=50)
  np.testing.assert_allclose(res["D"], cos, atol=1e-12)
  assert res["slope"] == pytest.approx(1.0) and res["r"] == pytest.approx(1.0)
  assert res["ci"]["slope"][0] == pytest.approx(1.0) and res["ci"]["slope"][1] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- methods


def _planted_jacobians(n, g, seed, noise=0.02):
  rng = np.random.default_rng(seed)
  return g[None] + noise * rng.normal(size=(n,) + g.shape)


def test_fitted_vector_cancels_a_planted_offtarget_direction():
  rng = np.random.default_rng(0)
  d, j = 16, 4
  steered_index = [0, 2]
  plain_dirs = rng.normal(size=(2, d))
  plain_dirs /= np.linalg.norm(plain_dirs, axis=1, keepdims=True)
  plain = 0.7 * plain_dirs  # [S, D]
  g = rng.normal(size=(j, d))
  g[1] += 3.0 * np.linalg.norm(g[1]) * plain_dirs[0]  # scale 1 moves strongly with scale 0's plain vector
  train, test = _planted_jacobians(40, g, 1), _planted_jacobians(40, g, 2)

  fitted, report = steering_methods.fit_vectors(train, plain, steered_index, steps=500, off_weight=1.0,
                                                 ridge=0.05)
  assert report["loss_end"][0] < 0.05 * report["loss_start"][0]
  fitted = steering_methods.calibrate(fitted, train, plain, steered_index)

  def effects(jac, v):
    e = np.einsum("wjd,sd->wsj", jac, v)  # [W, S, J]
    on = e[:, np.arange(2), steered_index].mean(0)  # [S]
    off = np.abs(e[:, 0, [1, 2, 3]]).mean()  # steered scale 0, j != 0
    return on, off

  on_plain, off_plain = effects(test, plain)
  on_fit, off_fit = effects(test, fitted)
  assert off_plain > 1.0  # the planted off-target effect is there for the plain vector
  assert off_fit < 0.2 * off_plain
  # Calibrated: the same mean predicted on-target change on the training words, ...
  on_train_plain, _ = effects(train, plain)
  on_train_fit, _ = effects(train, fitted)
  np.testing.assert_allclose(on_train_fit, on_train_plain, rtol=1e-3)
  # ... and nearly so on held-out words (they differ only by the per-word noise).
  np.testing.assert_allclose(on_fit, on_plain, rtol=0.1)
  # The fit moved the vector away from the off-target direction g_1.
  assert abs(g[1] @ fitted[0]) < 0.2 * abs(g[1] @ plain[0])


def test_calibrate_matches_the_on_target_change_and_keeps_direction():
  rng = np.random.default_rng(1)
  jac = rng.normal(size=(6, 3, 8))
  plain = rng.normal(size=(2, 8))
  vec = rng.normal(size=(2, 8)) * 5.0
  out = steering_methods.calibrate(vec, jac, plain, [2, 0])
  want = np.einsum("wsd,sd->s", jac[:, [2, 0]], plain)
  np.testing.assert_allclose(np.einsum("wsd,sd->s", jac[:, [2, 0]], out), want, rtol=1e-10)
  cos = np.sum(out * vec, axis=1) / np.linalg.norm(out, axis=1) / np.linalg.norm(vec, axis=1)
  np.testing.assert_allclose(np.abs(cos), 1.0, rtol=1e-12)


def test_orthogonal_directions_are_unit_and_orthogonal_to_the_other_scales():
  rng = np.random.default_rng(2)
  dirs = rng.normal(size=(5, 12)) + 0.8 * rng.normal(size=12)  # correlated directions
  idx = [3, 0, 1]
  out = steering_methods.orthogonal_directions(dirs, idx)
  assert out.shape == (3, 12)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
  for s, j in enumerate(idx):
    others = np.delete(dirs, j, axis=0)
    np.testing.assert_allclose(others @ out[s] / np.linalg.norm(others, axis=1), 0.0, atol=1e-5)
    assert out[s] @ dirs[j] > 0  # still points along its own scale


@pytest.mark.parametrize("combo", ["duplicate", "combination"])
def test_orthogonal_directions_refuse_a_direction_in_the_span_of_the_others(combo):
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(2, 12)) + 0.8 * rng.normal(size=12)
  third = a if combo == "duplicate" else a - 2 * b
  with pytest.raises(InputError, match="span of the other scales"):
    steering_methods.orthogonal_directions(np.stack([a, b, third]), [2])


# ----------------------------------------------------------------------------- run_steer: bad input


def test_site_name():
  assert steer.site_name("embed", None, 4) == "embed"
  assert steer.site_name("resid_post", 2, 4) == "resid_post.2"
  assert steer.site_name("resid_pre", 3, 4) == "resid_pre.3"
  assert steer.site_name("resid_pre", 0, 4) == "resid_pre.0"
  with pytest.raises(InputError, match="--layer=3: the last block's output at the word never reaches"):
    steer.site_name("resid_post", 3, 4)
  for layer in (4, -1, None):
    with pytest.raises(InputError, match=f"--layer={layer} is out of range"):
      steer.site_name("resid_post", layer, 4)
  with pytest.raises(InputError, match="--layer applies"):
    steer.site_name("embed", 1, 4)
  with pytest.raises(InputError, match="--site='mlp'"):
    steer.site_name("mlp", 1, 4)


@pytest.mark.parametrize("kw,needles", [
    (dict(words=("kind", "kindness", "good", "bad", "hot")), ["--words", "'kindness'", "2 tokens"]),
    (dict(template="A template with no slot"), ["--template", "{word}"]),
    (dict(site="resid_post", layer=4), ["--layer=4", "out of range", "0..3"]),
    (dict(site="resid_pre", layer=-1), ["--layer=-1", "out of range"]),
    (dict(alphas=(-1.0, 0.0, 1.0)), ["--alphas", "nonzero finite"]),
    (dict(alphas=(1.0, float("inf"))), ["--alphas", "nonzero finite"]),
    (dict(alphas=()), ["--alphas"]),
    (dict(alphas=(0.5, 1e38)), ["--alphas", "strength 1e+38", "NaN or inf"]),
    (dict(steer=("kind-cruel", "loud-quiet")), ["--steer", "'loud-quiet'"]),
    (dict(words=("kind", "good", "bad")), ["--words", "at least 4"]),
    (dict(methods=("plain", "magic")), ["--method='magic'"]),
    (dict(readout="vibes"), ["--readout='vibes'"]),
    # The last block's output at the word never reaches the read position (the template's tail
    # follows the word): refused before any work.
    (dict(site="resid_post", layer=3, methods=("plain",)), ["--layer=3", "never reaches", "0..2"]),
], ids=["multi-token-word", "template-without-slot", "layer-out-of-range", "negative-layer", "zero-alpha",
        "inf-alpha", "no-alphas", "overflowing-alpha", "unknown-steer-scale", "too-few-words",
        "unknown-method", "unknown-readout", "last-block-cannot-reach-the-readout"])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the 1e38 strength
def test_bad_input_gives_a_clear_error_and_writes_nothing(model, scales_file, tmp_path, monkeypatch, kw,
                                                          needles):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(InputError) as err:
    steer.run_steer(model, _opts(scales_file, **kw))
  msg = str(err.value)
  assert "\n" not in msg
  for needle in needles:
    assert needle in msg, msg
  assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- run_steer: end to end


@pytest.fixture(scope="module")
def logodds_run(model, scales_file):
  opts = _opts(scales_file)
  return opts, steer.run_steer(model, opts)


def _finite(x):
  return x is not None and np.isfinite(np.asarray(x, np.float64)).all()


def test_run_steer_end_to_end(logodds_run):
  _, res = logodds_run
  for key in ("offtarget", "controls", "methods", "readout_validation", "dose_response", "cosine"):
    assert key in res, key
  assert res["words"] == list(WORDS) and res["steered"] == list(NAMES) == res["scales"]
  assert res["site"] == "embed" and res["readout"] == "logodds" and res["read_site"] is None
  assert _finite(res["site_norm"]) and res["site_norm"] > 0
  ot = res["offtarget"]
  assert all(_finite(ot[k]) for k in ("slope", "intercept", "r", "r2"))
  assert np.asarray(ot["D"]).shape == (5, 5) and _finite(ot["D"])
  np.testing.assert_allclose(np.diag(ot["D"]), 1.0)
  assert ot["n_pairs"] == 20 and ot["n_words"] == len(WORDS) and ot["n_boot"] == 20
  assert _finite(ot["ci"]["slope"]) and ot["shuffled_labels"]["n"] == 20
  assert 0 < ot["shuffled_labels"]["p_value"] <= 1
  rnd = res["controls"]["random_directions"]
  assert rnd["n"] == 2 and all(_finite(rnd[k]) for k in ("mean_abs_slope", "antonym_mean_abs_offtarget_slope",
                                                         "antonym_mean_ontarget_slope"))
  m = res["methods"]
  # fit_share 0.75 of the 12 words
  assert set(m["methods"]) == set(steer.METHODS) and m["train_words"] == 9 and m["test_words"] == 3
  for name in steer.METHODS:
    assert all(_finite(m["methods"][name][k]) for k in ("on_target", "off_target_abs", "off_per_on"))
  assert set(m["reduction_vs_plain"]) == {"orthogonal", "fitted"}
  assert all(_finite(r["value"]) for r in m["reduction_vs_plain"].values())
  assert m["fit"]["steps"] == 50 and _finite(m["fit"]["loss_end"])
  np.testing.assert_allclose(m["cos_with_plain"]["plain"], 1.0, rtol=1e-6)
  # Readout validation: the E and A scales against Warriner columns, on the words it rates.
  val = {v["scale"]: v for v in res["readout_validation"]}
  assert val["kind-cruel"]["norm"] == "warriner:valence" and val["hot-cold"]["norm"] == "warriner:arousal"
  assert all(4 <= v["n"] <= len(WORDS) and -1 <= v["pearson"] <= 1 for v in val.values())


@pytest.mark.parametrize("readout", ["logodds", "representation"])
def test_run_steer_steering_a_subset_of_the_readout_scales(model, scales_file, readout):
  res = steer.run_steer(model, _opts(scales_file, steer=SUBSET, readout=readout, methods=("plain",),
                                     n_random=0))
  assert res["steered"] == list(SUBSET) and res["offtarget"]["n_pairs"] == 12
  cos = np.asarray(res["cosine"]["matrix"])
  off = np.ones((3, 5), bool)
  off[np.arange(3), [0, 1, 2]] = False
  assert res["cosine"]["mean_abs_offtarget"] == pytest.approx(np.abs(cos[off]).mean())


def test_run_steer_is_deterministic_in_its_seed(model, scales_file, logodds_run):
  _, res = logodds_run
  again = steer.run_steer(model, _opts(scales_file, methods=("plain",), n_random=0))
  np.testing.assert_allclose(again["offtarget"]["D"], res["offtarget"]["D"], rtol=1e-6, atol=1e-7)
  assert again["offtarget"]["ci"] == res["offtarget"]["ci"]


def test_write_steer_summary_and_figures(model, logodds_run, tmp_path):
  opts, res = logodds_run
  path = writers.write_steer(tmp_path, res, model, opts)
  assert path == tmp_path / "summary.json"
  doc = json.loads(path.read_text())
  assert doc["job"] == "steer"
  prov = doc["provenance"]
  assert prov["site"] == "embed" and prov["readout"] == "logodds" and prov["read_site"] is None
  assert prov["template"] == readouts.DEFAULT_TEMPLATE and prov["seed"] == 0
  assert prov["options"] == json.loads(json.dumps(opts.provenance()))
  assert prov["options"]["steer"] == list(NAMES) and prov["options"]["scales"].endswith("toy.json")
  assert prov["model"]["name"] == "toy" and prov["versions"]["jax"]
  assert doc["offtarget"]["slope"] == pytest.approx(res["offtarget"]["slope"])
  for name in ("offtarget.png", "offtarget_matrix.png", "dose_response.png"):
    _assert_png(tmp_path / name)
  lines = writers.steer_digest(res)
  assert any(line.startswith("off-target D vs cosine over 20 pairs") for line in lines)


# ----------------------------------------------------------------------------- the launcher


# The launcher runs on the tiny word model (tests/word_model.py): these tests check its plumbing.
LAUNCH_ARGS = ("--n_words=8", "--steer=good-bad,strong-weak,fast-slow", "--n_boot=20", "--n_perm=20",
               "--n_random=2", "--fit_steps=20")


def _three_scales(tmp_path):
  """osgood28's good-bad, strong-weak and fast-slow, read out alone."""
  path = tmp_path / "three.json"
  path.write_text(json.dumps({"name": "three", "scales": [
      {"name": "good-bad", "positive": ["good"], "negative": ["bad"], "factor": "E"},
      {"name": "strong-weak", "positive": ["strong"], "negative": ["weak"], "factor": "P"},
      {"name": "fast-slow", "positive": ["fast"], "negative": ["slow"], "factor": "A"}]}))
  return path


@pytest.mark.slow
def test_steer_launcher_writes_summary_and_figures(word_model, tmp_path):
  out = tmp_path / "steer"
  proc = _run("launch.steer", f"--model={word_model}", *LAUNCH_ARGS, f"--scales={_three_scales(tmp_path)}", f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "off-target D vs cosine over 6 pairs" in proc.stdout
  assert "readout vs human norms" in proc.stdout and "fitted:" in proc.stdout
  assert "steer grid: 96/96 prompts (100.0%)" in proc.stderr
  doc = json.loads((out / "summary.json").read_text())
  assert doc["job"] == "steer" and len(doc["words"]) == 8 and doc["steered"] == doc["scales"]
  prov = doc["provenance"]
  assert prov["model"]["name_in_file"] == "word-model" and prov["site"] == "embed"
  assert prov["readout"] == "logodds" and prov["seed"] == 0 and prov["options"]["fit_steps"] == 20
  assert _finite(doc["offtarget"]["slope"]) and set(doc["methods"]["methods"]) == set(steer.METHODS)
  for name in ("offtarget.png", "offtarget_matrix.png", "dose_response.png"):
    _assert_png(out / name)


@pytest.mark.slow
def test_steer_launcher_steers_a_subset_of_osgood28(word_model, tmp_path):
  out = tmp_path / "steer"
  proc = _run("launch.steer", f"--model={word_model}", *LAUNCH_ARGS, f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "off-target D vs cosine over 81 pairs" in proc.stdout
  assert (out / "summary.json").is_file()
  # osgood28 has readout words for these three scales: the disjoint readout gets its own figures.
  assert "off-target (disjoint readout words) D vs cosine" in proc.stdout
  for name in ("offtarget_disjoint.png", "methods_disjoint_readout.png", "methods_heldout_readout.png"):
    _assert_png(out / name)


@pytest.mark.slow
def test_steer_launcher_user_error_gives_one_line_and_writes_nothing(word_model, tmp_path):
  out = tmp_path / "steer"
  proc = _run("launch.steer", f"--model={word_model}", *LAUNCH_ARGS, "--words=kind,antidisestablishmentarianism", f"--out_dir={out}")
  _assert_one_line_error(proc, "--words", "antidisestablishmentarianism")
  assert not out.exists()


def test_orthogonal_directions_top3_removes_the_shared_subspace():
  rng = np.random.default_rng(5)
  shared = np.linalg.qr(rng.normal(size=(16, 3)))[0].T  # [3, 16] orthonormal shared axes
  dirs = rng.normal(size=(6, 3)) * 5 @ shared + 0.5 * rng.normal(size=(6, 16))
  out = steering_methods.orthogonal_directions(dirs, [0, 2], basis="top3")
  _, _, vt = np.linalg.svd(dirs / np.linalg.norm(dirs, axis=1, keepdims=True), full_matrices=False)
  np.testing.assert_allclose(out @ vt[:3].T, 0.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
  with pytest.raises(InputError, match="--orth_basis='pca'"):
    steering_methods.orthogonal_directions(dirs, [0], basis="pca")


def test_jacobian_batches_come_back_from_the_checkpoint(model, tmp_path):
  rows = np.array([*JACOBIAN_ROWS, 0, 10, 6])  # 12 rows: a batch of 9 and a padded one
  first = _grid(model, len(JACOBIAN_ROWS))
  jac = grid_lib.jacobian(first, rows, checkpoint_dir=tmp_path)
  assert first.rows_computed == 12 and first.rows_resumed == 0
  again = _grid(model, len(JACOBIAN_ROWS))
  np.testing.assert_array_equal(grid_lib.jacobian(again, rows, checkpoint_dir=tmp_path), jac)
  assert again.rows_resumed == 12 and again.rows_computed == 0
  other = _grid(model, len(JACOBIAN_ROWS))  # other rows: another fingerprint, computed afresh
  np.testing.assert_array_equal(grid_lib.jacobian(other, rows[::-1], checkpoint_dir=tmp_path), jac[::-1])
  assert other.rows_computed == 12


# ----------------------------------------------------------------------------- disjoint readout words


# Readout words of the toy scales: disjoint from each scale's own direction words. happy-sad has
# none; ice-cream's only positive one ("icecream") starts with ▁ice, its own direction token.
READOUT_WORDS = {"kind-cruel": (("good", "Happy"), ("bad", "SAD")),
                 "good-bad": (("kind", "x"), ("cruel", "y")), "hot-cold": (("z", "the"), ("cream", "m")), "ice-cream": (("icecream",), ("v",))}
DISJOINT = ("kind-cruel", "good-bad", "hot-cold")


def _readout_scales():
  out = []
  for s in TOY_SCALES["scales"]:
    pos, neg = READOUT_WORDS.get(s["name"], ((), ()))
    out.append(types.SimpleNamespace(**s, readout_positive=pos, readout_negative=neg))
  return out


class _ScaleSet:
  def __init__(self, scales, source):
    self.name, self.scales, self.source = "toy-readout", scales, source

  def __iter__(self):
    return iter(self.scales)


@pytest.fixture(scope="module")
def readout_scales_file(tmp_path_factory):
  """A scale file with readout words (read by a stand-in loader where the loader predates them)."""
  doc = {"name": "toy-readout", "scales": [
      {**s, **({"readout_positive": list(READOUT_WORDS[s["name"]][0]),
                "readout_negative": list(READOUT_WORDS[s["name"]][1])} if s["name"] in READOUT_WORDS else {})}
      for s in TOY_SCALES["scales"]]}
  path = tmp_path_factory.mktemp("scales") / "toy_readout.json"
  path.write_text(json.dumps(doc))
  if "readout_positive" in {f.name for f in dataclasses.fields(scales_io.Scale)}:
    yield str(path)
    return
  load = scales_io.load_scales
  mp = pytest.MonkeyPatch()
  mp.setattr(scales_io, "load_scales",
             lambda name: _ScaleSet(_readout_scales(), str(path)) if name == str(path) else load(name))
  yield str(path)
  mp.undo()


@pytest.fixture(scope="module")
def disjoint_run(model, readout_scales_file):
  opts = _opts(readout_scales_file, n_random=3)
  return opts, steer.run_steer(model, opts)


def _readout_grid(model, readout, template=readouts.DEFAULT_TEMPLATE, batch_size=64):
  prompts = readouts.build_prompts(model.tokenizer, template, _word_ids(model.tokenizer, WORDS))
  return grid_lib.Grid(model, prompts, readout, "embed", batch_size=batch_size)


def test_one_pass_reads_the_shared_and_the_disjoint_readout_as_each_alone(model):
  tok = model.tokenizer
  shared = readouts.logodds_readout(tok, _readout_scales())
  disjoint = readouts.logodds_readout(tok, _readout_scales(), "disjoint")
  assert disjoint.names == DISJOINT and set(disjoint.report["left_out"]) == {"happy-sad", "ice-cream"}
  both = _readout_grid(model, readouts.concat(shared, disjoint))
  wi, vec = _random_rows(model.config.d_model, n_rows=21, seed=8)
  got = both.rate(wi, vec)
  assert got.shape == (21, 8)
  np.testing.assert_allclose(got[:, :5], _readout_grid(model, shared).rate(wi, vec), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got[:, 5:], _readout_grid(model, disjoint).rate(wi, vec), atol=1e-5, rtol=1e-5)
  assert np.abs(got[:, :3] - got[:, 5:]).max() > 1e-2  # other words, other ratings
  # The Jacobian of the first 5 columns is the shared-only grid's: no backward pass for the rest.
  rows = JACOBIAN_ROWS
  np.testing.assert_allclose(grid_lib.jacobian(both, rows, columns=5),
                             grid_lib.jacobian(_readout_grid(model, shared), rows), atol=1e-5, rtol=1e-4)


def test_run_steer_reports_the_disjoint_readout(disjoint_run):
  _, res = disjoint_run
  info = res["disjoint_readout"]
  assert info["scales"] == list(DISJOINT) and set(info["left_out"]) == {"happy-sad", "ice-cream"}
  assert "no readout words" in info["left_out"]["happy-sad"] and "icecream" in info["left_out"]["ice-cream"]
  assert set(info["words"]) == set(DISJOINT) and info["words"]["kind-cruel"]["positive"]
  assert "note" not in info and res["scales_file"].endswith("toy_readout.json")
  od, ot = res["offtarget_disjoint"], res["offtarget"]
  assert set(ot) <= set(od) | {"direct"}
  assert od["n_pairs"] == 6 and np.asarray(od["D"]).shape == (3, 3) and _finite(od["D"])
  np.testing.assert_allclose(np.diag(od["D"]), 1.0)
  assert all(_finite(od[k]) for k in ("slope", "intercept", "r"))
  cos = np.asarray(res["cosine"]["matrix"])
  for p in od["per_pair"]:
    assert p["cos"] == pytest.approx(cos[NAMES.index(p["from"]), NAMES.index(p["to"])])
  assert ot["n_pairs"] == 20
  if "direct" in inspect.signature(offtarget.analyse).parameters:  # the direct-path control, both readouts
    for part in (ot, od):
      assert _finite([part["direct_path"]["r_direct"], part["direct_path"]["share_direct"]])
  rnd = res["controls"]["random_directions"]
  assert rnd["n"] == 3 and _finite(rnd["mean_abs_slope"]) and _finite(rnd["antonym_mean_abs_offtarget_slope"])
  assert _finite(rnd["random_ci"]) and _finite(rnd["ratio"])


def test_disjoint_ratings_equal_a_disjoint_only_grid(model, disjoint_run):
  """D of the disjoint analysis, recomputed from a grid that reads the disjoint words alone."""
  opts, res = disjoint_run
  disjoint = readouts.logodds_readout(model.tokenizer, _readout_scales(), "disjoint")
  g = _readout_grid(model, disjoint, batch_size=64)
  dirs = steer._unit(steer._directions(model, _readout_scales(), "embed", opts.template))
  rows = [NAMES.index(n) for n in DISJOINT]
  w = len(WORDS)
  base = g.rate(np.arange(w), np.zeros((w, model.config.d_model), np.float32))
  wi, vec = grid_lib.grid_rows(w, dirs[rows] * res["site_norm"], opts.alphas)
  eff = g.rate(wi, vec).reshape(w, 3, len(opts.alphas), 3) - base[:, None, None, :]
  d = offtarget.offtarget_matrix(offtarget.dose_slopes(eff, opts.alphas), np.arange(3))
  np.testing.assert_allclose(res["offtarget_disjoint"]["D"], d, atol=1e-4, rtol=1e-3)


def _numpy_direct(model, units, pairs):
  """direct[s, j] from the params: u_s . (mean W_U[pos_j] - mean W_U[neg_j]) over u_s . r_on(s)."""
  tok = model.tokenizer
  cfg = model.config
  w_u = np.asarray(model.params["embed" if cfg.tie_embeddings else "unembed"], np.float64)

  def first(word):  # a lone word-initial marker says nothing about the word: its next token does
    ids = tok.encode(" " + word, add_special_tokens=False)
    return ids[1] if tok.id_to_token(ids[0]) == tok.word_initial_marker else ids[0]

  r = np.stack([w_u[[first(x) for x in pos]].mean(0) - w_u[[first(x) for x in neg]].mean(0)
                for pos, neg in pairs])
  raw = units @ r.T
  return raw / np.diag(raw)[:, None]


def test_direct_path_matrix_equals_a_numpy_recomputation(model, disjoint_run):
  _, res = disjoint_run
  units = _numpy_directions(model)
  shared = [(s["positive"], s["negative"]) for s in TOY_SCALES["scales"]]
  np.testing.assert_allclose(res["offtarget"]["direct"], _numpy_direct(model, units, shared), atol=1e-4)
  rows = [NAMES.index(n) for n in DISJOINT]
  dis = [READOUT_WORDS[n] for n in DISJOINT]
  want = _numpy_direct(model, units[rows], dis)
  np.testing.assert_allclose(res["offtarget_disjoint"]["direct"], want, atol=1e-4)
  assert np.ptp(want[~np.eye(3, dtype=bool)]) > 1e-2  # not a constant that any formula would hit


def test_a_scale_file_without_readout_words_reads_the_direction_words(logodds_run):
  _, res = logodds_run
  assert res["offtarget_disjoint"] is None
  info = res["disjoint_readout"]
  assert info["scales"] == [] and "shared with the direction words" in info["note"]
  assert set(info["left_out"]) == set(NAMES)
  assert res["methods"]["heldout_readout"]["words"] == "shared"
  assert "disjoint_readout" not in res["methods"]


def test_methods_on_the_disjoint_readout_and_the_heldout_template(disjoint_run):
  opts, res = disjoint_run
  m = res["methods"]
  assert m["fitted_on"].startswith("the first 5 pole log-odds")
  dis = m["disjoint_readout"]
  assert set(dis["methods"]) == set(steer.METHODS) and dis["n_words"] == m["test_words"]
  held = m["heldout_readout"]
  assert held["template"] == readouts.HELDOUT_TEMPLATE != opts.template and held["words"] == "disjoint"
  assert set(held["methods"]) == set(steer.METHODS)
  assert set(held["reduction_vs_plain"]) == {"orthogonal", "fitted"}
  for part in (dis, held):
    for name in steer.METHODS:
      assert all(_finite(part["methods"][name][k]) for k in ("on_target", "off_target_abs", "off_per_on",
                                                             "off_per_on_ci"))
    assert all(_finite(r["value"]) and _finite(r["ci"]) for r in part["reduction_vs_plain"].values())
  # Another template reads other numbers.
  assert held["methods"]["plain"]["on_target"] != pytest.approx(dis["methods"]["plain"]["on_target"])


def test_heldout_template_must_differ_from_the_template(model, scales_file):
  with pytest.raises(InputError, match="--heldout_template"):
    steer.run_steer(model, _opts(scales_file, heldout_template=readouts.DEFAULT_TEMPLATE))


def test_random_control_defaults_to_64_directions():
  assert steer.SteerOptions().n_random == 64
  assert steer.SteerOptions().heldout_template == readouts.HELDOUT_TEMPLATE
