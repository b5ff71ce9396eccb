"""Words -> tokens policies and coverage reporting, on a toy tokenizer and the real ones."""

import numpy as np
import pytest

from jaxsem.analyses import lexicon
from jaxsem.errors import InputError
from tests.analyses import toy_tokenizer

MARKERS = ["\u2581", "\u0120"]
WORDS = ["kind", "kindness", "ness", "ice cream", "cruel", "happy", "qz"]


@pytest.fixture(params=MARKERS, ids=["sentencepiece", "bytelevel"])
def tok(request):
  return toy_tokenizer(request.param)


def _id(tok, piece):
  return tok.token_to_id(piece.replace("_", tok.word_initial_marker))


def test_single_keeps_one_word_initial_token_and_says_why_others_drop(tok):
  wt = lexicon.resolve_words(tok, WORDS)
  m = tok.word_initial_marker
  assert wt.policy == "single"
  assert wt.used.tolist() == [True, False, False, False, True, False, False]
  assert wt.token_ids[0] == (_id(tok, "_kind"),) and wt.token_ids[4] == (_id(tok, "_cruel"),)
  assert all(wt.token_ids[i] == () and wt.variant[i] is None for i in (1, 2, 3, 5, 6))
  assert wt.dropped["kindness"] == f"splits into 2 tokens: {m}kind, ness"
  assert "only without the word-initial marker" in wt.dropped["ness"]
  assert wt.dropped["ice cream"].startswith("is a multiword expression (2 words)")
  assert wt.dropped["happy"].startswith("splits into 5 tokens")
  assert wt.dropped["qz"].startswith("splits into 3 tokens")
  assert set(wt.dropped) == {w for w, u in zip(WORDS, wt.used) if not u}
  assert wt.coverage == pytest.approx(2 / 7)
  assert wt.used_words == ["kind", "cruel"]


def test_mean_and_first_use_the_subtokens_after_a_space(tok):
  mean = lexicon.resolve_words(tok, WORDS, policy="mean")
  first = lexicon.resolve_words(tok, WORDS, policy="first")
  expect = {w: tuple(tok.encode(" " + w, add_special_tokens=False)) for w in WORDS}
  assert mean.token_ids[1] == (_id(tok, "_kind"), _id(tok, "ness"))
  assert mean.token_ids[3] == (_id(tok, "_ice"), _id(tok, "_cream"))
  for w, ids, fids, all_ids in zip(WORDS, mean.token_ids, first.token_ids, first.all_ids):
    assert ids == expect[w] and fids == expect[w][:1] and all_ids == expect[w]
  assert mean.coverage == first.coverage == 1.0 and not mean.dropped and not first.dropped
  assert first.variant[3] == "ice cream"


def test_underscores_whitespace_unknown_and_empty_words(tok):
  wt = lexicon.resolve_words(tok, ["ice_cream", "  cold ", "", "caf\u00e9", "Qu"], policy="mean")
  assert wt.token_ids[0] == (_id(tok, "_ice"), _id(tok, "_cream")) and wt.variant[0] == "ice cream"
  assert wt.token_ids[1] == (_id(tok, "_cold"),) and wt.variant[1] == "cold"
  assert wt.dropped[""] == "is empty"
  assert wt.dropped["caf\u00e9"].startswith("contains the unknown token")
  assert wt.dropped["Qu"].startswith("contains the unknown token")
  assert wt.used.tolist() == [True, True, False, False, False]
  assert wt.coverage == pytest.approx(0.4)


def test_case_variants_used_only_when_lowercase_is_not_one_token(tok):
  words = ["happy", "sad", "kind", "bad", "happiness"]
  plain = lexicon.resolve_words(tok, words)
  cased = lexicon.resolve_words(tok, words, case_variants=True)
  assert plain.used.tolist() == [False, False, True, True, False]
  assert cased.used.tolist() == [True, True, True, True, False]
  assert cased.variant[:4] == ("Happy", "SAD", "kind", "bad")
  assert cased.token_ids[0] == (_id(tok, "_Happy"),) and cased.token_ids[1] == (_id(tok, "_SAD"),)
  assert "no Capitalised or UPPER variant" in cased.dropped["happiness"]
  assert cased.report()["case_variants_used"] == {"happy": "Happy", "sad": "SAD"}
  # Other policies ignore the flag: they never need a variant.
  mean = lexicon.resolve_words(tok, words, policy="mean", case_variants=True)
  assert not mean.case_variants and mean.variant[0] == "happy"


