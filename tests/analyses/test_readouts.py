"""Readout helpers and the Readout factories: prompts, pole tokens, disjoint words, ratings."""

import types

import numpy as np
import pytest

from jaxsem.analyses import readouts
from jaxsem.errors import InputError
from jaxsem.io.scales import Scale
from tests.analyses import toy_tokenizer


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
