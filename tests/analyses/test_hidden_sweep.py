"""Hidden-state vocabulary sweep: states per site, projections, spectra, sharding, resume, refusals."""

import json
from pathlib import Path
import shutil

import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.analyses import hidden_sweep, hidden_sweep_state, spaces, sweep
from jaxsem.errors import InputError
from jaxsem.kernels import zarr_out
from tests.analyses import toy_model
from tests.analyses.test_sweep import TOY_SCALES

CONTEXT = "The word {token} ly"  # a prefix (run once, cached) and a suffix after the token
TEMPLATE = CONTEXT.replace("{token}", "{word}")
SITES = ("embed", "resid_post.0", "resid_post.2", "final")
POLES = ("kind", "cruel", "good", "bad", "hot", "cold", "Happy", "SAD", "ice", "the", "cream", "word", "un")


def _model(mesh=None):
  return toy_model(mesh, seed=0, embed_offset=0.3)


def _opts(scales, **kw):
  base = dict(scales=str(scales), space="hidden", norms=(), policy="single", layers="0,2,final,embed",
              context=CONTEXT, hidden_chunk_rows=64, store_dtype="float32", checkpoint_seconds=0.0)
  return sweep.SweepOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def reference():
  """Per site, the state of every token run alone in the template (one forward per layer, no prefix cache)."""
  model = _model()
  tokens = np.arange(model.config.vocab_size)
  out = [np.asarray(model.params["embed"], np.float32)[tokens] * model.config.embed_scale]
  for layer in (0, 2, -1):
    out.append(np.asarray(spaces.hidden_vectors(model, [(int(t),) for t in tokens], layer, TEMPLATE,
                                                batch_size=256)))
  return np.stack(out)


@pytest.fixture(scope="module")
def scales(tmp_path_factory):
  path = tmp_path_factory.mktemp("scales") / "toy.json"
  path.write_text(json.dumps(TOY_SCALES))
  return path


@pytest.fixture(scope="module")
def runs(scales, tmp_path_factory):
  out = {}
  for name, mesh in (("plain", None), ("sharded", sharding.make_mesh("data:2,model:4"))):
    d = tmp_path_factory.mktemp(name)
    out[name] = (sweep.run_sweep(_model(mesh), _opts(scales), d), d)
  return out


def test_states_at_every_site_equal_per_layer_forward_runs(reference):
  model = _model()
  got = hidden_sweep.token_states(model, np.arange(250), SITES, CONTEXT, chunk=128)
  assert got.shape == (4, 250, model.config.d_model)
  np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)


def _numpy_projections(model, reference, centre_tokens):
  """Per site, plain numpy: states centred by the mean over ``centre_tokens``, pole-mean directions
  of the toy scales from those centred states, cosine scores -> ``[site, token, scale]``."""
  from jaxsem.analyses import lexicon

  states = reference.astype(np.float64)
  states -= states[:, centre_tokens].mean(axis=1, keepdims=True)
  wt = lexicon.resolve_words(model.tokenizer, list(POLES), "single")
  row = {w: ids[0] for w, ids in zip(wt.used_words, wt.used_token_ids)}
  out = []
  for e in states:
    dirs = np.stack([e[[row[w] for w in sc["positive"]]].mean(0) - e[[row[w] for w in sc["negative"]]].mean(0)
                     for sc in TOY_SCALES["scales"]])
    out.append((e @ dirs.T) / np.linalg.norm(e, axis=1, keepdims=True) / np.linalg.norm(dirs, axis=1))
  return np.stack(out)


def test_projections_equal_numpy_projection_of_the_centred_states(runs, reference):
  result, out = runs["plain"]
  model = _model()
  got = zarr_out.open_for_read(out / sweep.ZARR_NAME).read().result()
  assert got.shape == (4, 250, 6) and got.dtype == np.float32
  assert result["layers"] == list(SITES) and result["zarr"]["axes"] == ["site", "token", "direction"]
  attrs = zarr_out.attributes(out / sweep.ZARR_NAME)
  assert attrs["sites"] == list(SITES) and attrs["columns"] == [s["name"] for s in TOY_SCALES["scales"]]
  wants = _numpy_projections(model, reference, np.arange(250))  # every vocabulary token: the exact mean
  for s, site in enumerate(SITES):
    want = wants[s]
    np.testing.assert_allclose(got[s], want, atol=1e-5, err_msg=site)
    lam = np.sort(np.clip(np.linalg.eigvalsh(np.corrcoef(want, rowvar=False)), 0, None))[::-1]
    ratios = result["sites"][s]["spectra"]["antonym"]["explained_variance_ratio"]
    np.testing.assert_allclose(ratios, (lam / lam.sum())[:len(ratios)], atol=1e-4, err_msg=site)
    assert set(result["sites"][s]["spectra"]) == {"antonym", "gaussian", "token_pairs"}
  assert result["spectra"] == result["sites"][-1]["spectra"]


