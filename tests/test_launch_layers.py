"""`python -m launch.layers` on the tiny word model: outputs, digest and one-line user errors."""

import json

import pytest

from tests.test_launch import _assert_one_line_error, _run  # shared subprocess helpers

_SMALL = ("--n_words=150", "--stats_sample=32", "--n_boot=10", "--n_null=10", "--n_tag_perms=10")


@pytest.mark.slow
def test_layers_launcher_writes_summary_figures_and_report(word_model, tmp_path):
  out = tmp_path / "layers"
  proc = _run("launch.layers", f"--model={word_model}", *_SMALL, f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "layers: words in every template" in proc.stderr and "sequences/s" in proc.stderr
  assert "best site per column" in proc.stdout and "warriner:valence" in proc.stdout
  assert "wrote" in proc.stdout
  doc = json.loads((out / "summary.json").read_text())
  assert doc["job"] == "layers" and len(doc["templates"]) == 3
  n_layers = 2  # the word model's blocks
  sites = ["input_embedding", "embed", "resid_post.0", "resid_post.1", "final", "unembedding"]
  assert [p["site"] for p in doc["layers"]] == sites == doc["sites"]
  assert len(doc["layers"]) == n_layers + 4
  for p in doc["layers"]:
    assert {"layer", "space", "alignment", "probe_r", "pca_cumulative", "epa_congruence",
            "participation_ratio"} <= set(p)
    assert {r["column"] for r in p["alignment"]} == {"valence", "arousal", "dominance"}
  assert set(doc["best"]) == {"warriner:valence", "warriner:arousal", "warriner:dominance"}
  best = doc["best"]["warriner:valence"]
  assert best["site"] in sites[1:-1] and len(best["pearson_ci"]) == 2  # a site of the residual stream
  prov = doc["provenance"]
  assert prov["model"]["name_in_file"] == "word-model" and prov["options"]["n_words"] == 150
  assert prov["config"]["layers"]["stats_sample"] == 32 and prov["statistics"]["tokens"] == 32
  for name in ("layers_alignment.png", "layers_pca.png", "layers_congruence.png"):
    assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
  page = (out / "report.html").read_text()
  assert "layers_alignment.png" in page and "data:image/png;base64," in page


@pytest.mark.slow
@pytest.mark.parametrize("args,needles", [
    (["--templates=The word {word}", "--templates=A {word}"], ["--templates", "at least 3"]),
    (["--templates=The word {word}", "--templates=A {word}", "--templates=no slot"], ["'no slot'", "{word}"]),
    (["--norms=nosuchnorm"], ["nosuchnorm"]),
    (["--method=semaxis"], ["semaxis"]),
    (["--align_scales=/nonexistent/scales.json"], ["/nonexistent/scales.json"]),
], ids=["two-templates", "template-without-slot", "unknown-norms", "semaxis", "missing-scales-file"])
def test_user_errors_give_one_line_and_write_nothing(word_model, tmp_path, args, needles):
  out = tmp_path / "out"
  proc = _run("launch.layers", f"--model={word_model}", *_SMALL, f"--out_dir={out}", *args)
  _assert_one_line_error(proc, *needles)
  assert not out.exists() or not list(out.iterdir())
