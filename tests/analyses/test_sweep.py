"""Whole-vocabulary sweep: the zarr matrix, its spectra, sharding, and the embedded models."""

import json

import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.analyses import lexicon, sweep
from jaxsem.errors import InputError
from jaxsem.kernels import zarr_out
from jaxsem.report import writers
from tests.analyses import toy_model

TOY_SCALES = {"name": "toy", "scales": [
    {"name": "kind-cruel", "positive": ["kind"], "negative": ["cruel"]},
    {"name": "good-bad", "positive": ["good"], "negative": ["bad"]},
    {"name": "hot-cold", "positive": ["hot"], "negative": ["cold"]},
    {"name": "happy-sad", "positive": ["Happy"], "negative": ["SAD"]},
    {"name": "ice-cream", "positive": ["ice", "the"], "negative": ["cream"]},
    {"name": "word-un", "positive": ["word"], "negative": ["un"]}]}


def _toy_model(mesh=None):
  return toy_model(mesh, seed=0, embed_offset=0.3)  # a large vocabulary mean


def _numpy_corr_ratios(p):
  lam = np.sort(np.clip(np.linalg.eigvalsh(np.corrcoef(p, rowvar=False)), 0, None))[::-1]
  return lam / lam.sum()


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
  path = tmp_path_factory.mktemp("scales") / "toy.json"
  path.write_text(json.dumps(TOY_SCALES))
  opts = sweep.SweepOptions(scales=str(path), norms=(), chunk_rows=64, policy="single")
  out = {}
  for name, mesh in (("plain", None), ("sharded", sharding.make_mesh("data:2,model:4"))):
    d = tmp_path_factory.mktemp(name)
    out[name] = (sweep.run_sweep(_toy_model(mesh), opts, d), d)
  return out


def test_toy_matrix_is_the_cosine_projection_of_the_centred_vocabulary(toy_runs):
  result, out = toy_runs["plain"]
  model = _toy_model()
  store = zarr_out.open_for_read(out / sweep.ZARR_NAME)
  got = store.read().result()
  assert got.shape == (250, 6) and result["n_directions"] == 6
  assert zarr_out.attributes(out / sweep.ZARR_NAME)["columns"] == [s["name"] for s in TOY_SCALES["scales"]]
  # Independent recomputation: rows of the scaled embedding, centred, pole means, cosine.
  e = np.asarray(model.params["embed"], np.float64)[:250] * model.config.embed_scale
  e -= e.mean(0)
  wt = lexicon.resolve_words(model.tokenizer, ["kind", "cruel", "good", "bad", "hot", "cold", "Happy", "SAD",
                                                "ice", "the", "cream", "word", "un"])
  row = {w: ids[0] for w, ids in zip(wt.used_words, wt.used_token_ids)}
  dirs = np.stack([e[[row[w] for w in s["positive"]]].mean(0) - e[[row[w] for w in s["negative"]]].mean(0)
                   for s in TOY_SCALES["scales"]])
  want = (e @ dirs.T) / np.linalg.norm(e, axis=1, keepdims=True) / np.linalg.norm(dirs, axis=1)
  np.testing.assert_allclose(got, want, atol=1e-5)
  ratios = result["spectra"]["antonym"]["explained_variance_ratio"]
  np.testing.assert_allclose(ratios, _numpy_corr_ratios(want)[:len(ratios)], atol=1e-5)
  assert result["spectra"]["gaussian"]["n_directions"] == 6 == result["spectra"]["token_pairs"]["n_directions"]
  assert set(result["control"]) == {"whitened"} and result["control"]["whitened"]["space"]["whitened"]


def test_toy_sweep_sharded_equals_unsharded(toy_runs):
  (a, da), (b, db) = toy_runs["plain"], toy_runs["sharded"]
  np.testing.assert_allclose(zarr_out.open_for_read(db / sweep.ZARR_NAME).read().result(),
                             zarr_out.open_for_read(da / sweep.ZARR_NAME).read().result(), atol=1e-5)
  for name in a["spectra"]:
    np.testing.assert_allclose(b["spectra"][name]["explained_variance_ratio"],
                               a["spectra"][name]["explained_variance_ratio"], atol=1e-4)


def test_bad_options_fail_before_writing(tmp_path):
  model = _toy_model()
  with pytest.raises(InputError, match="--layers: 9 is out of range"):
    sweep.run_sweep(model, sweep.SweepOptions(space="hidden", norms=(), layers="9"), tmp_path)
  with pytest.raises(InputError, match="unknown baseline 'shuffled'"):
    sweep.run_sweep(model, sweep.SweepOptions(baselines=("shuffled",), norms=()), tmp_path)
  with pytest.raises(InputError, match="nosuchnorm"):
    sweep.run_sweep(model, sweep.SweepOptions(norms=("nosuchnorm",)), tmp_path)
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_smollm2_sweep_spectra_match_numpy_on_the_written_matrix(embedded_models, tmp_path):
  """osgood28 on SmolLM2: the antonym spectrum equals numpy's PCA of the matrix read back from
  zarr, and the rated-words spectrum equals numpy's PCA of the rated words' rows of it."""
  model = embedded_models("smollm2-135m-instruct")
  opts = sweep.SweepOptions(scales="osgood28", policy="single", chunk_rows=4096, whitening_control=False)
  result = sweep.run_sweep(model, opts, tmp_path)
  p = zarr_out.open_for_read(tmp_path / sweep.ZARR_NAME).read().result()
  assert p.shape == (model.config.vocab_size, 28) and np.isfinite(p).all()
  ant = result["spectra"]["antonym"]
  np.testing.assert_allclose(ant["explained_variance_ratio"], _numpy_corr_ratios(p)[:20], atol=1e-5)
  from jaxsem.io import norms
  words, _ = norms.read_norms("warriner")
  wt = lexicon.resolve_words(model.tokenizer, words, "single")
  rows = np.array([ids[0] for ids in wt.used_token_ids])
  rated = result["rated_words"]["warriner"]
  assert rated["n_words"] == len(rows)
  np.testing.assert_allclose(rated["explained_variance_ratio"], _numpy_corr_ratios(p[rows])[:20], atol=1e-5)
  assert result["zarr"]["shape"] == [model.config.vocab_size, 28]
  # Gaussian directions in 576 dimensions: no 3-component collapse.
  assert result["spectra"]["gaussian"]["cumulative_1_2_3"][2] < ant["cumulative_1_2_3"][2]
  path = writers.write_sweep(tmp_path, result, model, opts)
  doc = json.loads(path.read_text())
  assert doc["job"] == "sweep" and doc["provenance"]["policy"] == "single"
  assert doc["provenance"]["coverage"]["scales"] == 1.0 and "warriner" in doc["provenance"]["coverage"]
  assert doc["provenance"]["space"]["centred"] is True and doc["provenance"]["model"]["name"] == model.provenance["name"]
  assert (tmp_path / "cumulative.png").stat().st_size > 1000
  lines = writers.sweep_digest(result)
  assert "49152 tokens x 28 directions" in lines[0] and any("gaussian" in ln for ln in lines)
