"""Figures: each writes one valid PNG atomically, sized to its content."""

import json

import numpy as np
from PIL import Image

from jaxsem.report import figures, summary


def _png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return Image.open(path).size


def test_correlation_bars_and_heatmap_and_scree_and_loadings(tmp_path):
  rng = np.random.RandomState(0)
  r = rng.uniform(-0.5, 0.8, 12)
  ci = np.stack([r - 0.1, r + 0.1], axis=1)
  labels = [f"scale{i}" for i in range(12)]
  small = _png(figures.correlation_bars(tmp_path / "a.png", labels[:3], r[:3], ci[:3], np.full(3, 0.1)))
  big = _png(figures.correlation_bars(tmp_path / "b.png", labels, r, ci, np.full(12, 0.1), probe_r=r + 0.1))
  assert big[1] > small[1]  # taller with more bars
  _png(figures.heatmap(tmp_path / "c.png", np.corrcoef(rng.randn(12, 30)), labels))
  _png(figures.scree(tmp_path / "d.png", {"model": np.array([0.5, 0.2, 0.1, 0.05]),
                                           "random": np.array([0.3, 0.25, 0.2, 0.15])}))
  _png(figures.loadings(tmp_path / "e.png", rng.uniform(-1, 1, (12, 3)), labels, ["E", "P", "A", None] * 3))
  assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_summary_has_provenance_and_is_atomic(tmp_path):
  path = summary.write(tmp_path / "out", {"x": np.float32(1.5), "arr": np.arange(3)}, seed=7)
  doc = json.loads(path.read_text())
  assert doc["x"] == 1.5 and doc["arr"] == [0, 1, 2]
  assert doc["provenance"]["seed"] == 7
  assert doc["provenance"]["versions"]["numpy"]
  assert not list((tmp_path / "out").glob(".*"))
