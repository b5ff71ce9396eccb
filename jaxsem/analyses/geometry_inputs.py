"""The human inputs of the geometry relation: which scales carry a norm tag, and the tagged columns of
the norm tables aligned by word.

``geometry.run_geometry`` and the layer run (``layers_geometry``) read their rated words here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxsem.io import norms


def tagged_scales(scale_set, tables) -> tuple[list[Any], dict[str, str]]:
  """The scales whose ``norm`` tag names a table of ``tables`` (empty: any table), and why others left.

  Returns:
    (scales in file order, scale name -> reason for every scale left out).
  """
  kept, left = [], {}
  for s in scale_set:
    if not s.norm:
      left[s.name] = "no norm tag"
    elif tables and s.norm.partition(":")[0] not in tables:
      left[s.name] = f"tagged {s.norm}, a table not among --norms"
    else:
      kept.append(s)
  return kept, left


@dataclasses.dataclass(frozen=True)
class RatedWords:
  """Every rated word of the tables used, with the tagged columns side by side.

  Attributes:
    words: the union of the tables' words (first occurrence kept), ``N`` of them.
    columns: ``"table:column"`` -> ``[N]`` ratings (NaN where the table does not rate the word).
    tables: table -> ``[N]`` bool, the words it rates.
  """

  words: tuple[str, ...]
  columns: dict[str, np.ndarray]
  tables: dict[str, np.ndarray]


def rated_words(tags, words=None) -> RatedWords:
  """Reads every table named by ``tags`` (``"table:column"``) and aligns the tagged columns by word.

  Args:
    tags: ``"table:column"`` names.
    words: the word universe (first occurrence kept); None: the union of the tables' words. A word
      no table rates is kept with NaN ratings; a table's words outside ``words`` are left out.
  """
  by_table: dict[str, list[str]] = {}
  for tag in dict.fromkeys(tags):
    table, _, column = tag.partition(":")
    by_table.setdefault(table, []).append(column)
  index: dict[str, int] = {} if words is None else {w: i for i, w in enumerate(dict.fromkeys(words))}
  read = {}
  for table in by_table:
    table_words, cols = norms.read_norms(table)
    read[table] = (table_words, cols)
    if words is None:
      for w in table_words:
        index.setdefault(w, len(index))
  n = len(index)
  columns, rates = {}, {}
  for table, wanted in by_table.items():
    table_words, cols = read[table]
    first = {}
    for i, w in enumerate(table_words):
      if w in index:
        first.setdefault(w, i)
    rows = np.fromiter((index[w] for w in first), np.int64, len(first))
    src = np.fromiter(first.values(), np.int64, len(first))
    rates[table] = np.zeros(n, bool)
    rates[table][rows] = True
    for column in wanted:
      y = np.full(n, np.nan)
      y[rows] = np.asarray(cols[column], np.float64)[src]
      columns[f"{table}:{column}"] = y
  return RatedWords(words=tuple(index), columns=columns, tables=rates)