def test_stats_sample_is_every_token_or_a_seeded_uniform_sample():
  np.testing.assert_array_equal(hidden_sweep.stats_sample(250, 0, 0), np.arange(250))
  np.testing.assert_array_equal(hidden_sweep.stats_sample(250, 250, 0), np.arange(250))
  got = hidden_sweep.stats_sample(250, 100, 3)
  assert len(np.unique(got)) == 100 and np.all(np.diff(got) > 0) and got.min() >= 0 and got.max() < 250
  np.testing.assert_array_equal(got, hidden_sweep.stats_sample(250, 100, 3))
  assert not np.array_equal(got, hidden_sweep.stats_sample(250, 100, 4))
  # Uniform: over many seeds every id is drawn about equally often (100/250 of the time).
  draws = [hidden_sweep.stats_sample(250, 100, s) for s in range(400)]
  counts = np.bincount(np.concatenate(draws), minlength=250)
  assert abs(counts.mean() - 160) < 1e-9 and counts.min() > 110 and counts.max() < 210


def test_a_sampled_centre_is_the_mean_of_the_sampled_tokens_states(scales, reference, tmp_path):
  """With --hidden_stats_sample below the tokens swept, each site is centred by the mean of the
  sampled tokens' states (numpy on the same sample), and summary says so."""
  model = _model()
  result = sweep.run_sweep(model, _opts(scales, hidden_stats_sample=100, seed=5), tmp_path)
  got = zarr_out.open_for_read(tmp_path / sweep.ZARR_NAME).read().result()
  wants = _numpy_projections(model, reference, hidden_sweep.stats_sample(250, 100, 5))
  for s, site in enumerate(SITES):
    np.testing.assert_allclose(got[s], wants[s], atol=1e-5, err_msg=site)
  stats = result["statistics"]
  assert stats["tokens"] == 100 and stats["exact"] is False and stats["sample_seed"] == 5
  assert "100 of the 250" in stats["what"]
  assert result["space"]["stats_tokens"] == 100


def test_every_stage_prints_progress(scales, capsys):
  """Statistics, the pole words' states, the directions per site and the projection each print a
  first and a last progress line (a long stage is never silent)."""
  sweep.run_sweep(_model(), _opts(scales, write_zarr=False, whitening_control=False), None)
  err = capsys.readouterr().err.splitlines()
  for stage, unit in (("statistics", "tokens"), ("pole words' states", "words"), ("directions", "sites"),
                      ("", "tokens")):
    lines = [ln for ln in err if f"hidden sweep {Path(str(scales)).stem}: {stage}" in ln or
             (not stage and ln.startswith("sweep "))]
    assert lines and " 0/" in lines[0] and "(100.0%)" in lines[-1] and unit in lines[-1], (stage, err[:20])


def test_sharded_over_eight_devices_equals_one(runs):
  (a, da), (b, db) = runs["plain"], runs["sharded"]
  np.testing.assert_allclose(zarr_out.open_for_read(db / sweep.ZARR_NAME).read().result(),
                             zarr_out.open_for_read(da / sweep.ZARR_NAME).read().result(), atol=1e-5)
  for sa, sb in zip(a["sites"], b["sites"]):
    for name in sa["spectra"]:
      np.testing.assert_allclose(sb["spectra"][name]["explained_variance_ratio"],
                                 sa["spectra"][name]["explained_variance_ratio"], atol=1e-4)


