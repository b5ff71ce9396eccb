"""Launchers: user mistakes give one clear line and a non-zero exit, never a traceback."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _assert_one_line_error(proc, *needles):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


def test_unknown_model_name(tmp_path):
  proc = _run("launch.generate", "--model=no-such-model", "--max_new_tokens=1")
  _assert_one_line_error(proc, "no-such-model", "gemma3-270m")


def test_missing_path():
  proc = _run("launch.generate", "--model=/nonexistent/model.gguf")
  _assert_one_line_error(proc, "/nonexistent/model.gguf")


def test_corrupt_gguf(tmp_path):
  bad = tmp_path / "broken.gguf"
  bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
  proc = _run("launch.generate", f"--model={bad}")
  _assert_one_line_error(proc, str(bad))


def test_bad_mesh_names_the_flag():
  proc = _run("launch.generate", "--model=smollm2-135m-instruct", "--mesh=data:3,model:5")
  _assert_one_line_error(proc, "--mesh")


@pytest.mark.slow
def test_main_job_writes_summary(word_model, tmp_path):
  """The main job's plumbing on the tiny word model: every stage runs, writes and records what it
  used. (The analyses' numbers on the real models are tested in tests/test_launch_analyses.py, the
  real models' generations against the reference in tests/models/test_parity_real.py.)"""
  out = tmp_path / "main"
  small = ["--config.align.n_boot=50", "--config.align.n_null=50", "--config.align.n_null_pairs=30",
           "--config.structure.n_pair_sets=40", "--config.structure.n_tag_perms=60",
           "--steer_words=32", "--config.steer.grid_words=12", "--config.steer.n_random=4",
           "--config.steer.fit_steps=40", "--config.steer.refine=0", "--config.steer.n_boot=50",
           "--config.steer.n_perm=50", "--config.steer.rating_check=false",
           "--config.geometry.norms=('warriner', 'dal')", "--config.geometry.n_boot=30",
           "--config.geometry.n_perm=50", "--config.layers.n_words=100", "--config.layers.stats_sample=32",
           "--config.layers.n_boot=30", "--config.layers.n_null=30"]
  proc = _run("launch.main", f"--models={word_model}", f"--out_dir={out}", "--max_new_tokens=3",
              "--prompt=The capital of France is", *small)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json

  model_dir = out / "words"  # the model's name: the file's stem
  doc = json.loads((model_dir / "summary.json").read_text())
  prov = doc["provenance"]
  assert prov["model"]["name"] == "words" and prov["model"]["name_in_file"] == "word-model"
  assert prov["model"]["tied_embeddings"] is True
  assert prov["versions"]["jax"]
  generation = doc["generations"][0]
  assert generation["prompt"] == "The capital of France is" and generation["max_new_tokens"] == 3
  assert repr(generation["continuation"]) in proc.stdout
  align = json.loads((model_dir / "align" / "summary.json").read_text())
  assert align["provenance"]["policy"] == "single" and align["results"]
  structure = json.loads((model_dir / "structure" / "summary.json").read_text())
  assert len(structure["pca"]["cumulative_1_2_3"]) == 3
  for png in ("cosine.png", "scree.png", "loadings.png"):
    assert (model_dir / "structure" / png).stat().st_size > 1000
  assert "Tucker congruence" in proc.stdout
  # What a reviewer needs (issue: results a reviewer would accept): both intervals, the pair
  # and tag nulls with their conclusion, the disjoint readout and the direct path, provenance.
  row = next(r for r in align["results"] if r["scale"] == "valence" and r["column"] == "valence")
  assert row["matches_tag"] and row["ci_resampling"] == "words+pole_words"
  assert row["pearson_ci"][0] <= row["pearson"] <= row["pearson_ci"][1]
  assert "p_adjusted" in row and align["multiple_comparisons"]
  code = align["provenance"]["code"]
  assert code["source"] in ("checkout", "package") and code["jaxsem_version"]
  assert all(len(n["sha256"]) == 64 for n in align["provenance"]["norms_files"])
  assert len(align["provenance"]["scales_sha256"]) == 64
  # The sizes asked for on the command line are the sizes used, and the resolved config is recorded.
  config = structure["provenance"]["config"]
  assert config["models"] == [word_model] and config["steer"]["n_words"] == 32
  assert structure["pair_null"]["n_sets"] == config["structure"]["n_pair_sets"] == 40
  assert 0 <= structure["pair_null"]["percentile"] <= 100
  assert structure["epa_null"]["n_perms"] == 60 and structure["conclusion"]
  assert "conclusion:" in proc.stdout
  steer = json.loads((model_dir / "steer" / "summary.json").read_text())
  for readout in ("offtarget", "offtarget_disjoint"):
    direct = steer[readout]["direct_path"]
    assert -1 <= direct["partial_r"] <= 1 and len(direct["partial_ci"]) == 2
    assert steer[readout]["ci_resampling"] == "words+steered_scales"
  assert steer["controls"]["random_directions"]["n_directions"] == 4
  assert steer["provenance"]["config"] == config and doc["provenance"]["config"] == config
  assert steer["methods"]["heldout_readout"]["reduction_vs_plain"]
  assert steer["methods"]["disjoint_readout"]["reduction_vs_plain"]
  assert steer["provenance"]["scales_file"].endswith("osgood28.json")
  assert "direct path" in proc.stdout
  geo = json.loads((model_dir / "geometry" / "summary.json").read_text())
  assert geo["relation"]["cosine"]["n_pairs"] == 15  # the 6 scales tagged with warriner and dal columns
  assert 0 < geo["relation"]["cosine"]["mantel_p"] <= 1 and "Mantel p" in proc.stdout
  layer_doc = json.loads((model_dir / "layers" / "summary.json").read_text())
  assert [p["site"] for p in layer_doc["layers"]][:2] == ["input_embedding", "embed"]
  assert len(layer_doc["layers"]) == 2 + 4  # two blocks, plus the embeddings, embed and final
  assert layer_doc["provenance"]["config"]["layers"]["n_words"] == 100
  assert "best site per column" in proc.stdout
