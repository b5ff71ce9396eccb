"""Readout helpers: prompts split around the word, pole tokens, the rating-prompt readout."""

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
