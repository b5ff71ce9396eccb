"""Scale directions on a toy model whose embedding rows are set by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem.analyses import scale_directions, spaces
from jaxsem.errors import InputError
from jaxsem.io.scales import Scale
from jaxsem.models.model import Model
from tests import toy
from tests.analyses import toy_tokenizer

D = 32
POSITIVE = ("kind", "good", "hot")
NEGATIVE = ("cruel", "bad", "cold")


def _unit(v):
  return v / np.linalg.norm(v)


def _cos(a, b):
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def planted():
  """A toy Gemma-like model whose pole words sit at base +/- a*u (plus a little noise).

  Returns (model, u, embed) with ``embed`` the raw float64 rows that were planted.
  """
  rng = np.random.default_rng(0)
  tok = toy_tokenizer()
  cfg = toy.gemma_config()
  embed = rng.normal(size=(cfg.vocab_size, D)) * 0.3
  u = _unit(rng.normal(size=D))
  base = rng.normal(size=D) * 0.5
  row = lambda w: tok.token_to_id("\u2581" + w)  # noqa: E731
  for w in POSITIVE:
    embed[row(w)] = base + 1.5 * u + rng.normal(size=D) * 0.05
  for w in NEGATIVE:
    embed[row(w)] = base - 1.5 * u + rng.normal(size=D) * 0.05
  params = dict(toy.params_for(cfg), embed=jnp.asarray(embed, jnp.float32))
  model = Model(config=cfg, params=params, tokenizer=tok, provenance={})
  return model, u, embed


def _rows(model, embed, words):
  """The planted rows of single-token ``words``, times the input-embedding scale."""
  ids = [model.tokenizer.token_to_id("\u2581" + w) for w in words]
  return embed[ids] * model.config.embed_scale


def test_pole_mean_recovers_the_planted_axis_with_its_sign(planted):
  """The direction is mean(positive) - mean(negative), points along +u, and flips with the poles."""
  model, u, embed = planted
  space = spaces.make_space(model, "input_embedding")
  scale = Scale("kind-cruel", POSITIVE[:2], NEGATIVE, factor="E", norm="warriner:valence")
  dirs = scale_directions.build(model, space, [scale])
  d = np.asarray(dirs.vectors[0], np.float64)
  want = _rows(model, embed, POSITIVE[:2]).mean(0) - _rows(model, embed, NEGATIVE).mean(0)
  np.testing.assert_allclose(d, want, rtol=1e-5, atol=1e-5)
  assert _cos(d, u) > 0.99
  assert dirs.names == ("kind-cruel",) and dirs.factors == ("E",) and dirs.norms == ("warriner:valence",)
  assert dirs.vectors.dtype == jnp.float32 and dirs.vectors.shape == (1, D)
  flipped = Scale("cruel-kind", NEGATIVE, POSITIVE[:2])
  back = np.asarray(scale_directions.build(model, space, [flipped]).vectors[0])
  np.testing.assert_allclose(back, -d, rtol=1e-5, atol=1e-5)
  # The averaged pole vectors are kept, in the space, so the pole words can be resampled.
  pos, neg = dirs.pole_vectors["kind-cruel"]
  assert pos.dtype == neg.dtype == np.float32 and pos.shape == (2, D) and neg.shape == (3, D)
  np.testing.assert_allclose(pos, _rows(model, embed, POSITIVE[:2]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(neg, _rows(model, embed, NEGATIVE), rtol=1e-5, atol=1e-5)
  rep = dirs.report()
  assert rep["dropped_pole_words"] == {}
  assert rep["sign"] == "positive pole minus negative pole" and rep["method"] == "pole_mean"
  assert rep["scales_asked"] == rep["scales_used"] == 1 and rep["scale_coverage"] == 1.0
  assert rep["pole_words_asked"] == rep["pole_words_used"] == 5
  # Centring subtracts one vector from every word, so pole differences do not change.
  centred = scale_directions.build(model, spaces.make_space(model, "input_embedding", centre=True), [scale])
  np.testing.assert_allclose(np.asarray(centred.vectors[0]), d, rtol=1e-4, atol=1e-4)


def test_pair_mean_needs_equal_poles_and_names_the_scale(planted):
  """pair_mean equals the pole mean for aligned pairs; unequal poles are an error naming the scale."""
  model, u, _ = planted
  space = spaces.make_space(model, "input_embedding")
  even = Scale("even", POSITIVE, NEGATIVE)
  pairs = scale_directions.build(model, space, [even], method="pair_mean")
  poles = scale_directions.build(model, space, [even])
  assert pairs.method == "pair_mean"
  np.testing.assert_allclose(np.asarray(pairs.vectors), np.asarray(poles.vectors), rtol=1e-5, atol=1e-5)
  assert _cos(np.asarray(pairs.vectors[0]), u) > 0.99
  uneven = Scale("uneven-scale", POSITIVE[:2], NEGATIVE)
  with pytest.raises(InputError, match="scale 'uneven-scale' has 2 usable positive and 3 negative"):
    scale_directions.build(model, space, [even, uneven], method="pair_mean")


def test_pole_without_usable_words_errors_or_is_dropped(planted):
  """missing='error' names the scale, side and word; missing='drop' reports it and lowers coverage."""
  model, u, _ = planted
  space = spaces.make_space(model, "input_embedding")
  good = Scale("good-bad", ("good", "kindness"), ("bad",))
  broken = Scale("warm-nothing", ("hot",), ("unkindly", "Quiet"))
  with pytest.raises(InputError, match=r"scale 'warm-nothing' has no usable negative pole word .*'unkindly'"):
    scale_directions.build(model, space, [good, broken], what="toy scales")
  with pytest.raises(InputError, match="^toy scales: "):
    scale_directions.build(model, space, [good, broken], what="toy scales")
  dirs = scale_directions.build(model, space, [good, broken], missing="drop")
  assert dirs.names == ("good-bad",) and dirs.asked == 2 and dirs.coverage == 0.5
  assert "no usable negative pole word" in dirs.dropped["warm-nothing"]
  assert "unkindly" in dirs.dropped["warm-nothing"]
  assert _cos(np.asarray(dirs.vectors[0]), u) > 0.9
  # The partly covered pole keeps its usable word and says why the other was dropped.
  info = dirs.poles["good-bad"]
  assert info["positive"] == ["good"] and info["negative"] == ["bad"] and info["asked"] == 3
  assert info["dropped"] == {"kindness": "splits into 2 tokens: \u2581kind, ness"}
  rep = dirs.report()
  assert rep["n_dropped_scales"] == 1 and rep["scales_used"] == 1 and rep["pole_words_used"] == 2
  assert "warm-nothing" in rep["dropped_scales"]
  # Every built scale that lost a pole word names it and the reason.
  assert rep["dropped_pole_words"] == {"good-bad": {"kindness": "splits into 2 tokens: \u2581kind, ness"}}
  assert set(dirs.pole_vectors) == {"good-bad"} and dirs.pole_vectors["good-bad"][0].shape == (1, D)


def test_min_coverage_and_no_scale_left(planted):
  """Dropping below --min_coverage, or dropping every scale, is an error that names the set."""
  model, _, _ = planted
  space = spaces.make_space(model, "input_embedding")
  good = Scale("good-bad", ("good",), ("bad",))
  broken = Scale("warm-nothing", ("hot",), ("unkindly",))
  ok = scale_directions.build(model, space, [good, broken], missing="drop", min_coverage=0.5)
  assert ok.coverage == 0.5
  with pytest.raises(InputError, match=r"toy: only 1 of 2 scales \(50.0%\).*--min_coverage=0.9"):
    scale_directions.build(model, space, [good, broken], missing="drop", min_coverage=0.9, what="toy")
  with pytest.raises(InputError, match="none of the 1 scales has usable words on both poles"):
    scale_directions.build(model, space, [broken], missing="drop")


def test_duplicate_scale_name_and_bad_method(planted):
  """A repeated scale name and an unknown method are input errors."""
  model, _, _ = planted
  space = spaces.make_space(model, "input_embedding")
  a = Scale("twice", ("good",), ("bad",))
  b = Scale("twice", ("kind",), ("cruel",))
  with pytest.raises(InputError, match="scale 'twice' is listed twice"):
    scale_directions.build(model, space, [a, b])
  with pytest.raises(InputError, match="--method='median'"):
    scale_directions.build(model, space, [a], method="median")


def test_identical_poles_name_the_scale(planted):
  """Two poles with the same vector (here via --policy=first) give an error naming the scale."""
  model, _, _ = planted
  space = spaces.make_space(model, "input_embedding")
  same = Scale("kindness-kind", ("kindness",), ("kind",))  # both are the token "▁kind" under "first"
  with pytest.raises(InputError, match="scale 'kindness-kind' has identical poles"):
    scale_directions.build(model, space, [same], policy="first")


def test_semaxis_adds_nearest_neighbours_but_never_the_seeds(planted):
  """Each pole gains its nearest vocabulary rows, seeds of both poles excluded; direction matches numpy."""
  model, u, embed = planted
  tok = model.tokenizer
  embed = embed.copy()
  rng = np.random.default_rng(1)
  row = lambda w: tok.token_to_id("\u2581" + w)  # noqa: E731
  pos_mean = embed[[row(w) for w in POSITIVE]].mean(0)
  neg_mean = embed[[row(w) for w in NEGATIVE]].mean(0)
  embed[row("Happy")] = pos_mean + rng.normal(size=D) * 0.01  # planted neighbours of each pole
  embed[row("SAD")] = neg_mean + rng.normal(size=D) * 0.01
  params = dict(model.params, embed=jnp.asarray(embed, jnp.float32))
  model = Model(config=model.config, params=params, tokenizer=tok, provenance={})
  space = spaces.make_space(model, "input_embedding")
  scale = Scale("kind-cruel", POSITIVE, NEGATIVE)
  dirs = scale_directions.build(model, space, [scale], method="semaxis", semaxis_k=1)
  info = dirs.poles["kind-cruel"]
  assert info["positive_neighbours"] == ["\u2581Happy"]
  assert info["negative_neighbours"] == ["\u2581SAD"]
  scale_k = model.config.embed_scale
  want = (np.concatenate([embed[[row(w) for w in POSITIVE]], embed[[row("Happy")]]]).mean(0)
          - np.concatenate([embed[[row(w) for w in NEGATIVE]], embed[[row("SAD")]]]).mean(0)) * scale_k
  np.testing.assert_allclose(np.asarray(dirs.vectors[0]), want, rtol=1e-4, atol=1e-4)
  assert _cos(np.asarray(dirs.vectors[0]), u) > 0.99
  # The pole vectors are the expanded poles: seeds then neighbours, averaging to the direction.
  pos, neg = dirs.pole_vectors["kind-cruel"]
  assert pos.shape == neg.shape == (len(POSITIVE) + 1, D)
  np.testing.assert_allclose(pos[-1], embed[row("Happy")] * scale_k, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(neg[-1], embed[row("SAD")] * scale_k, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(pos.mean(0) - neg.mean(0), np.asarray(dirs.vectors[0]), rtol=1e-4, atol=1e-4)
  # Without exclusion the seeds themselves would be nearest: with k=4 none of them appears.
  wide = scale_directions.build(model, space, [scale], method="semaxis", semaxis_k=4).poles["kind-cruel"]
  seeds = {"\u2581" + w for w in (*POSITIVE, *NEGATIVE)}
  assert len(wide["positive_neighbours"]) == 4 and not seeds & set(wide["positive_neighbours"])
  assert not seeds & set(wide["negative_neighbours"])
  assert wide["positive_neighbours"][0] == "\u2581Happy" and wide["negative_neighbours"][0] == "\u2581SAD"
  with pytest.raises(InputError, match="--method=semaxis needs a vocabulary matrix"):
    scale_directions.build(model, spaces.make_space(model, "hidden", layer=0), [scale], method="semaxis")
