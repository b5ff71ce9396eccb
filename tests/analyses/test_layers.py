"""Layer-resolved alignment and structure: one-pass capture, sharding, a planted direction, the writer."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsem
from jaxsem import sharding
from jaxsem.analyses import layers, layers_capture, lexicon, spaces
from jaxsem.errors import InputError
from jaxsem.io import norms
from jaxsem.models.model import Model
from jaxsem.report import layers_report
from tests import toy
from tests.analyses import toy_model

WORDS = ["kind", "cruel", "kindness", "ice cream", "good", "unkindly", "hot", "cold"]
TEMPLATES = ("The word {word}", "kind {word}", "{word} is")
PLANTED_LAYER = 1


def _ids(model, policy="mean"):
  wt = lexicon.resolve_words(model.tokenizer, WORDS, policy=policy)
  return wt.used_all_ids


def test_one_pass_equals_a_run_per_layer():
  """Every site from one pass per template equals spaces.hidden_vectors at that layer, and several
  templates give the mean of the per-template states (the Gemma-like toy: post-norms, local layers,
  embedding scale; the capture itself knows no family)."""
  cfg = toy.CONFIGS["gemma3"]()
  model = Model(config=cfg, params=toy.params_for(cfg, seed=3), tokenizer=toy_model().tokenizer,
                provenance={})
  ids = _ids(model)
  one = layers_capture.capture_sites(model, ids, TEMPLATES[:1], batch_size=16)
  assert one.shape == (cfg.n_layers + 2, len(ids), cfg.d_model)
  sites = layers_capture.site_names(cfg.n_layers)
  assert sites[0] == "embed" and sites[-1] == "final" and len(sites) == cfg.n_layers + 2
  for s, site in enumerate(sites[1:], start=1):
    layer = layers_capture.site_layer(site)
    want = np.asarray(spaces.hidden_vectors(model, ids, layer, TEMPLATES[0], batch_size=16))
    np.testing.assert_allclose(one[s], want, rtol=1e-5, atol=1e-5, err_msg=site)
  embed = np.asarray(model.params["embed"]) * np.float32(cfg.embed_scale)
  np.testing.assert_allclose(one[0], embed[[t[-1] for t in ids]], rtol=1e-5, atol=1e-5)
  every = layers_capture.capture_sites(model, ids, TEMPLATES, batch_size=16)
  per = [np.asarray(spaces.hidden_vectors(model, ids, 1, t, batch_size=16)) for t in TEMPLATES]
  np.testing.assert_allclose(every[2], np.mean(per, axis=0), rtol=1e-5, atol=1e-5)
  assert not np.allclose(per[0], per[1], atol=1e-3)  # the templates do differ


def test_sharded_equals_unsharded():
  """8 devices (data:2, model:4): the same states and per-site statistics as one device."""
  mesh = sharding.make_mesh("data:2,model:4")
  plain, placed = toy_model(), toy_model(mesh=mesh)
  assert len(placed.params["embed"].sharding.device_set) == 8
  ids = _ids(plain)
  a = layers_capture.capture_sites(plain, ids, TEMPLATES, batch_size=16)
  b = layers_capture.capture_sites(placed, ids, TEMPLATES, batch_size=16)
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  # More tokens than d_model, so the whitening is well conditioned.
  ta, na = layers_capture.site_statistics(plain, TEMPLATES, centre=True, whiten=True, sample=40, seed=1)
  tb, nb = layers_capture.site_statistics(placed, TEMPLATES, centre=True, whiten=True, sample=40, seed=1)
  assert na == nb == 40 and len(ta) == plain.config.n_layers + 2
  for x, y in zip(ta, tb):
    np.testing.assert_allclose(np.asarray(y.mean), np.asarray(x.mean), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y.W), np.asarray(x.W), rtol=1e-3, atol=1e-3)


def test_statistics_are_the_token_sample_in_the_templates():
  model = toy_model()
  # The sample size of the sharded test above: the programs are compiled once for both.
  transforms, n = layers_capture.site_statistics(model, TEMPLATES, centre=True, whiten=False, sample=40,
                                                 seed=2)
  tokens = spaces.sample_tokens(model, 40, 2)
  states = layers_capture.capture_sites(model, [(int(t),) for t in tokens], TEMPLATES)
  assert n == len(tokens) == 40
  for s, t in enumerate(transforms):
    np.testing.assert_allclose(np.asarray(t.mean), states[s].mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(t.W), np.eye(model.config.d_model), atol=1e-6)
  assert layers_capture.site_statistics(model, TEMPLATES, centre=False, whiten=False, sample=40, seed=2) == (
      [None] * (model.config.n_layers + 2), 0)


def test_a_space_with_states_reads_them_instead_of_running_the_model():
  model = toy_model()
  wt = lexicon.resolve_words(model.tokenizer, WORDS, policy="mean")
  ids = [tuple(t) for t in wt.used_all_ids]
  states = layers_capture.capture_sites(model, ids, TEMPLATES[:1])
  space = spaces.make_space(model, "hidden", layer=2, centre=True, stats_sample=20, template=TEMPLATES[0])
  table = spaces.StateTable({t: i for i, t in enumerate(ids)}, states[3])
  with_states = dataclasses.replace(space, states=table)
  np.testing.assert_allclose(np.asarray(spaces.word_vectors(model, wt, with_states)),
                             np.asarray(spaces.word_vectors(model, wt, space)), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="no precomputed state"):
    spaces.StateTable({ids[0]: 0}, states[3][:1]).lookup(ids)


@pytest.mark.parametrize("change,needle", [
    (dict(templates=("The word {word}", "A {word}")), "at least 3"),
    (dict(templates=("The word {word}", "A {word}", "no slot here")), "'no slot here' must contain the slot"),
    (dict(templates=("The {word}", "A {word}", "The {word}")), "twice"),
    (dict(method="semaxis"), "--method='semaxis' does not apply"),
    (dict(norms=()), "--norms is empty"),
    (dict(n_boot=0), "--n_boot=0"),
    (dict(geometry_n_perm=0), "--geometry_n_perm=0"),
])
def test_bad_options_are_one_sentence(change, needle):
  with pytest.raises(InputError, match=needle) as e:
    layers.check_options(dataclasses.replace(layers.LayerOptions(), **change))
  assert "\n" not in str(e.value)


def test_defaults_come_from_the_base_config():
  from configs.experiments import base
  from jaxsem import experiment_config
  values = {k: experiment_config.plain(v) for k, v in base.layers().to_dict().items()}
  assert {f: getattr(layers.LayerOptions(), f) for f in values} == values
  assert len(layers.LayerOptions().templates) >= layers.MIN_TEMPLATES
  layers.check_options(layers.LayerOptions())


def _row(scale, column, r, tag=True):
  return {"scale": scale, "norm": "warriner", "column": column, "matches_tag": tag, "pearson": r,
          "pearson_ci": [r - 0.1, r + 0.1], "pearson_ci_words": [r - 0.05, r + 0.05], "probe_r": 0.9}


def test_best_layers_takes_the_tagged_scale_and_the_static_figure():
  points = [{"depth": d, "site": site, "layer": layer, "space": space, "alignment": rows}
            for d, (site, layer, space, rows) in enumerate([
                ("input_embedding", None, "input_embedding", [_row("valence", "valence", 0.5),
                                                                _row("other", "valence", 0.95, tag=False)]),
                ("resid_post.0", 0, "hidden", [_row("valence", "valence", 0.7),
                                               _row("other", "valence", 0.1, tag=False)]),
                ("resid_post.1", 1, "hidden", [_row("valence", "valence", 0.6),
                                               _row("other", "valence", 0.2, tag=False)]),
                ("unembedding", None, "unembedding", [_row("valence", "valence", 0.8)]),
            ])]
  best = layers.best_layers(points)
  assert set(best) == {"warriner:valence"}
  b = best["warriner:valence"]  # not the untagged scale, nor a static space
  assert (b["scale"], b["site"], b["layer"], b["depth"]) == ("valence", "resid_post.0", 0, 1)
  assert b["pearson"] == pytest.approx(0.7) and b["pearson_ci"] == pytest.approx([0.6, 0.8])
  assert b["static"]["pearson"] == pytest.approx(0.5) and b["unembedding"]["pearson"] == pytest.approx(0.8)


# ----------------------------------------------------------------------------- planted direction


def planted_model(path: str, layer: int = PLANTED_LAYER, n_layers: int = 4, d: int = 32,
                  seed: int = 0) -> Model:
  """A model whose block ``layer`` writes each rated word's Warriner valence into the residual and whose
  next block erases it again, so only ``resid_post.{layer}`` carries it linearly.

  The word model's tokenizer gives every rated word one token. Each word's embedding holds its valence
  ``v`` in a code a linear read cannot use: coordinate 1 is ``±sqrt(max(v - 5, 0))`` and coordinate 2
  ``±sqrt(max(5 - v, 0))`` with random signs. Attention writes nothing (``o = 0``). The norms are
  linear (``norm_eps`` far above the activations' mean square, multipliers ``sqrt(norm_eps)``), and the
  MLP of block ``layer`` uses ``x * (silu(x) - silu(-x)) = x**2`` to write ``2 (v - 5)`` into
  coordinate 0; block ``layer + 1`` writes the same with the opposite sign. Every other coordinate is
  Gaussian noise, coordinate 0 included, so the leftover of the erasure (relative 1e-6) is invisible.
  """
  source = jaxsem.load(path, params_cache=False)
  tok, vocab = source.tokenizer, source.config.vocab_size
  cfg = toy.llama_config(vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=4, n_kv_heads=2, head_dim=8,
                         d_ff=4, norm_eps=1e6, tie_embeddings=True)
  rng = np.random.default_rng(seed)
  embed = rng.standard_normal((vocab, d)).astype(np.float32)
  embed[:, 1:3] = 0.0
  words, columns = norms.read_norms("warriner")
  wt = lexicon.resolve_words(tok, words, "single")
  for ids, v in zip(wt.used_token_ids, columns["valence"][wt.used]):
    signs = rng.choice([-1.0, 1.0], size=2)
    embed[ids[0], 1] = signs[0] * np.sqrt(max(v - 5.0, 0.0))
    embed[ids[0], 2] = signs[1] * np.sqrt(max(5.0 - v, 0.0))
  zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
  gate, up, down = zeros(n_layers, d, 4), zeros(n_layers, d, 4), zeros(n_layers, 4, d)
  for block, sign in ((layer, 1.0), (layer + 1, -1.0)):
    for unit, (coord, out) in enumerate(((1, 1.0), (1, 1.0), (2, -1.0), (2, -1.0))):
      flip = 1.0 if unit % 2 == 0 else -1.0  # silu(x) x + silu(-x) (-x) = x**2
      gate[block, coord, unit] = up[block, coord, unit] = flip
      down[block, unit, 0] = 2.0 * sign * out
  root = np.float32(np.sqrt(cfg.norm_eps))
  params = {"embed": embed, "final_norm": np.full(d, root, np.float32),
            "blocks": {"attn_norm": np.ones((n_layers, d), np.float32),
                       "mlp_norm": np.full((n_layers, d), root, np.float32),
                       "q": zeros(n_layers, d, 4, 8), "k": zeros(n_layers, d, 2, 8),
                       "v": zeros(n_layers, d, 2, 8),
                       "o": zeros(n_layers, 4, 8, d), "gate": gate, "up": up, "down": down}}
  return Model(config=cfg, params=jax.tree.map(jnp.asarray, params), tokenizer=tok,
               provenance={"name": "planted"})


@pytest.fixture(scope="module")
def planted_run(word_model):
  model = planted_model(word_model)
  opts = layers.LayerOptions(n_words=300, stats_sample=64, n_boot=20, n_null=20, n_tag_perms=20)
  return model, opts, layers.run_layers(model, opts, progress=False)


def _valence(point):
  return next(r for r in point["alignment"] if r["scale"] == "valence" and r["column"] == "valence")


@pytest.mark.slow  # a whole layer analysis: over 8 s on a 2-core machine
def test_a_planted_direction_is_found_at_its_layer_and_not_at_others(planted_run):
  model, opts, result = planted_run
  points = result["layers"]
  n = model.config.n_layers
  assert [p["site"] for p in points] == ["input_embedding", "embed", *(f"resid_post.{i}" for i in range(n)),
                                         "final", "unembedding"]
  assert [p["depth"] for p in points] == list(range(n + 4))
  assert [p["layer"] for p in points] == [None, None, *range(n), -1, None]
  here = f"resid_post.{PLANTED_LAYER}"
  for p in points:
    r, probe = _valence(p)["pearson"], p["probe_r"]["warriner:valence"]
    if p["site"] == here:
      assert r > 0.8 and probe > 0.8, (p["site"], r, probe)
    else:
      assert abs(r) < 0.25 and probe < 0.3, (p["site"], r, probe)
  best = result["best"]["warriner:valence"]
  assert (best["site"], best["layer"], best["scale"]) == (here, PLANTED_LAYER, "valence")
  assert best["pearson_ci"][0] > 0.5 and abs(best["static"]["pearson"]) < 0.25
  assert result["templates"] == list(opts.templates) and result["statistics"]["tokens"] == 64
  assert result["coverage"]["warriner"]["sampled"]["n"] == 300


@pytest.mark.slow  # a whole layer analysis: over 8 s on a 2-core machine
def test_every_site_carries_structure_and_provenance(planted_run):
  _, opts, result = planted_run
  for p in result["layers"]:
    assert len(p["pca_cumulative"]) == 28 and 0 < p["pca_cumulative_1_2_3"][0] <= p["pca_cumulative"][2] <= 1
    assert set(p["epa_congruence"]) == {"E", "P", "A"} and p["participation_ratio"] >= 1
    assert p["epa_null"]["n_perms"] == 20 and p["pair_null"] is None
    assert p["space_provenance"]["centred"] is True
  hidden = [p for p in result["layers"] if p["space"] == "hidden"]
  assert all(p["space_provenance"]["stats_tokens"] == 64 for p in hidden)
  # The embedding entering block 0 carries no context: only its centring differs from the static space.
  static, embed = result["layers"][0], result["layers"][1]
  assert embed["pca_cumulative"] == pytest.approx(static["pca_cumulative"], abs=0.01)


@pytest.mark.slow  # a whole layer analysis: over 8 s on a 2-core machine
def test_writer_writes_summary_figures_and_digest(planted_run, tmp_path):
  model, opts, result = planted_run
  path = layers_report.write(tmp_path, result, model, opts, config={"layers": {"n_words": 300}})
  doc = json.loads(path.read_text())
  assert doc["job"] == "layers" and doc["templates"] == list(opts.templates)
  entry = doc["layers"][2 + PLANTED_LAYER]
  assert {"layer", "site", "space", "alignment", "probe_r", "pca_cumulative", "epa_congruence",
          "participation_ratio"} <= set(entry)
  assert entry["alignment"][0]["n_null"] == 20 and "p_adjusted" in entry["alignment"][0]
  assert doc["best"]["warriner:valence"]["site"] == f"resid_post.{PLANTED_LAYER}"
  prov = doc["provenance"]
  assert prov["model"]["name"] == "planted" and prov["templates"] == list(opts.templates)
  assert prov["options"]["n_words"] == 300 and prov["config"] == {"layers": {"n_words": 300}}
  assert prov["scales_files"]["align"]["sha256"] and prov["norms_files"][0]["table"] == "warriner"
  for name in layers_report.FIGURES:
    assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
  lines = layers_report.digest(doc)
  valence = next(line for line in lines if "warriner:valence" in line)
  assert f"resid_post.{PLANTED_LAYER}" in valence and "static r=" in valence


# ----------------------------------------------------------------------------- geometry relation per site


@pytest.mark.slow  # a whole layer analysis: over 8 s on a 2-core machine
def test_geometry_is_skipped_with_the_reason_below_four_tagged_scales(planted_run):
  """Warriner alone tags three scales of the norms set (three pairs): no number, a recorded reason."""
  _, _, result = planted_run
  info = result["geometry"]
  assert info["n_scales"] == 3 and info["n_pairs"] == 3
  assert info["columns"] == ["warriner:valence", "warriner:arousal", "warriner:dominance"]
  assert "only 3 scale(s)" in info["skipped"]
  assert "--norms=warriner,dal,brysbaert,lancaster" in info["skipped"]
  assert all(p["geometry"] is None for p in result["layers"]) and result["best_geometry"] is None
  assert any(line.startswith("geometry relation: skipped (only 3") for line in layers_report.digest(result))


@pytest.fixture(scope="module")
def geometry_run(word_model):
  """Warriner and DAL tag six scales of the norms set: fifteen pairs at every site. The sizes of
  ``planted_run`` let the run reuse its compiled programs."""
  model = planted_model(word_model)
  opts = layers.LayerOptions(norms=("warriner", "dal"), n_words=300, stats_sample=64, n_boot=20, n_null=20,
                             n_tag_perms=20, geometry_n_perm=50)
  return model, opts, layers.run_layers(model, opts, progress=False)


@pytest.mark.slow  # a whole layer analysis: over 8 s on a 2-core machine
def test_every_site_carries_the_geometry_relation(geometry_run):
  model, opts, result = geometry_run
  info = result["geometry"]
  assert info["skipped"] is None and info["n_scales"] == 6 and info["n_pairs"] == 15
  assert {c.split(":")[0] for c in info["columns"]} == {"warriner", "dal"}
  human = np.array(info["human_r"]["matrix"])
  assert human.shape == (6, 6) and np.allclose(np.diag(human), 1.0)
  # The words are the union of the two samples; each table rates its own sample at least.
  assert info["n_words"] >= 300 and min(info["tables"].values()) >= 300
  assert len(result["layers"]) == model.config.n_layers + 4
  for p in result["layers"]:
    g = p["geometry"]
    assert g["n_pairs"] == 15 and np.array(g["cosines"]).shape == (6, 6)
    for side in ("cosine", "projection"):
      rel = g["relation"][side]
      assert {"r", "ci", "slope", "mantel_p"} <= set(rel), p["site"]
      assert -1.0 <= rel["r"] <= 1.0 and rel["n_pairs"] == 15 and rel["n_perm"] == 50
      assert -1.0 <= rel["ci"][0] <= rel["ci"][1] <= 1.0 and 1 / 51 <= rel["mantel_p"] <= 1
    projection = g["relation"]["projection"]
    assert projection["ci"][0] - 1e-6 <= projection["r"] <= projection["ci"][1] + 1e-6, p["site"]
    apart = g["relation_no_shared_poles"]  # valence and pleasantness share pole words (norms.json)
    assert apart["n_pairs_dropped"] >= 1
    assert apart["cosine"]["n_pairs"] == apart["projection"]["n_pairs"] == 15 - apart["n_pairs_dropped"]
  # Resampled pole means are noisier, which pulls the draws' cosines towards 0 (as in the
  # geometry run): the cosine relation's interval holds its r at most sites, not necessarily all.
  inside = [g["ci"][0] - 1e-6 <= g["r"] <= g["ci"][1] + 1e-6
            for g in (p["geometry"]["relation"]["cosine"] for p in result["layers"])]
  assert sum(inside) >= len(inside) / 2, inside
  # Only the vectors differ between sites: the human side is shared, the model side is not.
  cos = [g["relation"]["cosine"]["r"] for g in (p["geometry"] for p in result["layers"])]
  assert len(set(np.round(cos, 6))) > 1
  best = result["best_geometry"]
  hidden = [p for p in result["layers"] if p["space"] == "hidden"]
  assert best["space"] == "hidden" and best["n_pairs"] == 15
  # The planted valence coordinate aligns the valence-like axes where it lives: the relation peaks there.
  assert best["site"] == f"resid_post.{PLANTED_LAYER}" and best["cosine"]["r"] > best["static"]["cosine"]["r"]
  assert best["cosine"]["r"] == max(p["geometry"]["relation"]["cosine"]["r"] for p in hidden)
  assert best["static"] == result["layers"][0]["geometry"]["relation"]
  assert best["unembedding"] == result["layers"][-1]["geometry"]["relation"]


@pytest.mark.slow  # a whole layer analysis: over 8 s on a 2-core machine
def test_writer_writes_the_geometry_figure_and_line(geometry_run, tmp_path):
  model, opts, result = geometry_run
  path = layers_report.write(tmp_path, result, model, opts)
  doc = json.loads(path.read_text())
  assert doc["best_geometry"]["site"] == result["best_geometry"]["site"]
  assert doc["layers"][1]["geometry"]["relation"]["cosine"]["r"] == pytest.approx(
      result["layers"][1]["geometry"]["relation"]["cosine"]["r"])
  assert doc["provenance"]["options"]["geometry_n_perm"] == 50
  assert (tmp_path / layers_report.GEOMETRY_FIGURE).read_bytes().startswith(b"\x89PNG")
  [line] = [line for line in layers_report.digest(doc) if line.startswith("geometry relation")]
  assert "over 15 pairs" in line and "static" in line and result["best_geometry"]["site"] in line
  assert line.count("Mantel p=") == 4


@pytest.mark.slow  # a whole layer analysis: over 8 s on a 2-core machine
def test_writer_leaves_the_geometry_figure_out_when_skipped(planted_run, tmp_path):
  model, opts, result = planted_run
  layers_report.write(tmp_path, result, model, opts)
  assert not (tmp_path / layers_report.GEOMETRY_FIGURE).exists()
