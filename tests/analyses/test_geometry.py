"""run_geometry on the tiny word model: keys, shapes, symmetric matrices, intervals, the report."""

import dataclasses
import json

import numpy as np
import pytest

from jaxsem.analyses import geometry, geometry_inputs
from jaxsem.analyses import scale_directions
from jaxsem.errors import InputError
from jaxsem.io import scales as scales_io
from jaxsem.models.load import load
from jaxsem.report import geometry_report


NORMS = ("warriner", "dal")  # the two smallest tables keep the run short


@pytest.fixture(scope="module")
def run(word_model):
  model = load(word_model, progress=False)
  opts = dataclasses.replace(geometry.GeometryOptions(), norms=NORMS, n_boot=20, n_perm=50)
  return model, opts, geometry.run_geometry(model, opts, progress=False)


def test_keys_shapes_and_matrices(run):
  _, _, result = run
  tagged = [s for s in scales_io.load_scales("norms") if s.norm and s.norm.split(":")[0] in NORMS]
  s = len(tagged)
  assert result["scales"] == [t.name for t in tagged] and result["columns"] == [t.norm for t in tagged]
  assert {"human_r", "cosines", "projection_r", "pairs", "relation", "also", "coverage",
          "space"} <= set(result)
  assert result["tables"] == sorted(NORMS)
  assert len(result["pairs"]) == s * (s - 1) // 2
  for key in ("human_r", "cosines", "projection_r"):
    m, ci = np.array(result[key]["matrix"]), np.array(result[key]["ci"])
    assert m.shape == (s, s) and ci.shape == (s, s, 2)
    np.testing.assert_allclose(m, m.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    assert np.all(np.abs(m) <= 1.0 + 1e-9)
    off = ~np.eye(s, dtype=bool)
    inside = (ci[..., 0] <= m + 1e-6) & (m <= ci[..., 1] + 1e-6)
    if key == "cosines":  # resampled pole means are noisier, which pulls large cosines towards 0
      assert inside[off].mean() >= 0.9
    else:
      assert inside[off].all()
  n = np.array(result["human_r"]["n"])
  assert np.all(np.array(result["projection_r"]["n"]) <= n)  # the covered words are a subset
  pair = result["pairs"][0]
  assert pair["n"] == n[0, 1] and pair["human_r"] == result["human_r"]["matrix"][0][1]


def test_relations_and_notes(run):
  _, opts, result = run
  for side in ("cosine", "projection"):
    rel = result["relation"][side]
    assert set(rel) >= {"r", "slope", "ci", "mantel_p", "n_pairs"}
    assert rel["n_pairs"] == len(result["pairs"])
    assert -1 <= rel["ci"][0] <= rel["ci"][1] <= 1
    assert 1 / (opts.n_perm + 1) <= rel["mantel_p"] <= 1
  assert result["relation"]["projection"]["ci"][0] <= result["relation"]["projection"]["r"] + 1e-6
  assert result["relation"]["projection"]["r"] <= result["relation"]["projection"]["ci"][1] + 1e-6
  if not any(s.norm for s in scales_io.load_scales("osgood28")):
    note = "osgood28: no scale carries a norm tag of warriner, dal"
    assert result["also"]["osgood28"] == {"note": note} and note in result["notes"]


def test_writer_and_digest(run, tmp_path):
  model, opts, result = run
  path = geometry_report.write(tmp_path, result, model, opts, config={"geometry": {"n_boot": 20}})
  doc = json.loads(path.read_text())
  assert doc["job"] == "geometry" and doc["relation"]["cosine"]["n_pairs"] == len(result["pairs"])
  prov = doc["provenance"]
  assert prov["centred"] is True and prov["policy"] == "single" and prov["seed"] == 0
  assert prov["coverage"]["covered"] > 0 and prov["config"]["geometry"]["n_boot"] == 20
  assert {f["table"] for f in prov["norms_files"]} == set(result["tables"])
  for name in geometry_report.FIGURES:
    assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
  line, *rest = geometry_report.digest(result)
  assert len(rest) == (1 if result["relation_no_shared_poles"]["n_pairs_dropped"] else 0)
  assert line.startswith(f"geometry: {len(result['pairs'])} pairs of ") and "Mantel p" in line


def test_too_few_tagged_scales_and_bad_options(run):
  model, opts, _ = run
  with pytest.raises(InputError, match="at least 3"):
    geometry.run_geometry(model, dataclasses.replace(opts, scales="osgood28"), progress=False)
  with pytest.raises(InputError, match="--norms"):
    geometry.check_options(dataclasses.replace(opts, norms=("warriner", "nosuch")))
  with pytest.raises(InputError, match="--n_perm"):
    geometry.check_options(dataclasses.replace(opts, n_perm=0))


def _planted_directions(rng, s: int = 5, d: int = 16):
  """Directions with pole vectors (``S`` scales), and rated words whose columns follow their axes."""
  names = tuple(f"s{i}" for i in range(s))
  poles = {n: (rng.standard_normal((3, d)).astype(np.float32), rng.standard_normal((2, d)).astype(np.float32))
           for n in names}
  vectors = np.stack([p.mean(0) - m.mean(0) for p, m in poles.values()])
  dirs = scale_directions.Directions(
      names=names, vectors=vectors, factors=(None,) * s, norms=tuple(f"t:{n}" for n in names),
      method="pole_mean", policy="single", poles={}, asked=s, dropped={}, pole_vectors=poles)
  n = 200
  words = rng.standard_normal((n, d))
  columns = {f"t:{name}": words @ v + rng.standard_normal(n) for name, v in zip(names, vectors)}
  columns["t:s1"][:40] = np.nan  # pairwise complete
  rated = geometry_inputs.RatedWords(words=tuple(f"w{i}" for i in range(n)), columns=columns,
                              tables={"t": np.ones(n, bool)})
  covered = np.ones(n, bool)
  covered[::7] = False
  return dirs, rated, covered, words[covered].astype(np.float32)


def test_the_human_side_computed_once_gives_compare_at_every_site():
  """``model_side`` of a shared ``human_side`` equals ``compare`` for each set of vectors."""
  import jax
  rng = np.random.default_rng(0)
  dirs, rated, covered, vectors = _planted_directions(rng)
  key = jax.random.key(3)
  human = geometry.human_side(dirs.names, dirs.norms, rated, key=key, n_boot=16)
  for site in range(2):
    moved = vectors + site * rng.standard_normal(vectors.shape).astype(np.float32)
    want = geometry.compare(dirs, rated, covered, moved, key=key, n_boot=16, n_perm=30)
    got = geometry.model_side(human, dirs, covered, moved, n_perm=30)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
  assert want["relation"]["projection"]["r"] > 0.5  # the columns follow the axes
  with pytest.raises(ValueError, match="do not match"):
    geometry.model_side(human, dataclasses.replace(dirs, names=dirs.names[::-1]), covered, vectors,
                        n_perm=3)


def test_rated_words_over_a_given_word_list():
  """A word list restricts the universe to it, in its order; a word no table rates stays, unrated."""
  full = geometry_inputs.rated_words(["warriner:valence", "dal:pleasantness"])
  dal = full.columns["dal:pleasantness"]
  some = [w for w in full.words[:50] if np.isfinite(dal[full.words.index(w)])][:5]
  words = [some[2], "zzznotaword", some[0], some[2]]
  got = geometry_inputs.rated_words(["warriner:valence", "dal:pleasantness"], words=words)
  assert got.words == (some[2], "zzznotaword", some[0])
  for tag in ("warriner:valence", "dal:pleasantness"):
    want = [full.columns[tag][full.words.index(w)] for w in (some[2], some[0])]
    np.testing.assert_array_equal(got.columns[tag][[0, 2]], want)
    assert np.isnan(got.columns[tag][1])
  assert not got.tables["dal"][1] and got.tables["dal"][0]


def test_pairs_sharing_pole_words_are_named_and_left_out_of_the_sensitivity_relation(run):
  _, _, result = run
  pairs = result["pairs"]
  # valence and pleasantness share pole words in configs/scales/norms.json (a fact of the file).
  shared = {(p["a"], p["b"]) for p in pairs if p["shared_pole_words"]}
  assert ("valence", "pleasantness") in shared
  apart = result["relation_no_shared_poles"]
  assert apart["n_pairs_dropped"] == len(shared)
  assert apart["cosine"]["n_pairs"] == len(pairs) - len(shared) == apart["projection"]["n_pairs"]
  # Independent check: r of human r on the cosine over the kept pairs, in plain numpy.
  kept = [p for p in pairs if not p["shared_pole_words"]]
  x = np.array([p["cosine"] for p in kept])
  y = np.array([p["human_r"] for p in kept])
  np.testing.assert_allclose(apart["cosine"]["r"], np.corrcoef(x, y)[0, 1], atol=1e-9)
  assert 0 < apart["cosine"]["mantel_p"] <= 1
  assert any("share a pole word" in line for line in geometry_report.digest(result))


def test_shared_pole_words_of_a_pair():
  dirs = scale_directions.Directions(
      names=("a", "b", "c"), vectors=np.eye(3, dtype=np.float32), factors=(None,) * 3, norms=(None,) * 3,
      method="pole_mean", policy="single", asked=3, dropped={},
      poles={"a": {"positive": ["good", "kind"], "negative": ["bad"]},
             "b": {"positive": ["kind"], "negative": ["cruel"]},
             "c": {"positive": ["hot"], "negative": ["cold"]}})
  shared = geometry.shared_pole_words(dirs, ["a", "b", "c"])
  assert shared[0][1] == shared[1][0] == {"kind"}
  assert shared[0][2] == shared[1][2] == set() and shared[0][0] == set()

