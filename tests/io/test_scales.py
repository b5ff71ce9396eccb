"""Tests for the scale sets in configs/scales/, their loader and the WordNet extraction."""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jaxsem.errors import InputError
from jaxsem.io import scales
from jaxsem.io.scales import Scale, ScaleSet, load_scales

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "extract_wordnet_antonyms.py"
DEBIAN_WORDNET = Path("/usr/share/wordnet")


def _extractor():
  """Imports scripts/extract_wordnet_antonyms.py (scripts/ is not a package)."""
  spec = importlib.util.spec_from_file_location("extract_wordnet_antonyms", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_json(path: Path, scale_list: list, **top) -> Path:
  path.write_text(json.dumps({**top, "scales": scale_list}), encoding="utf-8")
  return path


def _pair(name: str, positive, negative, **extra) -> dict:
  return {"name": name, "positive": positive, "negative": negative, **extra}


# --- the committed sets -----------------------------------------------------------------


def test_known_sets_resolve_to_files():
  assert scales.SCALE_SETS == ("osgood28", "norms", "wordnet")
  for name in scales.SCALE_SETS:
    assert scales.scale_set_path(name).is_file()
    assert scales.scale_set_path(name).parent == REPO / "configs" / "scales"


def test_osgood28_has_28_scales_with_all_three_factors():
  osgood = load_scales("osgood28")
  assert len(osgood) == 28
  assert osgood.name == "osgood28"
  counts = collections.Counter(osgood.factors)
  assert set(counts) == {"E", "P", "A"}
  assert counts == {"E": 10, "P": 9, "A": 9}
  assert "Osgood" in osgood.citation and "1957" in osgood.citation
  assert {"good-bad", "kind-cruel", "strong-weak", "fast-slow", "hot-cold"} <= set(osgood.names)
  for scale in osgood:
    assert scale.name == f"{scale.positive[0]}-{scale.negative[0]}"
    assert all(w == w.lower() and " " not in w for w in scale.words)


def test_norms_target_the_six_norm_columns():
  norms = load_scales("norms")
  assert {s.norm for s in norms} == {
      "warriner:valence", "warriner:arousal", "warriner:dominance",
      "dal:pleasantness", "dal:activation", "dal:imagery", "brysbaert:concreteness",
      "lancaster:visual", "lancaster:auditory", "lancaster:haptic", "lancaster:interoceptive",
      "lancaster:gustatory",
  }
  assert norms["valence"].factor == "E" and norms["arousal"].factor == "A"
  assert norms["dominance"].factor == "P" and norms["imagery"].factor is None
  for scale in norms:
    assert 4 <= len(scale.positive) <= 6 and 4 <= len(scale.negative) <= 6, scale.name
    assert all(" " not in w for w in scale.words), scale.name
  assert "good" in norms["valence"].positive and "bad" in norms["valence"].negative
  assert "Warriner" in norms.citation and "Whissell" in norms.citation


# Where a scale's note says this, its readout words need only avoid its own direction words.
_OWN_SCALE_ONLY = "avoid only its own direction words"


@pytest.mark.parametrize("name, with_readout", [("osgood28", 18), ("norms", 10)])
def test_shipped_readout_words_follow_the_data_rule(name: str, with_readout: int):
  scale_set = load_scales(name)
  every_direction_word = set(scale_set.words)
  assert scale_set.readout_words_given
  assert sum(s.has_readout_words for s in scale_set) == with_readout  # as configs/scales/README.md states
  for scale in scale_set:
    if not scale.has_readout_words:
      assert _OWN_SCALE_ONLY not in (scale.note or ""), scale.name
      continue
    readout = scale.readout_positive + scale.readout_negative
    assert 2 <= len(scale.readout_positive) <= 4 and 2 <= len(scale.readout_negative) <= 4, scale.name
    assert not set(scale.readout_positive) & set(scale.readout_negative), scale.name
    assert all(re.fullmatch(r"[a-z]+", w) for w in readout), scale.name
    excluded = set(scale.words) if _OWN_SCALE_ONLY in (scale.note or "") else every_direction_word
    assert not set(readout) & excluded, scale.name


def test_wordnet_and_the_scale_files_record_their_sha256():
  for name in scales.SCALE_SETS:
    scale_set = load_scales(name)
    assert scale_set.sha256 == hashlib.sha256(scales.scale_set_path(name).read_bytes()).hexdigest()
    assert scale_set.subset(scale_set.names[:1]).sha256 == scale_set.sha256
  assert not load_scales("wordnet").readout_words_given


def test_wordnet_has_known_pairs_with_their_part_of_speech():
  wordnet = load_scales("wordnet")
  by_words = {(s.positive, s.negative, s.pos): s for s in wordnet}
  for positive, negative in [("good", "bad"), ("hot", "cold"), ("strong", "weak")]:
    scale = by_words[(positive,), (negative,), "adj"]
    assert scale.name == f"{positive}-{negative}"
  assert wordnet["good-bad.noun"].pos == "noun"
  assert wordnet["good-bad.noun"].positive == ("good",)
  assert by_words[("well",), ("badly",), "adv"].name == "well-badly"
  assert by_words[("buy",), ("sell",), "verb"].name == "buy-sell"
  # Orientation follows file order, not evaluation: lose comes before win in data.verb.
  assert by_words[("lose",), ("win",), "verb"].name == "lose-win"
  # Multiword lemmas have spaces, adjective markers are gone.
  assert by_words[("a priori",), ("a posteriori",), "adj"].name == "a priori-a posteriori"
  assert not any(re.search(r"[_()]", w) for w in wordnet.words)


def test_wordnet_counts_and_no_duplicate_pairs():
  wordnet = load_scales("wordnet")
  counts = collections.Counter(s.pos for s in wordnet)
  assert 3400 <= len(wordnet) <= 3800
  assert counts == {"adj": 1834, "adv": 325, "noun": 992, "verb": 476}
  keys = [(s.pos, frozenset(s.words)) for s in wordnet]
  assert len(set(keys)) == len(keys)  # a reversed pair would give the same key
  assert all(len(s.positive) == len(s.negative) == 1 for s in wordnet)
  assert len(set(wordnet.names)) == len(wordnet)


def test_wordnet_licence_is_committed_beside_it():
  wordnet = load_scales("wordnet")
  assert "WORDNET_LICENSE" in wordnet.licence
  text = (scales.SCALES_DIR / "WORDNET_LICENSE").read_text(encoding="utf-8")
  assert "WordNet 3.0 Copyright 2006 by Princeton University" in text
  assert "Miller" in wordnet.citation


def test_every_scale_file_ships_as_package_data():
  pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
  patterns = pyproject["tool"]["setuptools"]["package-data"]["configs.scales"]
  files = [p.name for p in scales.SCALES_DIR.iterdir() if p.is_file()]
  assert set(scales.SCALE_SETS) <= {Path(f).stem for f in files}
  for name in files:
    assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


# --- ScaleSet ----------------------------------------------------------------------------


def test_scale_set_access():
  osgood = load_scales("osgood28")
  picked = osgood.subset(["hot-cold", "good-bad"])
  assert picked.names == ("hot-cold", "good-bad")
  assert picked.factors == ("A", "E")
  assert picked.words == ("hot", "cold", "good", "bad")
  assert picked.source == osgood.source and picked.citation == osgood.citation
  assert [s.name for s in picked] == list(picked.names)
  assert osgood["kind-cruel"] == Scale("kind-cruel", ("kind",), ("cruel",), factor="E")
  with pytest.raises(InputError, match="has no scale 'good-evil'"):
    osgood.subset(["good-bad", "good-evil"])


def test_scale_set_is_frozen_and_validated_on_construction():
  ok = ScaleSet("mine", (Scale("up-down", ("up",), ("down",)),), "mine.json")
  with pytest.raises(AttributeError):
    ok.name = "other"  # type: ignore[misc]
  with pytest.raises(InputError, match=r"mine\.json: scale 'up-up' has 'up' on both poles"):
    ScaleSet("mine", (Scale("up-up", ("up",), ("up",)),), "mine.json")


# --- reading files -----------------------------------------------------------------------


def test_readout_words_round_trip_through_json_and_tsv(tmp_path: Path):
  path = _write_json(tmp_path / "mine.json", [
      _pair("up-down", ["up"], ["down"], readout_positive=["high", "raised"],
            readout_negative=["low", "sunk"]),
      _pair("left-right", ["left"], ["right"]),
  ])
  loaded = load_scales(path)
  assert loaded["up-down"] == Scale("up-down", ("up",), ("down",), readout_positive=("high", "raised"),
                                    readout_negative=("low", "sunk"))
  assert loaded["up-down"].has_readout_words and not loaded["left-right"].has_readout_words
  assert loaded["left-right"].readout_positive == loaded["left-right"].readout_negative == ()
  assert loaded.readout_words_given and not loaded.subset(["left-right"]).readout_words_given
  assert loaded.words == ("up", "down", "left", "right")  # readout words are not pole words
  assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
  tsv = tmp_path / "mine.tsv"
  tsv.write_text("name\tpositive\tnegative\treadout_positive\treadout_negative\n"
                 "up-down\tup\tdown\thigh | raised\tlow|sunk\n"
                 "left-right\tleft\tright\t\t\n", encoding="utf-8")
  from_tsv = load_scales(tsv)
  assert from_tsv.scales == loaded.scales
  assert from_tsv.sha256 == hashlib.sha256(tsv.read_bytes()).hexdigest() != loaded.sha256


def test_a_scale_set_built_in_code_has_no_sha256():
  built = ScaleSet("mine", (Scale("up-down", ("up",), ("down",)),), "mine.json")
  assert built.sha256 is None and not built.readout_words_given


def test_json_file_by_path(tmp_path: Path):
  path = _write_json(tmp_path / "mine.json", [
      _pair("up-down", ["up", "high"], ["down"], factor="P", norm="anew:dominance", pos="adv", note="x"),
  ], citation="me")
  for arg in (path, str(path)):
    loaded = load_scales(arg)
    assert loaded.name == "mine"  # the stem, as the file has no name
    assert loaded.source == str(path) and loaded.citation == "me" and loaded.licence is None
    assert loaded.scales == (Scale("up-down", ("up", "high"), ("down",), "P", "anew:dominance", "adv", "x"),)


def test_tsv_file_by_path(tmp_path: Path):
  path = tmp_path / "pairs.tsv"
  path.write_text(
      "# name: my pairs\n# citation: someone (2024)\n# a plain comment\n"
      "name\tpositive\tnegative\tfactor\tnorm\n"
      "warm-cool\twarm | hot\tcool|cold\tA\t\n"
      "\n"
      "in-out\tin control\tout of control\t\twarriner:dominance\n",
      encoding="utf-8",
  )
  loaded = load_scales(path)
  assert loaded.name == "my pairs" and loaded.citation == "someone (2024)"
  assert loaded["warm-cool"] == Scale("warm-cool", ("warm", "hot"), ("cool", "cold"), factor="A")
  assert loaded["in-out"] == Scale("in-out", ("in control",), ("out of control",), norm="warriner:dominance")


# --- validation errors -------------------------------------------------------------------

_JSON_ERRORS = {
    "empty pole": ([_pair("up-down", [], ["down"])], r"scale 'up-down' has no positive words"),
    "repeated scale": (
        [_pair("up-down", ["up"], ["down"]), _pair("up-down", ["high"], ["low"])],
        r"scale 'up-down' is listed twice",
    ),
    "word on both poles": (
        [_pair("odd", ["up", "same"], ["down", "same"])], r"scale 'odd' has 'same' on both poles",
    ),
    "non-string word": (
        [_pair("up-down", ["up"], ["down", 3])], r"scale 'up-down' has the non-string word 3 on its negative",
    ),
    "unknown factor": (
        [_pair("up-down", ["up"], ["down"], factor="X")], r"scale 'up-down' has the unknown factor 'X'",
    ),
    "unknown norm": (
        [_pair("up-down", ["up"], ["down"], norm="warriner:joy")],
        r"scale 'up-down' has the unknown norm 'warriner:joy'.*warriner:valence",
    ),
    "unknown pos": (
        [_pair("up-down", ["up"], ["down"], pos="adjective")], r"unknown part of speech 'adjective'",
    ),
    "empty word": ([_pair("up-down", ["up", " "], ["down"])], r"scale 'up-down' has the word ' '"),
    "word twice on a pole": ([_pair("up-down", ["up", "up"], ["down"])], r"scale 'up-down' lists 'up' twice"),
    "pole not a list": ([_pair("up-down", "up", ["down"])], r"scale 'up-down' has positive = 'up'"),
    "missing pole": ([{"name": "up-down", "positive": ["up"]}], r"scale 'up-down' has no 'negative'"),
    "unknown key": (
        [_pair("up-down", ["up"], ["down"], postive=["x"])], r"scale 'up-down' has the unknown key 'postive'",
    ),
    "no scales": ([], r"has no scales"),
    "readout on one pole only": (
        [_pair("up-down", ["up"], ["down"], readout_positive=["high", "raised"])],
        r"scale 'up-down' has readout_positive words but no readout_negative words; give both",
    ),
    "readout negative only": (
        [_pair("up-down", ["up"], ["down"], readout_positive=[], readout_negative=["low"])],
        r"scale 'up-down' has readout_negative words but no readout_positive words",
    ),
    "readout word is a direction word": (
        [_pair("up-down", ["up", "high"], ["down"], readout_positive=["raised"], readout_negative=["high"])],
        r"scale 'up-down' has the readout word 'high' among its direction words",
    ),
    "readout word on both readout poles": (
        [_pair("up-down", ["up"], ["down"], readout_positive=["level", "high"],
               readout_negative=["low", "level"])],
        r"scale 'up-down' has the readout word 'level' on both readout poles",
    ),
    "readout word twice": (
        [_pair("up-down", ["up"], ["down"], readout_positive=["high", "high"], readout_negative=["low"])],
        r"scale 'up-down' lists 'high' twice on its readout_positive pole",
    ),
    "readout non-string word": (
        [_pair("up-down", ["up"], ["down"], readout_positive=["high"], readout_negative=[None])],
        r"scale 'up-down' has the non-string word None on its readout_negative pole",
    ),
    "readout empty word": (
        [_pair("up-down", ["up"], ["down"], readout_positive=["high "], readout_negative=["low"])],
        r"scale 'up-down' has the word 'high ' on its readout_positive pole",
    ),
    "readout pole not a list": (
        [_pair("up-down", ["up"], ["down"], readout_positive="high", readout_negative=["low"])],
        r"scale 'up-down' has readout_positive = 'high'; write each pole as a list",
    ),
}


@pytest.mark.parametrize("case", list(_JSON_ERRORS))
def test_json_validation_errors_name_file_and_scale(tmp_path: Path, case: str):
  scale_list, pattern = _JSON_ERRORS[case]
  path = _write_json(tmp_path / "bad.json", scale_list)
  with pytest.raises(InputError, match=re.escape(str(path)) + r".*" + pattern) as info:
    load_scales(path)
  assert "\n" not in str(info.value)


def test_malformed_json(tmp_path: Path):
  path = tmp_path / "broken.json"
  path.write_text('{"scales": [', encoding="utf-8")
  with pytest.raises(InputError, match=re.escape(str(path)) + r" is not valid JSON"):
    load_scales(path)
  path.write_text('["good", "bad"]', encoding="utf-8")
  with pytest.raises(InputError, match=r"must be a JSON object with a 'scales' list"):
    load_scales(path)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("name\tpositive\n", r"has the columns \['name', 'positive'\]; it needs name, positive and negative"),
        ("name\tpositive\tnegative\tcolour\n", r"has the columns .*'colour'"),
        ("name\tpositive\tnegative\nup-down\tup\n", r"line 2 has 2 tab-separated fields, not 3"),
        ("name\tpositive\tnegative\nup-down\tup\t\n", r"scale 'up-down' has no negative words"),
        ("name\tpositive\tnegative\nup-down\tup|\tdown\n", r"scale 'up-down' has the word ''"),
        ("# only a comment\n", r"has no header row"),
        ("name\tpositive\tnegative\treadout_positive\nup-down\tup\tdown\thigh|raised\n",
         r"scale 'up-down' has readout_positive words but no readout_negative words"),
        ("name\tpositive\tnegative\treadout_positive\treadout_negative\nup-down\tup\tdown\tup|high\tlow\n",
         r"scale 'up-down' has the readout word 'up' among its direction words"),
    ],
)
def test_malformed_tsv(tmp_path: Path, text: str, pattern: str):
  path = tmp_path / "bad.tsv"
  path.write_text(text, encoding="utf-8")
  with pytest.raises(InputError, match=re.escape(str(path)) + r".*" + pattern):
    load_scales(path)


