"""Readout helpers and the Readout factories: prompts, pole tokens, disjoint words, ratings; each readout
through the grid against whole prompts, sharded and not; readouts by name."""

import dataclasses
import types

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsem import sharding
from jaxsem.analyses import grid as grid_lib
from jaxsem.analyses import readouts
from jaxsem.errors import InputError
from jaxsem.io.scales import Scale
from jaxsem.models import interventions as iv_lib
from jaxsem.models.forward import forward_jit
from tests.analyses import toy_model, toy_tokenizer


def test_expected_rating_is_the_softmax_mean_of_the_answers():
  logits = np.array([[0.0] * 7, [50.0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 50.0], [1.0, 2, 3, 4, 5, 6, 7]])
  got = readouts.expected_rating(logits)
  p = np.exp(logits[3]) / np.exp(logits[3]).sum()
  np.testing.assert_allclose(got, [4.0, 1.0, 7.0, p @ np.arange(1, 8)], atol=1e-12)


def test_rating_readout_needs_a_chat_format_and_names_the_fix():
  tok = toy_tokenizer()
  with pytest.raises(InputError, match="--readout=logodds"):
    readouts.chat_template(tok, "How good is {word}?")


def test_prompts_share_the_prefix_and_locate_the_word():
  tok = toy_tokenizer()
  ids = [tok.encode(" kind", add_special_tokens=False), tok.encode(" unkindly", add_special_tokens=False)]
  p = readouts.build_prompts(tok, "The word {word} is", ids)
  whole = tok.encode("The word kind is")
  assert list(p.prefix) + list(p.suffixes[0]) == whole
  assert p.word_positions[1] == tuple(range(len(ids[1]))) and len(ids[1]) > 1
  assert readouts.build_prompts(tok, "{word} is", ids).prefix == (tok.bos_id,)  # <bos> is shared
  no_bos = toy_tokenizer("\u0120")
  with pytest.raises(InputError, match="nothing before"):
    readouts.build_prompts(no_bos, "{word} is", ids)


def test_pole_tokens_drop_first_tokens_shared_by_both_poles():
  tok = toy_tokenizer()
  scales = [Scale("kind-cruel", ("kind", "kindness"), ("cruel", "unkindly")),
            Scale("hot-cold", ("hot",), ("cold",))]
  poles = readouts.pole_tokens(tok, scales)
  assert poles.positive.shape[0] == 2 and (poles.rows[poles.positive[1, 0]] ==
                                           tok.encode(" hot", add_special_tokens=False)[0])
  shared = [Scale("x", ("kind",), ("kindness",))]  # both poles start with the same token
  with pytest.raises(InputError, match="'x'"):
    readouts.pole_tokens(tok, shared)


# ----------------------------------------------------------------------------- Readout factories


def _first(tok, word):
  return tok.encode(" " + word, add_special_tokens=False)[0]


def _readout_scale(name, pos, neg, r_pos=(), r_neg=()):
  return types.SimpleNamespace(name=name, positive=pos, negative=neg, readout_positive=r_pos,
                               readout_negative=r_neg)


READOUT_SCALES = [
    _readout_scale("kind-cruel", ("kind",), ("cruel",), ("good", "Happy"), ("bad", "SAD")),
    _readout_scale("hot-cold", ("hot",), ("cold",), ("ice", "kindness"), ("cream",)),  # kindness: ▁kind
    _readout_scale("good-bad", ("good",), ("bad",)),  # no readout words
    _readout_scale("word-the", ("word",), ("the",), ("icecream",), ("un",)),  # icecream starts ▁ice ...
]


def test_logodds_readout_of_the_direction_words_reads_their_pole_tokens():
  tok = toy_tokenizer()
  r = readouts.logodds_readout(tok, READOUT_SCALES)
  want = readouts.pole_tokens(tok, READOUT_SCALES)
  assert r.kind == "logodds" and r.names == want.names and r.n_columns == 4 and r.template is None
  np.testing.assert_array_equal(r.poles.rows, want.rows)
  logodds = np.arange(8.0).reshape(2, 4)
  np.testing.assert_array_equal(r.ratings((logodds, None)), logodds)
  with pytest.raises(InputError, match="'both'"):
    readouts.logodds_readout(tok, READOUT_SCALES, "both")


