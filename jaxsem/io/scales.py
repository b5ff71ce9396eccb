"""Semantic scales as data: bipolar word lists read from ``configs/scales/``.

A scale is a pair of poles, each a list of words (``kind`` vs ``cruel``); its semantic
direction is the difference of the poles' mean embeddings. Scale sets are files, so new
ones need no code:

* ``osgood28``: 28 bipolar adjective scales in the tradition of Osgood's semantic
  differential, each tagged with its expected factor (E, P or A).
* ``norms``: one scale per human-norm dimension (Warriner valence, arousal, dominance;
  DAL pleasantness, activation, imagery), several words per pole, each tagged with the
  norm column it should track.
* ``wordnet``: every direct antonym pair of WordNet 3.0, written by
  ``scripts/extract_wordnet_antonyms.py``.

Two formats, chosen by the file's suffix (configs/scales/README.md has the details):

* ``.json``: an object with ``scales`` (a list of objects with ``name``, ``positive``,
  ``negative`` and optionally ``factor``, ``norm``, ``pos``, ``note``,
  ``readout_positive``, ``readout_negative``) and optionally ``name``, ``citation``,
  ``licence``, ``note``.
* ``.tsv``: optional ``# key: value`` comment lines (``name``, ``citation``, ``licence``,
  ``note``), then a header row with at least ``name``, ``positive``, ``negative``, then
  one scale per row; several words on a pole are separated by ``|``.

Readout words (``readout_positive``, ``readout_negative``) are optional per scale: words
that read a scale's poles out of a model's logits without being the words that define its
direction (``scripts/choose_readout_words.py`` writes them into ``osgood28`` and ``norms``
by the rule in configs/scales/README.md). A scale has both readout poles or neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jaxsem.errors import InputError
from jaxsem.io import safe_json
from jaxsem.io.norms import NORMS

# configs/ sits beside the jaxsem package both in the repository and in an installed wheel.
SCALES_DIR = Path(__file__).parents[2] / "configs" / "scales"
_FILES = {"osgood28": "osgood28.json", "norms": "norms.json", "wordnet": "wordnet.tsv"}
SCALE_SETS = tuple(_FILES)
FACTORS = ("E", "P", "A")
PARTS_OF_SPEECH = ("adj", "adv", "noun", "verb")
WORD_SEPARATOR = "|"

_TAG_KEYS = ("factor", "norm", "pos", "note")
READOUT_KEYS = ("readout_positive", "readout_negative")
_SCALE_KEYS = ("name", "positive", "negative", *_TAG_KEYS, *READOUT_KEYS)
_SET_KEYS = ("name", "citation", "licence", "note")
# Columns a TSV file may have; ``synsets`` (WordNet sense offsets) is provenance only.
_TSV_COLUMNS = (*_SCALE_KEYS, "synsets")


@dataclasses.dataclass(frozen=True)
class Scale:
  """One bipolar scale.

  Attributes:
    name: Unique name within its set, e.g. ``"good-bad"``.
    positive: Words of the positive pole.
    negative: Words of the negative pole.
    factor: The EPA factor it should load on (``"E"``, ``"P"``, ``"A"``), or None.
    norm: The human-norm column it should track, ``"table:column"`` (e.g.
      ``"warriner:valence"``), or None.
    pos: Part of speech (``"adj"``, ``"adv"``, ``"noun"``, ``"verb"``), or None.
    note: Free text, or None.
    readout_positive: Words that read the positive pole out of a model's logits, none of
      them a word of ``positive`` or ``negative``; empty when the scale has none.
    readout_negative: The same for the negative pole; empty exactly when
      ``readout_positive`` is.
  """

  name: str
  positive: tuple[str, ...]
  negative: tuple[str, ...]
  factor: str | None = None
  norm: str | None = None
  pos: str | None = None
  note: str | None = None
  readout_positive: tuple[str, ...] = ()
  readout_negative: tuple[str, ...] = ()

  @property
  def words(self) -> tuple[str, ...]:
    """The positive words, then the negative words."""
    return self.positive + self.negative

  @property
  def has_readout_words(self) -> bool:
    """Whether the scale has its own readout words (both poles, as validation ensures)."""
    return bool(self.readout_positive or self.readout_negative)


@dataclasses.dataclass(frozen=True)
class ScaleSet:
  """A validated, ordered set of uniquely named scales.

  Attributes:
    name: The set's name (``"osgood28"``; a file's own name or its stem).
    scales: The scales, in file order.
    source: The file they were read from (used in error messages).
    licence: The data's licence, or None.
    citation: Where the scales come from, or None.
    sha256: The hex sha256 of the file's bytes (provenance), or None when the set was not
      read from a file.
  """

  name: str
  scales: tuple[Scale, ...]
  source: str
  licence: str | None = None
  citation: str | None = None
  sha256: str | None = None

  def __post_init__(self):
    validate_scales(self.scales, self.source)

  @property
  def names(self) -> tuple[str, ...]:
    """The scale names, in order."""
    return tuple(s.name for s in self.scales)

  @property
  def factors(self) -> tuple[str | None, ...]:
    """Each scale's factor tag, None where untagged."""
    return tuple(s.factor for s in self.scales)

  @property
  def words(self) -> tuple[str, ...]:
    """Every distinct pole word, in order of first appearance."""
    return tuple(dict.fromkeys(w for s in self.scales for w in s.words))

  @property
  def readout_words_given(self) -> bool:
    """Whether any scale has its own readout words."""
    return any(s.has_readout_words for s in self.scales)

  def __len__(self) -> int:
    return len(self.scales)

  def __iter__(self) -> Iterator[Scale]:
    return iter(self.scales)

  def __getitem__(self, name: str) -> Scale:
    """Returns the scale called ``name``."""
    return self.subset([name]).scales[0]

  def subset(self, names: Iterable[str]) -> ScaleSet:
    """Returns the named scales, in the order given, as a new set.

    Raises:
      InputError: A name is not in this set.
    """
    by_name = {s.name: s for s in self.scales}
    picked = []
    for name in names:
      if name not in by_name:
        raise InputError(f"{self.source} has no scale {name!r}; use one of its names ({_some(self.names)}).")
      picked.append(by_name[name])
    return dataclasses.replace(self, scales=tuple(picked))