def test_a_run_stopped_after_two_blocks_resumes_to_the_same_bytes(runs, scales, tmp_path, monkeypatch):
  """The sink fails at the third block (as a full disk would); the same call then computes only the
  two blocks after the checkpoint and the array and spectra equal an uninterrupted run's."""
  ref, ref_dir = runs["plain"]
  write = hidden_sweep_state._Store.write

  def failing(self, start, block):
    if start >= 128:
      raise InputError("disk full")
    write(self, start, block)

  monkeypatch.setattr(hidden_sweep_state._Store, "write", failing)
  with pytest.raises(InputError, match="disk full"):
    sweep.run_sweep(_model(), _opts(scales), tmp_path)
  state = json.loads((tmp_path / sweep.ZARR_NAME / zarr_out.STATE_NAME).read_text())
  assert state["done"] == [0, 64] and not zarr_out.is_complete(tmp_path / sweep.ZARR_NAME)
  monkeypatch.setattr(hidden_sweep_state._Store, "write", write)
  result = sweep.run_sweep(_model(), _opts(scales), tmp_path)
  assert result["zarr"]["resumed"] == {"chunks_skipped": 2, "chunks_computed": 2}
  assert result["statistics"]["pass"]["resumed"] == {"chunks_skipped": 4, "chunks_computed": 0}
  np.testing.assert_array_equal(zarr_out.open_for_read(tmp_path / sweep.ZARR_NAME).read().result(),
                                zarr_out.open_for_read(ref_dir / sweep.ZARR_NAME).read().result())
  for sa, sb in zip(ref["sites"], result["sites"]):
    assert sa["spectra"] == sb["spectra"]
  # The array deleted, the checkpoints kept: a new array has none of their blocks, so all are computed.
  shutil.rmtree(tmp_path / sweep.ZARR_NAME)
  again = sweep.run_sweep(_model(), _opts(scales), tmp_path)
  assert again["zarr"]["resumed"] == {"chunks_skipped": 0, "chunks_computed": 4}
  np.testing.assert_array_equal(zarr_out.open_for_read(tmp_path / sweep.ZARR_NAME).read().result(),
                                zarr_out.open_for_read(ref_dir / sweep.ZARR_NAME).read().result())


def test_float16_by_default_and_size_refused_when_the_disk_is_short(scales, tmp_path, monkeypatch):
  opts = _opts(scales, store_dtype="auto")
  result = sweep.run_sweep(_model(), opts, tmp_path / "a")
  store = zarr_out.open_for_read(tmp_path / "a" / sweep.ZARR_NAME)
  assert result["store_dtype"] == "float16" and store.dtype.numpy_dtype == np.float16
  assert store.shape == (4, 250, 6) and result["zarr"]["gigabytes"] == round(4 * 250 * 6 * 2 / 1e9, 3)

  class Usage:
    free = 1000

  monkeypatch.setattr(hidden_sweep.shutil, "disk_usage", lambda path: Usage)
  with pytest.raises(InputError, match="--layers.*--store_dtype.*--write_zarr=false"):
    sweep.run_sweep(_model(), opts, tmp_path / "b")
  assert not (tmp_path / "b" / sweep.ZARR_NAME).exists()


@pytest.mark.parametrize("kw, message", [
    ({"layers": "0,9"}, "--layers: 9 is out of range"),
    ({"layers": "middle"}, "--layers: 'middle' is not a layer"),
    ({"context": "no slot"}, "--context='no slot' must contain the slot"),
    ({"method": "semaxis"}, "--method='semaxis' does not apply"),
    ({"store_dtype": "int8"}, "--store_dtype='int8' is not known"),
    ({"hidden_chunk_rows": 63}, "must be a multiple of 2"),
])
def test_bad_hidden_options_are_one_line(scales, tmp_path, kw, message):
  mesh = sharding.make_mesh("data:2,model:4") if "hidden_chunk_rows" in kw else None
  with pytest.raises(InputError, match=message.replace("(", r"\(")):
    sweep.run_sweep(_model(mesh), _opts(scales, **kw), tmp_path)
  assert not list(tmp_path.iterdir())


def test_parse_layers():
  assert hidden_sweep.parse_layers("all", 3) == ("embed", "resid_post.0", "resid_post.1", "resid_post.2")
  assert hidden_sweep.parse_layers("final,1,embed,1,-1", 3) == ("embed", "resid_post.1", "final")


def test_static_sweep_refuses_other_store_dtypes(tmp_path):
  with pytest.raises(InputError, match="stores float32 only"):
    sweep.run_sweep(_model(), sweep.SweepOptions(norms=(), store_dtype="float16"), tmp_path)
