"""`python -m launch.geometry` on the tiny word model: outputs, digest and one-line user errors."""

import json

import pytest

from tests.test_launch import _assert_one_line_error, _run  # shared subprocess helpers

_SMALL = ("--n_boot=10", "--n_perm=20", "--norms=warriner,dal")  # tables the word model spells


@pytest.mark.slow
def test_geometry_launcher_writes_summary_and_figures(word_model, tmp_path):
  out = tmp_path / "geometry"
  proc = _run("launch.geometry", f"--model={word_model}", *_SMALL, f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "geometry:" in proc.stdout and "Mantel p" in proc.stdout and "wrote" in proc.stdout
  doc = json.loads((out / "summary.json").read_text())
  assert doc["job"] == "geometry"
  assert {"human_r", "cosines", "projection_r", "relation", "pairs"} <= set(doc)
  prov = doc["provenance"]
  assert prov["options"]["n_boot"] == 10 and prov["config"]["geometry"]["n_perm"] == 20
  assert "osgood28" in doc["also"] and doc["tables"]
  for name in ("geometry_scatter.png", "geometry_matrices.png"):
    assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.slow
def test_bad_norms_give_one_line_and_write_nothing(word_model, tmp_path):
  out = tmp_path / "out"
  proc = _run("launch.geometry", f"--model={word_model}", *_SMALL, f"--out_dir={out}", "--norms=nosuchnorm")
  _assert_one_line_error(proc, "nosuchnorm")
  assert proc.returncode == 2
  assert not out.exists() or not list(out.iterdir())