def test_logodds_readout_of_the_disjoint_words_leaves_out_scales_without_usable_ones():
  tok = toy_tokenizer()
  r = readouts.logodds_readout(tok, READOUT_SCALES, "disjoint")
  # word-the's readout word "icecream" is fine for word-the (its first token is ▁ice, not ▁word/▁the).
  assert r.names == ("kind-cruel", "hot-cold", "word-the")
  assert set(r.report["left_out"]) == {"good-bad"} and "no readout words" in r.report["left_out"]["good-bad"]
  tokens = {int(r.poles.rows[i]) for i in r.poles.positive[0] if i >= 0}
  assert tokens == {_first(tok, "good"), _first(tok, "Happy")}
  # "kindness" starts with ▁kind, a direction word's first token of kind-cruel but not of hot-cold: kept.
  hot = {int(r.poles.rows[i]) for i in r.poles.positive[1] if i >= 0}
  assert hot == {_first(tok, "ice"), _first(tok, "kindness")}
  # A readout word whose first token is one of its own scale's direction tokens is dropped.
  clash = [_readout_scale("kind-cruel", ("kind",), ("cruel",), ("kindness", "good"), ("bad",))]
  r2 = readouts.logodds_readout(tok, clash, "disjoint")
  assert "kindness" in r2.poles.report["kind-cruel"]["dropped"]
  assert {int(r2.poles.rows[i]) for i in r2.poles.positive[0] if i >= 0} == {_first(tok, "good")}
  only_clash = [_readout_scale("kind-cruel", ("kind",), ("cruel",), ("kindness",), ("bad",)),
                _readout_scale("hot-cold", ("hot",), ("cold",))]
  kept, left_out, _ = readouts.disjoint_scales(tok, only_clash)
  assert kept == [] and "positive pole" in left_out["kind-cruel"] and "kindness" in left_out["kind-cruel"]
  with pytest.raises(InputError, match="readout_positive"):
    readouts.logodds_readout(tok, only_clash, "disjoint")


def test_concat_reads_each_part_as_it_reads_alone():
  tok = toy_tokenizer()
  a = readouts.logodds_readout(tok, READOUT_SCALES)
  b = readouts.logodds_readout(tok, READOUT_SCALES, "disjoint")
  both = readouts.concat(a, b)
  assert both.names == a.names + b.names and both.n_columns == 7
  vocab = np.random.default_rng(0).normal(size=(3, tok.backend.get_vocab_size()))  # logits of every token

  def rate(r):
    return np.asarray(readouts.pole_logodds(vocab[:, r.poles.rows], r.poles.positive, r.poles.negative))

  got = rate(both)
  np.testing.assert_allclose(got[:, :4], rate(a), rtol=1e-6)
  np.testing.assert_allclose(got[:, 4:], rate(b), rtol=1e-6)
  assert np.abs(got[:, :4] - got[:, 4:7][:, [0, 1, 1, 2]]).max() > 1e-3  # the readouts do differ
  with pytest.raises(InputError, match="log-odds"):
    readouts.concat(a, readouts.representation_readout(tok, READOUT_SCALES, "embed", np.eye(4, 8)))


def test_representation_readout_rates_with_the_projection():
  tok = toy_tokenizer()
  r = readouts.representation_readout(tok, READOUT_SCALES, "resid_post.1", np.eye(4, 8))
  assert r.kind == "representation" and r.read_site == "resid_post.1" and r.read_dirs.shape == (4, 8)
  logodds, rep = np.zeros((2, 4)), np.arange(8.0).reshape(2, 4)
  np.testing.assert_array_equal(r.ratings((logodds, rep)), rep)
  with pytest.raises(InputError, match="3 directions for 4 scales"):
    readouts.representation_readout(tok, READOUT_SCALES, "embed", np.eye(3, 8))


class _ChatTokenizer:
  """A ChatML vocabulary whose answers 1..7 are single tokens."""

  def __init__(self):
    self.backend = types.SimpleNamespace(get_vocab=lambda: {"<|im_start|>": 0, "<|im_end|>": 1})

  def encode(self, text, add_special_tokens=False):
    return [100 + int(text)] if text.isdigit() else [200, 201]


def test_rating_readout_asks_in_the_chat_format_and_rates_the_expected_answer():
  scale = Scale("good-bad", ("good",), ("bad",))
  r = readouts.rating_readout(_ChatTokenizer(), scale)
  assert r.kind == "rating" and r.raw_logits and r.names == ("good-bad",) and r.n_columns == 7
  assert r.template.startswith("<|im_start|>user\n") and "how good is {word}?" in r.template
  assert r.template.endswith("<|im_start|>assistant\n")
  np.testing.assert_array_equal(r.poles.rows, np.arange(101, 108))
  logits = np.random.default_rng(1).normal(size=(5, 7))
  np.testing.assert_allclose(r.ratings((logits, None)), readouts.expected_rating(logits)[:, None])
  with pytest.raises(InputError, match="chat model"):
    readouts.rating_readout(toy_tokenizer(), scale)