def _some(names: Iterable[str], limit: int = 8) -> str:
  """Returns up to ``limit`` names joined by commas, with ``...`` if there are more."""
  names = list(names)
  shown = ", ".join(names[:limit])
  return shown + (", ..." if len(names) > limit else "")


# ---------------------------------------------------------------------------------------
# Validation.


def _check_pole(scale: Scale, side: str, where: str) -> None:
  words = getattr(scale, side)
  if not words:
    raise InputError(f"{where}: scale {scale.name!r} has no {side} words;"
                     " list at least one word on each pole.")
  _check_words(scale, side, where)


def _check_words(scale: Scale, side: str, where: str) -> None:
  words = getattr(scale, side)
  seen = set()
  for word in words:
    if not isinstance(word, str):
      raise InputError(f"{where}: scale {scale.name!r} has the non-string word {word!r} on its {side} pole;"
                       " write every word as a string.")
    if not word.strip() or word != word.strip():
      raise InputError(f"{where}: scale {scale.name!r} has the word {word!r} on its {side} pole;"
                       " words must be non-empty and without surrounding spaces.")
    if word in seen:
      raise InputError(f"{where}: scale {scale.name!r} lists {word!r} twice on its {side} pole; remove one.")
    seen.add(word)


def _check_tags(scale: Scale, where: str) -> None:
  if scale.factor is not None and scale.factor not in FACTORS:
    raise InputError(f"{where}: scale {scale.name!r} has the unknown factor {scale.factor!r};"
                     f" use one of {', '.join(FACTORS)} or leave it out.")
  if scale.norm is not None:
    table, _, column = str(scale.norm).partition(":")
    if table not in NORMS or column not in NORMS[table].columns:
      known = ", ".join(f"{t}:{c}" for t, spec in NORMS.items() for c in spec.columns)
      raise InputError(f"{where}: scale {scale.name!r} has the unknown norm {scale.norm!r};"
                       f" use one of {known} or leave it out.")
  if scale.pos is not None and scale.pos not in PARTS_OF_SPEECH:
    raise InputError(f"{where}: scale {scale.name!r} has the unknown part of speech {scale.pos!r};"
                     f" use one of {', '.join(PARTS_OF_SPEECH)} or leave it out.")


def validate_scale(scale: Scale, where: str) -> None:
  """Checks one scale's name, poles and tags.

  Raises:
    InputError: Naming ``where`` (the file), the scale and the offending word or tag.
  """
  if not isinstance(scale.name, str) or not scale.name.strip():
    raise InputError(f"{where}: a scale has the name {scale.name!r}; give every scale a non-empty name.")
  _check_pole(scale, "positive", where)
  _check_pole(scale, "negative", where)
  negative = set(scale.negative)
  both = [w for w in scale.positive if w in negative]
  if both:
    raise InputError(f"{where}: scale {scale.name!r} has {both[0]!r} on both poles;"
                     " remove it from one of them.")
  _check_tags(scale, where)
  _check_readout(scale, where)


