"""Progress of the steering stages: the Jacobian in column chunks and the fit's optax steps,
each reported as it goes and equal, bit for bit, to the work done in one piece."""

import types

import numpy as np

from jaxsem.analyses import grid as grid_lib
from jaxsem.analyses import readouts, steering_methods
from jaxsem.models.model import Model
from jaxsem.progress import Progress
from tests import toy
from tests.analyses import toy_tokenizer

WORDS = ("kind", "cruel", "good", "bad", "hot", "cold", "ice", "cream", "word")
PAIRS = (("kind", "cruel"), ("good", "bad"), ("hot", "cold"), ("ice", "cream"), ("word", "the"))
SCALES = [types.SimpleNamespace(name=f"{p}-{n}", positive=[p], negative=[n], factor=None) for p, n in PAIRS]


def _grid():
  cfg = toy.CONFIGS["gemma3"]()
  model = Model(config=cfg, params=toy.params_for(cfg, seed=1), tokenizer=toy_tokenizer(),
                provenance={"name": "toy"}, mesh=None)
  ids = [model.tokenizer.encode(" " + w, add_special_tokens=False) for w in WORDS]
  prompts = readouts.build_prompts(model.tokenizer, readouts.DEFAULT_TEMPLATE, ids)
  readout = readouts.logodds_readout(model.tokenizer, SCALES)
  return grid_lib.Grid(model, prompts, readout, "embed", batch_size=4)


def test_jacobian_column_chunks_report_progress_and_equal_one_call(monkeypatch, tmp_path):
  g = _grid()
  rows = np.array([0, 3, 5, 6, 8])
  monkeypatch.setattr(grid_lib, "_JACOBIAN_COLUMNS", 8)
  whole = grid_lib.jacobian(g, rows)  # all 5 columns in one call
  monkeypatch.setattr(grid_lib, "_JACOBIAN_COLUMNS", 2)  # 3 calls of 2 columns (the last padded)
  seen = []
  chunked = grid_lib.jacobian(g, rows, progress=lambda *a: seen.append(a))
  np.testing.assert_array_equal(chunked, whole)
  assert seen == [(8, 25), (16, 25), (20, 25), (22, 25), (24, 25), (25, 25)]  # 4 words, then 1, x 5 columns
  # A run taking batches from the checkpoint counts them as resumed gradients.
  grid_lib.jacobian(g, rows, checkpoint_dir=tmp_path)
  bar = Progress("jacobian", 25, unit="gradients", enabled=False)
  np.testing.assert_array_equal(grid_lib.jacobian(g, rows, checkpoint_dir=tmp_path, progress=bar), whole)
  assert bar.resumed == 25 and bar.done == 25


def test_fit_reports_every_step_and_the_fit_is_unchanged():
  rng = np.random.default_rng(0)
  jac = rng.normal(size=(12, 4, 16))
  plain = rng.normal(size=(2, 16))
  kw = dict(steps=30, off_weight=3.0, ridge=0.01)
  seen = []
  v, report = steering_methods.fit_vectors(jac, plain, [0, 2], progress=lambda *a: seen.append(a), **kw)
  assert seen == [(i, 30) for i in range(1, 31)]
  quiet, quiet_report = steering_methods.fit_vectors(jac, plain, [0, 2], **kw)
  np.testing.assert_array_equal(v, quiet)
  assert report == quiet_report and sum(report["loss_end"]) < sum(report["loss_start"])