def test_report_contents(tok):
  wt = lexicon.resolve_words(tok, ["kind", "kindness", "happy", "cruel", "qz", "ness", "ice cream"])
  r = wt.report()
  assert r["policy"] == "single" and r["asked"] == 7 and r["used"] == 2
  assert r["coverage"] == pytest.approx(2 / 7) and r["n_dropped"] == 5
  assert list(r["dropped_examples"]) == ["kindness", "happy", "qz", "ness", "ice cream"]
  assert r["dropped_examples"]["kindness"] == wt.dropped["kindness"]
  many = lexicon.resolve_words(tok, [f"{w}ness" for w in "abcdefgh"])
  assert len(many.report()["dropped_examples"]) == 5 and many.report()["n_dropped"] == 8


def test_require_coverage(tok):
  wt = lexicon.resolve_words(tok, ["kind", "kindness", "happy", "cruel"])
  lexicon.require_coverage(wt, 0.5, "toy scales")  # exactly at the minimum passes
  with pytest.raises(InputError) as e:
    lexicon.require_coverage(wt, 0.8, "toy scales")
  msg = str(e.value)
  for part in ("toy scales", "2 of 4", "50.0%", "--min_coverage=0.8", "--policy=single",
               "--policy=mean", "'kindness' splits into 2 tokens"):
    assert part in msg, part
  with pytest.raises(InputError, match="no-words set: only 0 of 0"):
    lexicon.require_coverage(lexicon.resolve_words(tok, []), 0.0, "no-words set")


def test_unknown_policy_raises(tok):
  with pytest.raises(InputError, match="--policy='last'"):
    lexicon.resolve_words(tok, ["kind"], policy="last")


def test_coverage_arithmetic_matches_mask(tok):
  rng = np.random.default_rng(0)
  pool = ["kind", "cruel", "good", "bad", "hot", "cold", "happy", "kindness", "qz", "word"]
  words = list(rng.choice(pool, 40))
  wt = lexicon.resolve_words(tok, words)
  singles = {"kind", "cruel", "good", "bad", "hot", "cold", "word"}
  assert wt.n_used == sum(w in singles for w in words)
  assert wt.coverage == pytest.approx(wt.n_used / 40)
  assert len(wt.used_token_ids) == wt.n_used == len(wt.used_words)


ADJECTIVES = [
    "good", "bad", "happy", "sad", "hot", "cold", "big", "small", "kind", "cruel", "fast", "slow",
    "strong", "weak", "rich", "poor", "old", "young", "new", "clean", "dirty", "dark", "light",
    "hard", "soft", "safe", "dangerous", "loud", "quiet", "warm", "cool", "wet", "dry", "heavy",
    "high", "low", "long", "short", "beautiful", "ugly", "smart", "stupid", "brave", "calm",
    "angry", "honest", "friendly", "simple", "difficult", "easy",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m-instruct"])
def test_real_models_cover_common_adjectives(embedded_models, name):
  model = embedded_models(name)
  wt = lexicon.resolve_words(model.tokenizer, ADJECTIVES)
  print(f"{name}: single-token coverage {wt.coverage:.1%}; dropped {wt.dropped}")
  assert wt.coverage > 0.8
  marker = model.tokenizer.word_initial_marker
  assert all(model.tokenizer.id_to_token(t[0]).startswith(marker) for t in wt.used_token_ids)
  mean = lexicon.resolve_words(model.tokenizer, ADJECTIVES + ["ice cream"], policy="mean")
  assert mean.coverage == 1.0 and len(mean.token_ids[-1]) == 2