def test_unknown_name_lists_the_known_sets():
  with pytest.raises(InputError, match=r"unknown scale set 'osgood'; use one of osgood28, norms, wordnet"):
    load_scales("osgood")


def test_missing_file_and_wrong_suffix(tmp_path: Path):
  with pytest.raises(InputError, match=re.escape(str(tmp_path / "none.json")) + " does not exist"):
    load_scales(tmp_path / "none.json")
  odd = tmp_path / "scales.yaml"
  odd.write_text("good: bad\n", encoding="utf-8")
  with pytest.raises(InputError, match=re.escape(str(odd)) + r" has neither a \.json nor a \.tsv suffix"):
    load_scales(odd)


# --- WordNet extraction ------------------------------------------------------------------

_TINY_WORDNET = {
    "adj": [
        "  1 This header line is skipped.",
        "00000010 00 a 01 good(a) 0 001 ! 00000020 a 0101 | having desirable qualities",
        "00000020 00 a 01 bad(p) 0 001 ! 00000010 a 0101 | not good",
        "00000030 00 a 02 hot 0 red-hot 0 001 ! 00000040 a 0101 | warm",
        "00000040 00 a 01 cold(ip) 0 001 ! 00000030 a 0101 | not warm",
        "00000050 00 a 01 hot 1 002 & 00000030 a 0000 ! 00000060 a 0101 | lively",
        "00000060 00 a 01 cold 1 001 ! 00000050 a 0101 | unfriendly",
        "00000070 00 a 01 in_control 0 001 ! 00000080 a 0101 | x",
        "00000080 00 a 01 out_of_control 0 001 ! 00000070 a 0101 | y",
    ],
    "adv": [
        "00000100 02 r 01 well 0 001 ! 00000110 r 0101 | x",
        "00000110 02 r 01 badly 0 001 ! 00000100 r 0101 | y",
    ],
    "noun": [
        "00000200 04 n 01 bad 0 001 ! 00000210 n 0101 | the bad",
        "00000210 04 n 02 good 0 goodness 0 002 @ 00000300 n 0000 ! 00000200 n 0101 | the good",
    ],
    "verb": [
        "00000400 40 v 01 kern 0 001 ! 00000410 v 0101 01 + 08 00 | one sense",
        "00000410 40 v 01 kern 1 001 ! 00000400 v 0101 01 + 08 00 | another sense",
        "00000420 40 v 02 have 0 feature 0 001 ! 00000430 v 0102 01 + 08 00 | own",
        "00000430 40 v 02 miss 0 lack 0 000 01 + 08 00 | be without",
    ],
}


