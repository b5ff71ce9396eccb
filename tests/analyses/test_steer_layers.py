"""Steering at every layer: one compiled program over blocks, per-block off-target analysis, launcher."""

import dataclasses
import json

import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.analyses import grid as grid_lib
from jaxsem.analyses import offtarget_depth, readouts, steer, steer_layers
from jaxsem.errors import InputError
from jaxsem.report import writers
from tests.analyses import toy_model
from tests.analyses.test_steer import TOY_SCALES, WORDS, _random_rows, _scales, _word_ids
from tests.test_launch import _assert_one_line_error, _run
from tests.test_launch_analyses import _assert_png


@pytest.fixture(scope="module")
def model():
  return toy_model()


@pytest.fixture(scope="module")
def scales_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("scales") / "toy.json"
  path.write_text(json.dumps(TOY_SCALES))
  return str(path)


def _grid(model, site, layers=()):
  ids = _word_ids(model.tokenizer, WORDS)
  prompts = readouts.build_prompts(model.tokenizer, readouts.DEFAULT_TEMPLATE, ids)
  readout = readouts.logodds_readout(model.tokenizer, _scales())
  return grid_lib.Grid(model, prompts, readout, site, batch_size=16, layers=layers)


@pytest.mark.parametrize("kind,layers", [("resid_post", (0, 1, 2)), ("resid_pre", (0, 2, 3))])
def test_one_program_over_layers_equals_single_layer_runs(model, kind, layers):
  """Rows of every block, mixed in the batches of one program, equal each block's own grid to 1e-5."""
  wi, vec = _random_rows(model.config.d_model, n_rows=37, seed=4)
  row_layers = np.random.default_rng(5).choice(layers, size=len(wi))
  together, _ = _grid(model, kind, layers).evaluate(wi, vec, layer_index=row_layers)
  assert together.shape == (37, len(TOY_SCALES["scales"])) and np.isfinite(together).all()
  for layer in layers:
    rows = row_layers == layer
    alone, _ = _grid(model, f"{kind}.{layer}").evaluate(wi[rows], vec[rows])
    np.testing.assert_allclose(together[rows], alone, atol=1e-5, rtol=0)
  # The block matters: the same rows steered at another block read otherwise.
  other, _ = _grid(model, kind, layers).evaluate(wi, vec, layer_index=np.full(len(wi), layers[-1]))
  steered = np.abs(vec).sum(1) > 0
  assert np.abs(other - together)[steered & (row_layers != layers[-1])].max() > 1e-3


def test_grid_over_layers_sharded_equals_one_device(model):
  wi, vec = _random_rows(model.config.d_model, n_rows=19, seed=6)
  row_layers = np.random.default_rng(7).choice([0, 2], size=len(wi))
  one, _ = _grid(model, "resid_post", (0, 2)).evaluate(wi, vec, layer_index=row_layers)
  sharded = _grid(toy_model(sharding.make_mesh("data:2,model:4")), "resid_post", (0, 2))
  many, _ = sharded.evaluate(wi, vec, layer_index=row_layers)
  np.testing.assert_allclose(many, one, atol=1e-5, rtol=1e-5)


def test_a_grid_over_layers_checks_each_rows_layer(model):
  g = _grid(model, "resid_post", (0, 1))
  wi, vec = _random_rows(model.config.d_model, n_rows=3)
  with pytest.raises(ValueError, match="layer_index"):
    g.evaluate(wi, vec)
  with pytest.raises(ValueError, match="among"):
    g.evaluate(wi, vec, layer_index=[0, 1, 2])
  with pytest.raises(ValueError, match="one site"):
    _grid(model, "resid_post.0").evaluate(wi, vec, layer_index=[0, 0, 0])


def _opts(scales_file, **kw):
  base = dict(scales=scales_file, steer=(), words=WORDS, alphas=(-1.0, 1.0), n_random=0, methods=("plain",),
              n_boot=30, n_perm=30, batch_size=64, seed=0, rating_check=False, site="resid_post",
              layers="all", heldout_template="")
  base.update(kw)
  return steer.SteerOptions(**base)


@pytest.fixture(scope="module")
def layers_run(model, scales_file):
  return steer.run_steer(model, _opts(scales_file, compare_layers="1"), progress=False)


def test_run_over_layers_keys_and_shapes(model, layers_run):
  res = layers_run
  n = model.config.n_layers
  assert [e["layer"] for e in res["layers"]] == list(range(n - 1))  # resid_post: the last block never reaches
  assert res["compare_layers"] == [1] and res["site"] == "resid_post.1"
  s = len(TOY_SCALES["scales"])
  for e in res["layers"]:
    ot = e["offtarget"]
    assert {"r", "slope", "ci", "p", "n_pairs", "shuffled_labels"} <= set(ot)
    assert e["n_pairs"] == s * (s - 1) == ot["n_pairs"]
    assert -1 <= ot["r"] <= 1 and len(ot["ci"]["r"]) == 2
    assert len(e["on_target_per_unit"]["per_scale"]) == s and e["site_norm"] > 0
  assert res["layers_grid"]["rows"] == (n - 1) * len(WORDS) * s * 2
  assert set(res["layers_trend"]) == {"r", "slope", "on_target_per_unit"}
  # Blocks differ, so the per-block comparison below can fail.
  assert len({round(e["offtarget"]["r"], 6) for e in res["layers"]}) == n - 1