def test_unembedding_directions_are_pole_mean_differences():
  rng = np.random.default_rng(2)
  embed, unembed = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
  poles = readouts.PoleTokens(names=("a", "b"), rows=np.array([3, 7, 11, 20], np.int32),
                              positive=np.array([[0, 1], [2, -1]], np.int32),
                              negative=np.array([[2, -1], [3, 0]], np.int32), report={})
  for tied, matrix in ((False, unembed), (True, embed)):
    model = types.SimpleNamespace(params={"embed": embed if tied else embed * 0, "unembed": unembed},
                                  config=types.SimpleNamespace(tie_embeddings=tied, embed_scale=3.0))
    got = readouts.unembedding_directions(model, poles)
    m = matrix
    want = np.stack([(m[3] + m[7]) / 2 - m[11], m[11] - (m[20] + m[3]) / 2])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # no embed_scale on the output side


# ----------------------------------------------------------------------------- readouts through the grid

# "kindness" is two tokens (▁kind + ness): the word mask covers two positions and suffixes differ in length.
GRID_WORDS = ("kind", "cruel", "good", "bad", "hot", "cold", "kindness")
GRID_SCALES = (Scale("kind-cruel", ("kind",), ("cruel",)), Scale("good-bad", ("good", "Happy"), ("bad",)),
               Scale("hot-cold", ("hot",), ("cold", "ice")))
SITE = "resid_pre.1"


@pytest.fixture(scope="module")
def models():
  return {"unsharded": toy_model(), "sharded": toy_model(sharding.make_mesh("data:2,model:4"))}


def _prompts(tok):
  return readouts.build_prompts(tok, readouts.DEFAULT_TEMPLATE,
                                [tok.encode(" " + w, add_special_tokens=False) for w in GRID_WORDS])


def _rows(d, n=11, seed=0):
  rng = np.random.default_rng(seed)
  wi = rng.integers(0, len(GRID_WORDS), size=n)
  vec = (rng.normal(size=(n, d)) * 4.0).astype(np.float32)
  vec[::4] = 0.0  # unsteered rows among them
  return wi, vec


def _reference(model, prompts, readout, wi, vec):
  """Whole prompts (no prefix cache), full-vocabulary logits, the vector added at the word's
  positions at ``SITE``; the readout's outputs in numpy from there."""
  pre = list(prompts.prefix)
  seqs = [pre + list(prompts.suffixes[i]) for i in wi]
  n, t = len(seqs), max(len(q) for q in seqs)
  ids, mask, word = np.zeros((n, t), np.int32), np.zeros((n, t), np.int32), np.zeros((n, t), np.float32)
  for r, (q, i) in enumerate(zip(seqs, wi)):
    ids[r, :len(q)] = q
    mask[r, :len(q)] = 1
    word[r, [len(pre) + p for p in prompts.word_positions[i]]] = 1.0
  iv = iv_lib.Intervention(mask=jnp.asarray(word), vector=jnp.asarray(vec),
                           strength=jnp.ones((), jnp.float32), site=SITE, op="add")
  capture = () if readout.read_site is None else (readout.read_site,)
  out = forward_jit(model.params, model.config, jnp.asarray(ids), jnp.asarray(mask), logits_at="all",
                    capture=capture, interventions=(iv,))
  logits = np.asarray(out.logits, np.float64)[np.arange(n), mask.sum(1) - 1]  # [N, V]
  rows = logits[:, readout.poles.rows]
  first = rows if readout.raw_logits else _numpy_logodds(rows, readout.poles.positive, readout.poles.negative)
  if readout.read_site is None:
    return first, None
  last = [len(pre) + prompts.word_positions[i][-1] for i in wi]
  h = np.asarray(out.captured[readout.read_site], np.float64)[np.arange(n), last]
  return first, h @ np.asarray(readout.read_dirs, np.float64).T


def _numpy_logodds(logits, positive, negative):
  def lse(index):
    cols = []
    for row in index:
      x = logits[:, row[row >= 0]]
      m = x.max(axis=1, keepdims=True)
      cols.append(m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))
    return np.stack(cols, axis=1)

  return lse(positive) - lse(negative)


def _make_readout(kind, model):
  if kind == "logodds":
    return readouts.logodds_readout(model.tokenizer, GRID_SCALES)
  if kind == "representation":
    dirs = np.random.default_rng(3).normal(size=(len(GRID_SCALES), model.config.d_model))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return readouts.representation_readout(model.tokenizer, GRID_SCALES, "resid_post.2", dirs)
  return readouts.rating_readout(_ChatTokenizer(), GRID_SCALES[0])  # answers "1".."7" = ids 101..107