def test_extraction_rules_on_a_tiny_wordnet(tmp_path: Path):
  for pos, lines in _TINY_WORDNET.items():
    (tmp_path / f"data.{pos}").write_text("\n".join(lines) + "\n", encoding="utf-8")
  extractor = _extractor()
  text = extractor.extract(tmp_path)
  out = tmp_path / "tiny.tsv"
  out.write_text(text, encoding="utf-8")
  loaded = load_scales(out)
  assert loaded.name == "wordnet"
  rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
  assert rows[0] == ["name", "positive", "negative", "pos", "synsets"]
  assert rows[1:] == [
      ["good-bad", "good", "bad", "adj", "00000010-00000020"],
      ["hot-cold", "hot", "cold", "adj", "00000030-00000040,00000050-00000060"],
      ["in control-out of control", "in control", "out of control", "adj", "00000070-00000080"],
      ["well-badly", "well", "badly", "adv", "00000100-00000110"],
      # The noun file meets bad first, but the pair keeps its adjective orientation.
      ["good-bad.noun", "good", "bad", "noun", "00000210-00000200"],
      # A pointer with no reverse is still a pair; kern/kern (one word) is left out.
      ["have-lack", "have", "lack", "verb", "00000420-00000430"],
  ]


def test_extraction_rejects_semantic_antonym_pointers(tmp_path: Path):
  for pos in ("adj", "adv", "noun", "verb"):
    (tmp_path / f"data.{pos}").write_text("", encoding="utf-8")
  (tmp_path / "data.adj").write_text("00000010 00 a 01 up 0 001 ! 00000020 a 0000 | x\n", encoding="utf-8")
  with pytest.raises(ValueError, match="semantic antonym pointer at adj 00000010"):
    _extractor().extract(tmp_path)


