"""Tests for scripts/choose_readout_words.py and the readout words it wrote."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from jaxsem.io import scales
from jaxsem.io.scales import load_scales

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "choose_readout_words.py"
DEBIAN_WORDNET = Path("/usr/share/wordnet")


@pytest.fixture(scope="module")
def chooser():
  """scripts/choose_readout_words.py as a module (scripts/ is not a package)."""
  spec = importlib.util.spec_from_file_location("choose_readout_words", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up here
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tokenizers(chooser):
  return chooser.load_tokenizers()


# A tiny WordNet. up's first sense (awake) has no antonym, so its cluster is never read;
# down(p) carries a marker; "even" is in a satellite of both poles; high and low are
# direction words of another scale; dim has no antonym at all, bright only one to "dark".
_DATA_ADJ = [
    "  1 licence header line",
    "00000010 00 a 01 up 0 003 ! 00000020 a 0101 & 00000011 a 0000 & 00000012 a 0000 | x",
    "00000011 00 s 04 high 0 raised 0 even 0 elevated 0 001 & 00000010 a 0000 | x",
    "00000012 00 s 07 lifted 0 Upward 0 go_up 0 elevated 1 rising 0 upraised 0 uplifted 0"
    " 001 & 00000010 a 0000 | x",
    "00000013 00 a 02 up 1 awake 0 001 & 00000014 a 0000 | x",
    "00000014 00 s 01 alert 0 001 & 00000013 a 0000 | x",
    "00000020 00 a 01 down(p) 0 002 ! 00000010 a 0101 & 00000021 a 0000 | x",
    "00000021 00 s 04 low 0 sunken 0 even 0 fallen 0 001 & 00000020 a 0000 | x",
    "00000050 00 a 01 tall 0 002 ! 00000060 a 0101 & 00000051 a 0000 | x",
    "00000051 00 s 02 high 1 lofty 0 001 & 00000050 a 0000 | x",
    "00000060 00 a 01 short 0 002 ! 00000050 a 0101 & 00000061 a 0000 | x",
    "00000061 00 s 02 low 1 squat 0 001 & 00000060 a 0000 | x",
    "00000030 00 a 01 bright 0 002 ! 00000070 a 0101 & 00000031 a 0000 | x",
    "00000031 00 s 02 shiny 0 vivid 0 001 & 00000030 a 0000 | x",
    "00000040 00 a 01 dim 0 000 | x",
    "00000070 00 a 01 dark 0 001 ! 00000030 a 0101 | x",
]
_INDEX_ADJ = [
    "  1 licence header line",
    "up a 2 1 ! 2 0 00000013 00000010",
    "down a 1 1 ! 1 0 00000020",
    "high a 2 1 & 2 1 00000011 00000051",
    "low a 2 1 & 2 0 00000021 00000061",
    "elevated a 2 1 & 2 2 00000011 00000012",
    "lifted a 1 1 & 1 1 00000012",
    "rising a 1 1 & 1 1 00000012",
    "sunken a 1 1 & 1 1 00000021",
    "fallen a 1 1 & 1 1 00000021",
    "lofty a 1 1 & 1 1 00000051",
    "tall a 1 1 ! 1 0 00000050",
    "short a 1 1 ! 1 0 00000060",
    "bright a 1 1 ! 1 0 00000030",
    "dim a 1 0 1 0 00000040",
]
_CNTLIST = [
    "elevated%5:00:00:up:00 1 2",
    "elevated%5:00:00:up:01 2 7",
    "lifted%5:00:00:up:00 1 7",
    "lifted%1:00:00:: 1 100",  # a noun sense: not counted
    "rising%5:00:00:up:00 1 2",
    "high%5:00:00:up:00 1 5",
    "high%5:00:00:tall:00 2 4",
    "sunken%5:00:00:down:00 1 3",
    "fallen%5:00:00:down:00 1 3",
    "lofty%5:00:00:tall:00 1 1",
]
_FILE = [
    {"name": "up-down", "positive": ["up"], "negative": ["down"]},
    {"name": "tall-short", "positive": ["tall"], "negative": ["short"]},
    {"name": "high-low", "positive": ["high"], "negative": ["low"]},
]


@pytest.fixture
def tiny_wordnet(chooser, tmp_path: Path):
  for name, lines in (("data.adj", _DATA_ADJ), ("index.adj", _INDEX_ADJ), ("cntlist.rev", _CNTLIST)):
    (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
  return chooser.read_adjectives(tmp_path)


def _token_ids(missing=(), same=()):
  """A fake pair of tokenizers: each word is one token unless in ``missing``; the words in
  ``same`` share a token in the second tokenizer."""
  vocab: dict[str, int] = {}

  def token_ids(word: str):
    if word in missing:
      return None
    first = vocab.setdefault(word, len(vocab))
    return (first, -1 if word in same else first)

  return token_ids


def test_rule_on_a_tiny_wordnet(chooser, tiny_wordnet):
  choices = chooser.choose(tiny_wordnet, _FILE, _token_ids(missing={"rising"}))
  # Scores: elevated 2 + 7, lifted 7 (its noun count ignored), raised/uplifted/upraised 0,
  # ties alphabetical, four kept. Gone: up/high (direction words of the file), Upward (not
  # lowercase), go up (two words), even (on both poles), rising (not one token), awake
  # and alert (a sense of up without an antonym).
  assert choices["up-down"] == chooser.Choice(("elevated", "lifted", "raised", "uplifted"),
                                             ("fallen", "sunken"))
  # high and low are another scale's direction words: file-wide, tall-short would keep only
  # lofty and squat, so it falls back to excluding its own words, and says so.
  assert choices["tall-short"] == chooser.Choice(("high", "lofty"), ("low", "squat"), own_scale_only=True)
  # high and low have no sense with an antonym: no candidates, so the scale is left out.
  assert choices["high-low"] is None


def test_seed_senses_prefer_the_contrast_with_the_other_pole(chooser, tiny_wordnet):
  assert chooser.seed_senses(tiny_wordnet, "up", ["down"]) == ("00000010",)
  assert chooser.seed_senses(tiny_wordnet, "up", ["sideways"]) == ("00000010",)  # any antonym
  # bright contrasts with dark only: that sense is used for any other pole.
  assert chooser.seed_senses(tiny_wordnet, "bright", ["dim"]) == ("00000030",)
  assert chooser.seed_senses(tiny_wordnet, "dim", ["bright"]) == ()
  pos, neg = chooser.choose_poles(tiny_wordnet, ["bright"], ["dim"], {"bright", "dim"}, _token_ids())
  assert (pos, neg) == (("shiny", "vivid"), ())


def test_a_shared_token_drops_the_word_from_both_poles(chooser, tiny_wordnet):
  token_ids = _token_ids(missing={"rising"}, same={"raised", "fallen"})
  excluded = {"up", "down", "high", "low"}
  assert chooser.choose_poles(tiny_wordnet, ["up"], ["down"], excluded, token_ids) == (
      ("elevated", "lifted", "uplifted", "upraised"), ("sunken",))
  # One negative word left: up-down falls back to its own words, and gains low.
  choice = chooser.choose(tiny_wordnet, _FILE, token_ids)["up-down"]
  assert choice == chooser.Choice(("elevated", "lifted", "high", "uplifted"), ("sunken", "low"), True)


def test_rewriting_keeps_the_layout_and_sets_only_the_readout_keys(chooser):
  for name in chooser.FILES:
    text = scales.scale_set_path(name).read_text(encoding="utf-8")
    data = json.loads(text)
    as_shipped = {s.name: chooser.Choice(s.readout_positive, s.readout_negative,
                                         chooser.FALLBACK_NOTE in (s.note or ""))
                  if s.has_readout_words else None for s in load_scales(name)}
    assert chooser.render(chooser.updated(data, as_shipped), chooser.is_one_line(text)) == text
    # Without readout words, only the readout keys and the fallback sentence go.
    bare = chooser.updated(data, {})
    for old, new in zip(data["scales"], bare["scales"]):
      assert set(old) - set(new) <= {"readout_positive", "readout_negative", "note"}
      assert {k: v for k, v in old.items() if k in new and k != "note"} == {k: v for k, v in new.items()
                                                                            if k != "note"}
      assert new.get("note") == chooser._without_fallback(old.get("note"))
    again = chooser.render(chooser.updated(bare, as_shipped), chooser.is_one_line(text))
    assert again == text


def test_updated_adds_and_removes_the_fallback_note(chooser):
  data = {"scales": [{"name": "a-b", "positive": ["a"], "negative": ["b"], "note": "Mine."},
                     {"name": "c-d", "positive": ["c"], "negative": ["d"]}]}
  choices = {"a-b": chooser.Choice(("x", "y"), ("z", "w"), True),
             "c-d": chooser.Choice(("p", "q"), ("r", "s"), True)}
  once = chooser.updated(data, choices)
  assert once["scales"][0]["note"] == f"Mine. {chooser.FALLBACK_NOTE}"
  assert once["scales"][1]["note"] == chooser.FALLBACK_NOTE
  assert list(once["scales"][0]) == ["name", "positive", "negative", "note", *chooser.READOUT_KEYS]
  assert chooser.updated(once, choices) == once  # idempotent
  undone = chooser.updated(once, {})
  assert undone == data


@pytest.mark.slow
def test_shipped_readout_words_are_single_distinct_tokens_in_both_models(tokenizers):
  from jaxsem.analyses import lexicon, readouts

  assert len(tokenizers) == 2
  for name in ("osgood28", "norms"):
    for scale in load_scales(name):
      if not scale.has_readout_words:
        continue
      for tokenizer in tokenizers:
        words = scale.readout_positive + scale.readout_negative
        resolved = lexicon.resolve_words(tokenizer, words, "single")
        assert resolved.dropped == {}, (name, scale.name, tokenizer)
        first = [{readouts._first_token(tokenizer, w) for w in pole}
                 for pole in (scale.readout_positive, scale.readout_negative)]
        assert len(first[0]) == len(scale.readout_positive) and len(first[1]) == len(scale.readout_negative)
        assert not first[0] & first[1], (name, scale.name)


@pytest.mark.slow
@pytest.mark.skipif(not (DEBIAN_WORDNET / "cntlist.rev").is_file(),
                    reason="the rerun needs WordNet 3.0's data.adj, index.adj and cntlist.rev, which are not"
                           " installed here (Debian: apt-get install wordnet-base)")
def test_rerunning_the_rule_gives_the_shipped_files(chooser, tokenizers):
  wordnet = chooser.read_adjectives(DEBIAN_WORDNET)
  token_ids = chooser.single_token_ids(tokenizers)
  for name in chooser.FILES:
    text = scales.scale_set_path(name).read_text(encoding="utf-8")
    new, choices = chooser.rewrite(text, wordnet, token_ids)
    assert new == text, name
    assert any(c is not None for c in choices.values())
