"""Writes every direct antonym pair of WordNet 3.0 to configs/scales/wordnet.tsv.

Reads the four WordNet data files (data.adj, data.adv, data.noun, data.verb; Debian's
``wordnet-base`` package installs them in /usr/share/wordnet) and keeps every antonym
pointer (``!``). All of WordNet's antonym pointers are lexical: they link one word of a
synset to one word of another, so each gives a word pair.

    python scripts/extract_wordnet_antonyms.py [--wordnet-dir DIR] [--out FILE]

Rules (also in configs/scales/README.md):

* A pair is one pair of words within one part of speech; the sense pairs that link the
  same two words are merged into one row, and a pointer and its reverse are one pair.
* Orientation: the files are read in the order adj, adv, noun, verb, each in file
  (offset) order, and the first pointer seen for a pair makes its source word the
  positive pole. Later rows for the same two words in another part of speech keep that
  orientation. The poles of WordNet pairs are therefore not evaluative.
* A pointer between two senses of one word (only ``kern``, verb) is left out: it gives
  no direction between words.
* Words: adjective markers ``(a)``, ``(p)``, ``(ip)`` are dropped, ``_`` becomes a space,
  and case is kept as in the data files.
* Names are ``positive-negative``; a name already taken by an earlier part of speech gets
  ``.pos`` appended (``good-bad`` for the adjectives, ``good-bad.noun`` for the nouns).
* ``synsets`` lists the sense pairs as ``positive_offset-negative_offset``, comma
  separated, in ascending order.
* Rows are sorted by part of speech (adj, adv, noun, verb), then by name.

The output is the same bytes for the same input files.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

POS_ORDER = ("adj", "adv", "noun", "verb")
POINTER_POS = {"a": "adj", "s": "adj", "r": "adv", "n": "noun", "v": "verb"}
_MARKER = re.compile(r"\((a|p|ip)\)$")
HEADER_COMMENTS = (
    "# name: wordnet",
    "# citation: Princeton University (2010). About WordNet. WordNet 3.0. https://wordnet.princeton.edu/;"
    " Miller, G. A. (1995). WordNet: a lexical database for English. Communications of the ACM, 38(11),"
    " 39-41.",
    "# licence: WordNet 3.0 license, see WORDNET_LICENSE",
    "# note: every direct (lexical) antonym pair of WordNet 3.0, written by"
    " scripts/extract_wordnet_antonyms.py; see README.md for the rules",
)
COLUMNS = ("name", "positive", "negative", "pos", "synsets")

Sense = tuple[str, str, str]  # (pos, synset offset, word)


def clean_word(raw: str) -> str:
  """Returns a data-file lemma without its adjective marker and with spaces for ``_``."""
  return _MARKER.sub("", raw).replace("_", " ")


def parse_synset(line: str) -> tuple[str, list[str], list[tuple[str, str, str, str]]]:
  """Parses one data-file line into (offset, words, pointers).

  Each pointer is (symbol, target offset, target pos letter, source/target hex).
  """
  fields = line.split(" | ", 1)[0].split()
  offset, word_count = fields[0], int(fields[3], 16)
  words = [clean_word(w) for w in fields[4 : 4 + 2 * word_count : 2]]
  i = 4 + 2 * word_count
  pointer_count = int(fields[i])
  pointers = [tuple(fields[i + 1 + 4 * k : i + 5 + 4 * k]) for k in range(pointer_count)]
  return offset, words, pointers


def read_data_file(path: Path) -> Iterator[tuple[str, list[str], list[tuple[str, str, str, str]]]]:
  """Yields the parsed synsets of one data file in file order, skipping the licence header."""
  with path.open(encoding="utf-8") as f:
    for line in f:
      if not line.startswith("  "):
        yield parse_synset(line)


def antonym_pointers(wordnet_dir: Path) -> list[tuple[Sense, Sense]]:
  """Returns every antonym pointer as (source sense, target sense), in reading order."""
  words: dict[tuple[str, str], list[str]] = {}
  raw: list[tuple[str, str, int, str, str, int]] = []
  for pos in POS_ORDER:
    for offset, synset_words, pointers in read_data_file(wordnet_dir / f"data.{pos}"):
      words[pos, offset] = synset_words
      for symbol, target, target_pos, source_target in pointers:
        if symbol == "!":
          source_n, target_n = int(source_target[:2], 16), int(source_target[2:], 16)
          raw.append((pos, offset, source_n, POINTER_POS[target_pos], target, target_n))
  pairs = []
  for pos, offset, source_n, target_pos, target, target_n in raw:
    if source_n == 0 or target_n == 0:
      raise ValueError(f"semantic antonym pointer at {pos} {offset}; expected only lexical ones")
    source_word = words[pos, offset][source_n - 1]
    target_word = words[target_pos, target][target_n - 1]
    pairs.append(((pos, offset, source_word), (target_pos, target, target_word)))
  return pairs


def group_pairs(pointers: list[tuple[Sense, Sense]]) -> list[dict[str, str]]:
  """Merges pointers into one oriented row per (pos, word pair), named and sorted."""
  orientation: dict[frozenset[str], tuple[str, str]] = {}
  rows: dict[tuple[str, frozenset[str]], dict] = {}
  for source, target in pointers:
    pos = source[0]
    if source[2] == target[2]:
      continue  # one word in two senses (only kern, verb): no direction between words
    key = frozenset((source[2], target[2]))
    positive, _ = orientation.setdefault(key, (source[2], target[2]))
    pos_sense, neg_sense = (source, target) if source[2] == positive else (target, source)
    new_row = {"positive": pos_sense[2], "negative": neg_sense[2], "pos": pos, "synsets": set()}
    row = rows.setdefault((pos, key), new_row)
    row["synsets"].add(f"{pos_sense[1]}-{neg_sense[1]}")
  taken: set[str] = set()
  out = []
  in_order = sorted(rows.values(), key=lambda r: (POS_ORDER.index(r["pos"]), r["positive"], r["negative"]))
  for row in in_order:
    pos = row["pos"]
    name = f"{row['positive']}-{row['negative']}"
    if name in taken:
      name = f"{name}.{pos}"
    if name in taken:
      raise ValueError(f"scale name {name!r} repeats within one part of speech")
    taken.add(name)
    out.append({**row, "name": name, "synsets": ",".join(sorted(row["synsets"]))})
  return sorted(out, key=lambda r: (POS_ORDER.index(r["pos"]), r["name"]))


def render_tsv(rows: list[dict[str, str]]) -> str:
  """Returns the file's text: comment header, column header, one line per pair."""
  lines = [*HEADER_COMMENTS, "\t".join(COLUMNS)]
  lines += ["\t".join(row[c] for c in COLUMNS) for row in rows]
  return "\n".join(lines) + "\n"