def _check_readout(scale: Scale, where: str) -> None:
  """Readout words: both poles or neither, valid words, none a direction word, none on both."""
  if not scale.has_readout_words:
    return
  for side, other in (READOUT_KEYS, READOUT_KEYS[::-1]):
    if not getattr(scale, side):
      raise InputError(f"{where}: scale {scale.name!r} has {other} words but no {side} words;"
                       " give both readout poles or neither.")
  direction = set(scale.words)
  for side in READOUT_KEYS:
    _check_words(scale, side, where)
    clash = [w for w in getattr(scale, side) if w in direction]
    if clash:
      raise InputError(f"{where}: scale {scale.name!r} has the readout word {clash[0]!r} among its direction"
                       " words; readout words must differ from the scale's positive and negative words.")
  negative = set(scale.readout_negative)
  both = [w for w in scale.readout_positive if w in negative]
  if both:
    raise InputError(f"{where}: scale {scale.name!r} has the readout word {both[0]!r} on both readout poles;"
                     " remove it from one of them.")


def validate_scales(scales: tuple[Scale, ...], where: str) -> None:
  """Checks every scale and that no name repeats.

  Raises:
    InputError: Naming ``where`` (the file) and the offending scale or word.
  """
  if not scales:
    raise InputError(f"{where} has no scales; add at least one.")
  seen = set()
  for scale in scales:
    validate_scale(scale, where)
    if scale.name in seen:
      raise InputError(f"{where}: scale {scale.name!r} is listed twice; give each scale a unique name.")
    seen.add(scale.name)


# ---------------------------------------------------------------------------------------
# Reading files.


def _optional_str(value: Any, what: str, where: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  raise InputError(f"{where}: {what} is {value!r}, not a string; write it as a JSON string.")


def _json_scale(obj: Any, index: int, where: str) -> Scale:
  """Builds one scale from its JSON object (types only; validate_scale checks the rest)."""
  if not isinstance(obj, dict):
    raise InputError(f"{where}: scale number {index + 1} is not a JSON object; write each scale as {{...}}.")
  name = obj.get("name")
  label = f"scale {name!r}" if isinstance(name, str) else f"scale number {index + 1}"
  unknown = [k for k in obj if k not in _SCALE_KEYS]
  if unknown:
    raise InputError(f"{where}: {label} has the unknown key {unknown[0]!r};"
                     f" use only {', '.join(_SCALE_KEYS)}.")
  for key in ("name", "positive", "negative"):
    if key not in obj:
      raise InputError(f"{where}: {label} has no {key!r}; every scale needs name, positive and negative.")
  poles = {}
  for side in ("positive", "negative", *READOUT_KEYS):
    value = obj.get(side, [])
    if not isinstance(value, list):
      raise InputError(f"{where}: {label} has {side} = {value!r}; write each pole as a list of words.")
    poles[side] = tuple(value)
  optional = {k: _optional_str(obj.get(k), f"{label}'s {k}", where) for k in _TAG_KEYS}
  return Scale(name=name, **poles, **optional)


def _read_text(path: Path) -> tuple[str, str]:
  """Returns the file's text and the hex sha256 of its bytes."""
  if not path.exists():
    raise InputError(f"scale file {path} does not exist; pass one of {', '.join(SCALE_SETS)} or an existing"
                     " .json or .tsv file.")
  # Capped like every other JSON side file: a scale set is a few hundred KB at most.
  data = safe_json.read_bytes(path, where=f"scale file {path}", max_bytes=safe_json.MAX_BYTES,
                              fix="check that it is a readable UTF-8 scale file")
  try:
    return data.decode("utf-8"), hashlib.sha256(data).hexdigest()
  except UnicodeDecodeError as e:
    raise InputError(f"cannot read scale file {path} ({e});"
                     " check that it is a readable UTF-8 text file.") from None


def read_json(path: Path) -> ScaleSet:
  """Reads a JSON scale file (see the module docstring).

  Raises:
    InputError: The file is missing, not valid JSON, or breaks the format or the rules.
  """
  where = str(path)
  text, sha256 = _read_text(path)
  try:
    data = safe_json.loads(text, where)  # refuses nesting json would recurse into
  except json.JSONDecodeError as e:
    raise InputError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}); fix the file.") from None
  if not isinstance(data, dict) or not isinstance(data.get("scales"), list):
    raise InputError(f"{where} is not a scale file; it must be a JSON object with a 'scales' list.")
  unknown = [k for k in data if k not in (*_SET_KEYS, "scales")]
  if unknown:
    raise InputError(f"{where} has the unknown top-level key {unknown[0]!r};"
                     f" use only scales, {', '.join(_SET_KEYS)}.")
  meta = {k: _optional_str(data.get(k), f"the file's {k}", where) for k in _SET_KEYS}
  scales = tuple(_json_scale(obj, i, where) for i, obj in enumerate(data["scales"]))
  return ScaleSet(meta["name"] or path.stem, scales, where, meta["licence"], meta["citation"], sha256)