def test_each_layers_entry_equals_a_single_layer_run(model, scales_file, layers_run):
  """The entry of block L is what ``--layer=L`` reports: the compare run is one, another run the other."""
  by_layer = {e["layer"]: e for e in layers_run["layers"]}
  checks = [(1, layers_run)]
  alone = steer.run_steer(model, _opts(scales_file, layers="", layer=2), progress=False)
  checks.append((2, alone))
  for layer, single in checks:
    entry = by_layer[layer]
    for key in ("r", "slope", "intercept"):
      np.testing.assert_allclose(entry["offtarget"][key], single["offtarget"][key], atol=1e-4)
    np.testing.assert_allclose(entry["offtarget"]["ci"]["r"], single["offtarget"]["ci"]["r"], atol=1e-3)
    assert entry["site_norm"] == pytest.approx(single["site_norm"], rel=1e-6)


def test_on_target_per_unit_and_depth_trend():
  e = np.zeros((5, 2, 2, 3))
  e[:, 0, :, 0] = np.array([-1.0, 1.0]) * 2.0  # scale 0 moves its column 2 per unit strength
  e[:, 1, :, 2] = np.array([-1.0, 1.0]) * 4.0
  out = offtarget_depth.on_target_per_unit(e, [-1.0, 1.0], [0, 2], 0, n_boot=20)
  assert out["per_scale"] == [2.0, 4.0] and out["mean"] == 3.0 and out["ci"] == [3.0, 3.0]
  grows = offtarget_depth.depth_trend(range(8), [0.1, 0.2, 0.25, 0.5, 0.55, 0.6, 0.62, 0.7])
  assert grows["spearman_rho"] == pytest.approx(1.0) and grows["direction"] == "grows"
  assert grows["p_value"] == pytest.approx(2 / 40320, abs=2e-3) and grows["n_layers"] == 8
  shrinks = offtarget_depth.depth_trend(range(8), [0.9, 0.8, 0.85, 0.5, 0.4, 0.3, 0.35, 0.1])
  assert shrinks["spearman_rho"] < -0.9 and shrinks["direction"] == "shrinks"
  flat = offtarget_depth.depth_trend(range(8), [0.3, 0.5, 0.2, 0.6, 0.1, 0.5, 0.3, 0.4])
  assert flat["direction"] == "no clear trend" and flat["p_value"] > 0.05
  assert offtarget_depth.depth_trend([0, 1, 2], [0.5, None, 0.1])["spearman_rho"] is None


def test_write_steer_over_layers_writes_figures_and_digest_line(model, layers_run, scales_file, tmp_path):
  opts = _opts(scales_file, compare_layers="1")
  path = writers.write_steer(tmp_path, layers_run, model, opts)
  doc = json.loads(path.read_text())
  assert [e["layer"] for e in doc["layers"]] == doc["provenance"]["layers"] == [0, 1, 2]
  for name in ("steer_layers.png", "steer_layers_on_target.png", "offtarget.png"):
    _assert_png(tmp_path / name)
  line = writers.steer_digest(layers_run)[0]
  assert line.startswith("off-target r by layer: L0 ") and "Spearman rho of r on layer = " in line


@pytest.mark.parametrize("kw,needles", [
    (dict(layers="0,x"), ["--layers=0,x", "comma-separated"]),
    (dict(layers="0,3"), ["block 3 is out of range", "0..2"]),
    (dict(layers="all", site="embed"), ["--site=embed"]),
    (dict(layers="0", layer=0), ["--layer=0", "give one"]),
    (dict(layers="0,1", compare_layers="2"), ["block 2 is not among"]),
    (dict(layers="", compare_layers="1"), ["applies with --layers"]),
    (dict(layers="all", readout="representation"), ["--readout=representation"]),
])
def test_bad_layers_are_one_clear_error(model, scales_file, kw, needles):
  opts = dataclasses.replace(_opts(scales_file), **kw)
  with pytest.raises(InputError) as e:
    steer_layers.check_layers(opts, model.config.n_layers)
  for needle in needles:
    assert needle in str(e.value)
  assert steer_layers.check_layers(_opts(scales_file, layers="2,0,0"), 4) == ((0, 2), (0,))
  every = _opts(scales_file, site="resid_pre", compare_layers="all")
  assert steer_layers.check_layers(every, 4) == ((0, 1, 2, 3),) * 2


@pytest.mark.slow
def test_steer_launcher_over_layers_writes_summary_and_figure(word_model, tmp_path):
  out = tmp_path / "steer"
  proc = _run("launch.steer", f"--model={word_model}", "--site=resid_pre", "--layers=all", "--n_words=12",
              "--alphas=-1,1", "--method=plain", "--n_random=0", "--n_boot=20", "--n_perm=20",
              "--config.steer.rating_check=false", "--heldout_template=", f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  doc = json.loads((out / "summary.json").read_text())
  assert [e["layer"] for e in doc["layers"]] == [0, 1] and doc["compare_layers"] == [0]
  assert doc["site"] == "resid_pre.0" and doc["offtarget"]["n_pairs"] == doc["layers"][0]["n_pairs"]
  _assert_png(out / "steer_layers.png")
  assert "off-target r by layer: L0 " in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("value,needle", [("0,9", "out of range"), ("1;2", "comma-separated")])
def test_steer_launcher_bad_layers_is_one_line_before_loading(word_model, tmp_path, value, needle):
  out = tmp_path / "steer"
  proc = _run("launch.steer", f"--model={word_model}", "--site=resid_post", f"--layers={value}",
              f"--out_dir={out}")
  assert proc.returncode == 2
  _assert_one_line_error(proc, f"--layers={value}", needle)
  assert not out.exists()  # refused before the out_dir is claimed and the model loads