def extract(wordnet_dir: Path) -> str:
  """Returns the text of wordnet.tsv for the WordNet data files in ``wordnet_dir``."""
  return render_tsv(group_pairs(antonym_pointers(wordnet_dir)))


def count_by_pos(rows: list[dict[str, str]]) -> dict[str, int]:
  """Returns the number of rows per part of speech, in POS_ORDER."""
  return {pos: sum(row["pos"] == pos for row in rows) for pos in POS_ORDER}


def main(argv: list[str] | None = None) -> None:
  repo = Path(__file__).resolve().parent.parent
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"),
                      help="directory with data.adj, data.adv, data.noun, data.verb")
  parser.add_argument("--out", type=Path, default=repo / "configs" / "scales" / "wordnet.tsv")
  args = parser.parse_args(argv)
  missing = [p for p in POS_ORDER if not (args.wordnet_dir / f"data.{p}").is_file()]
  if missing:
    parser.error(f"{args.wordnet_dir} lacks data.{missing[0]}; install WordNet 3.0 (Debian: wordnet-base)"
                 " or pass --wordnet-dir")
  rows = group_pairs(antonym_pointers(args.wordnet_dir))
  args.out.write_text(render_tsv(rows), encoding="utf-8", newline="\n")
  counts = count_by_pos(rows)
  per_pos = ", ".join(f"{pos} {n}" for pos, n in counts.items())
  print(f"wrote {args.out}: {sum(counts.values())} pairs ({per_pos})")


if __name__ == "__main__":
  main()
