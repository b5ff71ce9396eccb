"""Alignment and structure end to end: experiments, writers and launchers on the embedded models."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxsem
from jaxsem.analyses import experiments, lexicon
from jaxsem.io import norms
from jaxsem.io import scales as scales_io
from jaxsem.report import writers

from tests.test_launch import _assert_one_line_error, _run  # shared subprocess helpers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.size[0] > 100 and im.size[1] > 100


def _assert_provenance(doc, model_name, opts, scales_file):
  prov = doc["provenance"]
  assert prov["model"]["name"] == model_name
  assert prov["space"]["name"] == opts.space and prov["space"]["centred"] is opts.centre
  assert prov["layer"] == opts.layer
  assert prov["centred"] is opts.centre and prov["whitened"] is opts.whiten
  assert prov["policy"] == opts.policy and prov["seed"] == opts.seed
  assert prov["scales_file"].endswith(scales_file)
  for norm in opts.norms:
    assert prov["coverage"][norm]["policy"] == opts.policy
    assert opts.min_coverage <= prov["coverage"][norm]["coverage"] <= 1
  assert prov["directions"]["sign"] == "positive pole minus negative pole"
  assert prov["options"]["scales"] == opts.scales and prov["options"]["norms"] == list(opts.norms)
  assert prov["versions"]["jax"] and prov["versions"]["numpy"]


@pytest.fixture(scope="module")
def gemma():
  return jaxsem.load("gemma3-270m")


@pytest.mark.slow
def test_align_end_to_end_on_gemma(gemma, tmp_path):
  """Valence tracks Warriner valence above its null; the figure and summary.json carry provenance.

  The valence row is recomputed with plain numpy from the embedding rows: pole means, centring
  with the vocabulary mean, cosine projection, correlation over the rated words.
  """
  opts = experiments.Options(scales="norms", norms=("warriner",), n_boot=50, n_null=50, n_null_pairs=30)
  result = experiments.run_align(gemma, opts)
  path = writers.write_align(tmp_path, result, gemma, opts)
  assert path == tmp_path / "summary.json"
  _assert_png(tmp_path / "align_warriner.png")
  doc = json.loads(path.read_text())
  assert doc["job"] == "align"
  _assert_provenance(doc, "gemma3-270m", opts, "norms.json")
  rows = doc["results"]
  assert len(rows) == 12 * 3  # scales x warriner columns
  row = next(r for r in rows if r["scale"] == "valence" and r["column"] == "valence")
  assert row["scale_norm_tag"] == "warriner:valence" and row["matches_tag"] and row["factor"] == "E"
  assert row["ci_resampling"] == "words+pole_words" and row["leave_one_pole_out"] is not None
  assert row["pearson"] > row["null_p95"] and row["pearson"] > 0.4
  assert row["p_value"] == pytest.approx(1 / 51)
  assert row["pairs_null_p95"] is not None and row["pearson"] > row["pairs_null_p95"]
  assert row["pearson_ci"][0] <= row["pearson"] <= row["pearson_ci"][1]
  # Resampling the pole words too widens the interval over the words-only one.
  assert row["pearson_ci"][1] - row["pearson_ci"][0] > row["pearson_ci_words"][1] - row["pearson_ci_words"][0]
  assert 0 < row["probe_r"] <= 1 and row["share_of_probe"] == pytest.approx(row["pearson"] / row["probe_r"])
  assert set(doc["nulls"]) >= {"warriner:valence:random", "warriner:valence:wordnet_pairs"}
  assert doc["nulls"]["warriner:valence:random"]["n"] == 50

  # Independent recomputation of the valence row.
  tok = gemma.tokenizer
  embed = gemma.params["embed"]
  scale = np.float32(gemma.config.embed_scale)
  mean = np.asarray(jnp.mean(embed[:gemma.config.vocab_size].astype(jnp.float32), axis=0), np.float64) * scale

  def rows_of(words):
    wt = lexicon.resolve_words(tok, words)
    ids = np.array([t[0] for t in wt.used_token_ids])
    return wt, np.asarray(embed[ids], np.float64) * scale - mean

  valence = scales_io.load_scales("norms")["valence"]
  _, pos = rows_of(valence.positive)
  _, neg = rows_of(valence.negative)
  d = pos.mean(0) - neg.mean(0)
  words, columns = norms.read_norms("warriner")
  wt, x = rows_of(words)
  y = columns["valence"][wt.used]
  ok = np.isfinite(y)
  cos = (x @ d) / (np.linalg.norm(x, axis=1) * np.linalg.norm(d))
  assert row["n"] == int(ok.sum())
  assert row["pearson"] == pytest.approx(np.corrcoef(cos[ok], y[ok])[0, 1], abs=1e-4)
  assert row["coverage"] == pytest.approx(wt.coverage)
  lines = writers.align_digest(result)
  assert lines[0].startswith("r [words and pole words resampled]")
  assert 1 <= len(lines[1:]) <= 6 and all("r=" in ln and "null95=" in ln for ln in lines[1:])


@pytest.mark.slow
def test_structure_end_to_end_on_gemma(gemma, tmp_path):
  """Structure writes summary.json (with the whitening control and provenance) and three valid PNGs."""
  opts = experiments.Options(scales="osgood28", norms=("warriner",), n_null_pairs=10, n_pair_sets=50,
                             n_tag_perms=200)
  result = experiments.run_structure(gemma, opts)
  path = writers.write_structure(tmp_path, result, gemma, opts)
  for name in ("cosine.png", "scree.png", "loadings.png"):
    _assert_png(tmp_path / name)
  assert not list(tmp_path.glob(".*"))  # no temporary files left
  doc = json.loads(path.read_text())
  assert doc["job"] == "structure"
  _assert_provenance(doc, "gemma3-270m", opts, "osgood28.json")
  s = len(scales_io.load_scales("osgood28"))
  assert len(doc["scales"]) == s and np.asarray(doc["cosine"]["matrix"]).shape == (s, s)
  cum = doc["pca"]["cumulative_1_2_3"]
  assert len(cum) == 3 and 0 < cum[0] < cum[1] < cum[2] <= 1
  assert cum[2] > doc["random_pca"]["cumulative"][2]  # scales share more structure than random axes
  assert set(doc["pca"]["epa_congruence"]["matched"]) == {"E", "P", "A"}
  assert "wordnet_pairs_mean_abs" in doc["cosine"]["baseline"]
  assert doc["human_pca"]["columns"] == ["valence", "arousal", "dominance"]
  control = doc["control"]["whitened"]
  assert control["space"]["whitened"] is True and doc["provenance"]["whitened"] is False
  assert len(control["pca"]["cumulative_1_2_3"]) == 3
  lines = writers.structure_digest(result)
  assert lines[0].startswith("PC1-3 cumulative variance") and any("control (whitened)" in ln for ln in lines)
  # The nulls that match the claims, for the run and its whitened control.
  for block in (doc, control):
    pair = block["pair_null"]
    assert pair["n_sets"] == 50 and pair["n_pairs_per_set"] == s and pair["pool"] == "wordnet"
    assert s <= pair["pool_size"] <= len(scales_io.load_scales("wordnet"))
    assert "good-bad" in pair["excluded_scale_pairs"]  # WordNet lists good/bad too
    for f in ("cumulative_mean", "cumulative_p95", "cumulative_p05"):
      assert len(pair[f]) == 3 and all(0 < v <= 1 for v in pair[f])
    assert 0 <= pair["percentile"] <= 100 and 1 / 51 <= pair["p_value"] <= 1
    assert pair["p_at_floor"] == (pair["p_value"] == pytest.approx(1 / 51))
    epa = block["epa_null"]
    assert epa["n_perms"] == 200 and epa["factors"] == ["E", "P", "A"] and 0 < epa["observed"] <= 1
    assert epa["uniform_baseline"]["per_factor"]["E"] == pytest.approx(np.sqrt(10 / 28), abs=1e-5)
    assert "WordNet pairs" in block["conclusion"] and "shuffled tags" in block["conclusion"]
  assert doc["pair_null"]["observed"] == pytest.approx(cum[2])
  matched = [abs(m["congruence"]) for m in doc["pca"]["epa_congruence"]["matched"].values()]
  assert doc["epa_null"]["observed"] == pytest.approx(np.mean(matched), abs=1e-5)
  st = doc["settings"]
  assert st["pca"]["standardised"] is True and st["pca"]["k"] == 3
  assert st["varimax"]["normalisation"] == "kaiser" and st["pair_null"]["n_sets"] == 50
  assert st["pair_null"]["policy"] == opts.policy and st["epa_null"]["n_perms"] == 200


@pytest.mark.slow
def test_structure_launcher_writes_summary_and_figures(word_model, tmp_path):
  """`python -m launch.structure` exits 0 and writes summary.json and three PNGs (on the tiny word
  model: the launcher's plumbing and defaults are tested here, the analysis on Gemma above)."""
  out = tmp_path / "structure"
  proc = _run("launch.structure", f"--model={word_model}", "--n_null_pairs=20", f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "PC1-3 cumulative variance" in proc.stdout and "wrote" in proc.stdout
  doc = json.loads((out / "summary.json").read_text())
  assert doc["job"] == "structure"
  assert doc["provenance"]["model"]["name_in_file"] == "word-model"
  assert doc["provenance"]["options"]["n_null_pairs"] == 20
  # The launcher's defaults: 200 random WordNet-pair sets, 1000 tag permutations, for the run and its control.
  for block in (doc, doc["control"]["whitened"]):
    assert block["pair_null"]["n_sets"] == 200 and block["epa_null"]["n_perms"] == 1000
    assert block["conclusion"].startswith("3 components keep")
  assert doc["settings"]["pair_null"]["n_sets"] == 200 and doc["settings"]["varimax"]["normalisation"] == "kaiser"
  for name in ("cosine.png", "scree.png", "loadings.png"):
    _assert_png(out / name)


def _bad_scales(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps({"name": "bad", "scales": [
      {"name": "good-bad", "positive": ["good"], "negative": ["bad"]},
      {"name": "odd-scale", "positive": ["good"], "negative": ["antidisestablishmentarianism"]}]}))
  return path


@pytest.mark.slow
@pytest.mark.parametrize("launcher,args,needles", [
    ("launch.align", ["--scales=/nonexistent.json"], ["/nonexistent.json"]),
    ("launch.align", ["--norms=nosuchnorm"], ["nosuchnorm", "warriner"]),
    ("launch.structure", ["--space=hidden"], ["--layer is required", "--space=hidden"]),
    ("launch.structure", ["--space=hidden", "--layer=99"], ["--layer=99", "out of range"]),
    ("launch.align", ["--scales=BAD", "--policy=single"],
     ["odd-scale", "antidisestablishmentarianism", "--policy=single"]),
], ids=["missing-scales-file", "unknown-norms", "hidden-without-layer", "layer-out-of-range",
        "pole-word-not-one-token"])
def test_user_errors_give_one_line_and_write_nothing(word_model, tmp_path, launcher, args, needles):
  """User mistakes exit non-zero with one `error:` line, no traceback, and no summary.json."""
  out = tmp_path / "out"
  args = [a.replace("BAD", str(_bad_scales(tmp_path))) for a in args]
  proc = _run(launcher, f"--model={word_model}", "--n_null_pairs=5", "--n_boot=5", "--n_null=5",
              f"--out_dir={out}", *args)
  _assert_one_line_error(proc, *needles)
  assert not (out / "summary.json").exists()
  assert not out.exists() or not list(out.glob("*.png"))


@pytest.mark.slow
def test_sweep_launcher_writes_zarr_summary_and_figures(word_model, tmp_path):
  """`python -m launch.sweep` streams the matrix to zarr, prints progress and the digest."""
  out = tmp_path / "sweep"
  proc = _run("launch.sweep", f"--model={word_model}", "--scales=osgood28", "--chunk_rows=8192",
              f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = jaxsem.load(word_model).config.vocab_size
  assert f"sweep osgood28: {rows}/{rows} tokens (100.0%)" in proc.stderr and "tokens/s" in proc.stderr
  assert "components for 50%" in proc.stdout and "control (whitened)" in proc.stdout
  assert (out / "projections.zarr" / ".complete").is_file()
  doc = json.loads((out / "summary.json").read_text())
  assert doc["job"] == "sweep" and doc["zarr"]["shape"] == [rows, 28]
  assert doc["provenance"]["options"]["policy"] == "mean" and doc["provenance"]["seed"] == 0
  for name in ("cumulative.png", "cumulative_whitened.png"):
    _assert_png(out / name)


@pytest.mark.slow
def test_sweep_launcher_user_error_writes_nothing(word_model, tmp_path):
  out = tmp_path / "sweep"
  proc = _run("launch.sweep", f"--model={word_model}", "--norms=nosuchnorm", f"--out_dir={out}")
  _assert_one_line_error(proc, "nosuchnorm")
  assert not out.exists()