def _tsv_words(cell: str) -> tuple[str, ...]:
  return tuple(w.strip() for w in cell.split(WORD_SEPARATOR)) if cell.strip() else ()


def _tsv_header(lines: list[str], where: str) -> tuple[dict[str, str], int]:
  """Returns the ``# key: value`` metadata and the index of the header row."""
  meta: dict[str, str] = {}
  for i, line in enumerate(lines):
    if not line.startswith("#"):
      return meta, i
    key, sep, value = line[1:].partition(":")
    if sep and key.strip() in _SET_KEYS:
      meta[key.strip()] = value.strip()
  raise InputError(f"{where} has no header row; start it with a tab-separated row of column names"
                   " (name, positive, negative, ...).")


def read_tsv(path: Path) -> ScaleSet:
  """Reads a TSV scale file (see the module docstring).

  Raises:
    InputError: The file is missing, has wrong columns, or breaks the rules.
  """
  where = str(path)
  text, sha256 = _read_text(path)
  lines = text.splitlines()
  meta, start = _tsv_header(lines, where)
  columns = lines[start].split("\t")
  missing = [c for c in _SCALE_KEYS[:3] if c not in columns]
  if missing or any(c not in _TSV_COLUMNS for c in columns) or len(set(columns)) != len(columns):
    raise InputError(f"{where} has the columns {columns}; it needs name, positive and negative, and may add"
                     f" {', '.join(_TSV_COLUMNS[3:])}, each once.")
  scales = []
  for n, line in enumerate(lines[start + 1 :], start=start + 2):
    if not line.strip():
      continue
    cells = line.split("\t")
    if len(cells) != len(columns):
      raise InputError(f"{where}: line {n} has {len(cells)} tab-separated fields, not {len(columns)};"
                       " give every row one field per column.")
    row = dict(zip(columns, cells))
    optional = {k: row.get(k) or None for k in _TAG_KEYS}
    readout = {k: _tsv_words(row.get(k, "")) for k in READOUT_KEYS}
    scales.append(Scale(row["name"], _tsv_words(row["positive"]), _tsv_words(row["negative"]), **optional,
                        **readout))
  name = meta.get("name") or path.stem
  return ScaleSet(name, tuple(scales), where, meta.get("licence"), meta.get("citation"), sha256)


def scale_set_path(name: str) -> Path:
  """Returns the file of a known scale set.

  Raises:
    InputError: ``name`` is not one of SCALE_SETS.
  """
  if name not in _FILES:
    raise InputError(f"unknown scale set {name!r}; use one of {', '.join(SCALE_SETS)} or a path to a .json or"
                     " .tsv scale file.")
  return SCALES_DIR / _FILES[name]


def load_scales(name_or_path: str | os.PathLike) -> ScaleSet:
  """Loads a known scale set by name or a scale file by path.

  Args:
    name_or_path: One of SCALE_SETS (``"osgood28"``, ``"norms"``, ``"wordnet"``), or a
      path to a ``.json`` or ``.tsv`` file in the same format.

  Returns:
    The validated ScaleSet.

  Raises:
    InputError: An unknown name, a missing or malformed file, or a scale that breaks a
      rule (an empty pole, a repeated name, a word on both poles, a non-string word, an
      unknown factor or norm tag, readout words on one pole only, a readout word that is
      one of the scale's direction words or on both readout poles).
  """
  text = os.fspath(name_or_path)
  is_path = not isinstance(name_or_path, str) or text.endswith((".json", ".tsv")) or os.sep in text
  path = Path(text) if is_path else scale_set_path(text)
  if path.suffix == ".json":
    return read_json(path)
  if path.suffix == ".tsv":
    return read_tsv(path)
  raise InputError(f"scale file {path} has neither a .json nor a .tsv suffix; rename it to match its format.")