@pytest.mark.parametrize("mesh", ["unsharded", "sharded"])
@pytest.mark.parametrize("kind", ["logodds", "representation", "rating"])
def test_each_readout_through_the_grid_matches_whole_prompts(models, kind, mesh):
  """The kernel (prefix cache, pole-row logits, the readout's ``read``) against a plain reference."""
  model, plain = models[mesh], models["unsharded"]
  prompts = _prompts(plain.tokenizer)
  readout = _make_readout(kind, plain)
  grid = grid_lib.Grid(model, prompts, readout, SITE, batch_size=4)  # 11 rows: two full batches, one padded
  wi, vec = _rows(model.config.d_model)
  first, rep = grid.evaluate(wi, vec)
  want_first, want_rep = _reference(plain, prompts, readout, wi, vec)
  assert first.shape == want_first.shape == (len(wi), readout.n_columns)
  np.testing.assert_allclose(first, want_first, rtol=1e-5, atol=1e-5)
  if kind == "representation":
    assert rep.shape == (len(wi), len(GRID_SCALES))
    np.testing.assert_allclose(rep, want_rep, rtol=1e-5, atol=1e-5)
  else:
    assert rep is None
  want = readout.ratings((want_first, want_rep))
  np.testing.assert_allclose(grid.rate(wi, vec), want, rtol=1e-5, atol=1e-5)
  # Ratings differ between rows and steering moves them, so the comparisons can fail.
  assert np.ptp(want, axis=0).min() > 1e-4
  unsteered = readout.ratings(_reference(plain, prompts, readout, wi, np.zeros_like(vec)))
  assert np.abs(want - unsteered).max() > 1e-3


def _margin_readout(request: readouts.ReadoutRequest) -> readouts.Readout:
  """Margin of the top pole: each scale's largest positive-pole logit minus its largest negative one."""
  poles = readouts.pole_tokens(request.model.tokenizer, request.scales)

  def top(logits, index):
    return np.where(index >= 0, logits[:, np.maximum(index, 0)], -np.inf).max(axis=-1)

  def ratings(logits, representation):
    del representation
    return top(logits, poles.positive) - top(logits, poles.negative)

  return readouts.Readout(kind="margin", names=poles.names, poles=poles, raw_logits=True, to_ratings=ratings)


def test_a_new_readout_is_one_function(models, monkeypatch):
  model = models["sharded"]
  monkeypatch.setitem(readouts.READOUT_FACTORIES, "margin", _margin_readout)
  d = model.config.d_model
  units = np.eye(len(GRID_SCALES), d, dtype=np.float32)
  readout = readouts.requested_readout("margin", readouts.ReadoutRequest(model, GRID_SCALES, SITE, units))
  prompts = _prompts(model.tokenizer)
  grid = grid_lib.Grid(model, prompts, readout, SITE, batch_size=8)
  wi, vec = _rows(d, seed=1)
  got = grid.rate(wi, vec)
  # Independently: full-vocabulary logits, the pole words' first tokens looked up by id.
  logits, _ = _reference(models["unsharded"], prompts, dataclasses.replace(readout, poles=dataclasses.replace(
      readout.poles, rows=np.arange(model.config.vocab_size, dtype=np.int32))), wi, vec)
  tok = model.tokenizer
  want = np.stack([logits[:, [_first(tok, w) for w in s.positive]].max(1)
                   - logits[:, [_first(tok, w) for w in s.negative]].max(1) for s in GRID_SCALES], axis=1)
  assert got.shape == (len(wi), len(GRID_SCALES))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.ptp(want, axis=0).min() > 1e-4


def test_readouts_by_name():
  assert readouts.READOUTS == tuple(readouts.READOUT_FACTORIES) == ("logodds", "representation")
  model = toy_model()
  units = np.eye(len(GRID_SCALES), model.config.d_model)
  request = readouts.ReadoutRequest(model, GRID_SCALES, "resid_post.1", units)
  assert readouts.requested_readout("logodds", request).kind == "logodds"
  rep = readouts.requested_readout("representation", request)
  assert rep.kind == "representation" and rep.read_site == "resid_post.1"
  np.testing.assert_array_equal(rep.read_dirs, units.astype(np.float32))
  assert rep.kernel_readout().capture == ("resid_post.1",)
  with pytest.raises(InputError, match="--readout='margin' is not known; use one of logodds, representation"):
    readouts.requested_readout("margin", request)
  with pytest.raises(InputError, match="--read_layer"):
    readouts.requested_readout("representation", dataclasses.replace(request, site="resid_pre.1"))