@pytest.mark.skipif(not (DEBIAN_WORDNET / "data.adj").is_file(),
                    reason="WordNet 3.0 data files not installed (Debian: apt-get install wordnet-base)")
def test_extraction_reproduces_the_committed_file(tmp_path: Path):
  out = tmp_path / "wordnet.tsv"
  result = subprocess.run(
      [sys.executable, str(SCRIPT), "--wordnet-dir", str(DEBIAN_WORDNET), "--out", str(out)],
      capture_output=True, text=True, check=True,
  )
  assert "3627 pairs (adj 1834, adv 325, noun 992, verb 476)" in result.stdout
  assert out.read_bytes() == (scales.SCALES_DIR / "wordnet.tsv").read_bytes()



def test_scale_file_reads_are_capped_and_must_be_regular(tmp_path, monkeypatch):
  from jaxsem.io import safe_json

  path = tmp_path / "big.json"
  path.write_text(json.dumps({"scales": [{"name": "a-b", "positive": ["a"], "negative": ["b"]}]}))
  assert len(load_scales(str(path))) == 1
  monkeypatch.setattr(safe_json, "MAX_BYTES", 16)
  with pytest.raises(InputError, match=r"big\.json has .* bytes, more than the 16 allowed"):
    load_scales(str(path))
  monkeypatch.undo()
  (tmp_path / "dir.json").mkdir()
  with pytest.raises(InputError, match=r"dir\.json is not a regular file"):
    load_scales(str(tmp_path / "dir.json"))
