"""Writes readout pole words into configs/scales/osgood28.json and norms.json.

A scale's readout words read its poles out of a model's logits without being the words
whose embeddings define its direction. They are chosen from WordNet 3.0 (Debian's
``wordnet-base`` package installs it in /usr/share/wordnet: data.adj, index.adj,
cntlist.rev) and the tokenizers of the embedded models, by this rule (also in
configs/scales/README.md):

1. Seeds: every word of the pole (osgood28 has one per pole, norms five or six).
2. Senses: the adjective synsets in which a seed has a direct antonym (``!``) that is a
   word of the other pole; for a seed with no such sense, the synsets in which it has any
   direct antonym; for a seed with neither, none. In WordNet these are head synsets, the
   centres of its bipolar adjective clusters, so a scale reads the sense its two poles
   contrast in, not every sense of its words.
3. Candidates: the lemmas of those synsets (the seed's synonyms) and of the satellite
   synsets they point to with similar-to (``&``). Adjective markers such as ``(a)`` are
   dropped. Score: a candidate's SemCor tag count (cntlist.rev) summed over its senses
   among these synsets, each synset counted once.
4. Filters, in order: a single lowercase word (``[a-z]+``); not a direction word
   (``positive`` or ``negative``) of any scale in the same file; a candidate of one pole
   only (a word reached from both poles is dropped from both); exactly one token, with the
   word-initial marker, when encoded after a space, in the tokenizer of every embedded model
   (``jaxsem.analyses.lexicon``'s ``"single"`` policy; that token is then also the word's
   first token as ``jaxsem.analyses.readouts`` reads it); no token shared with a candidate
   of the other pole in any of those tokenizers.
5. Rank by score, highest first, ties in alphabetical order; keep the first four.
6. A scale needs at least two words on each pole. If step 4's file-wide exclusion leaves a
   pole fewer, the scale is chosen again excluding only its own direction words, and its
   note records that (FALLBACK_NOTE). If a pole still has fewer than two, the scale gets no
   readout words and is printed as left out.

    python scripts/choose_readout_words.py [--wordnet-dir DIR] [--check]

Only the ``readout_positive``/``readout_negative`` keys (and the fallback sentence of a
note) change; every file keeps its layout. The output is the same bytes for the same
WordNet files and tokenizers. ``--check`` writes nothing and exits 1 if a file would change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FILES = ("osgood28", "norms")
MIN_WORDS = 2
MAX_WORDS = 4
FALLBACK_NOTE = ("Its readout words avoid only its own direction words: excluding every direction word"
                 " of the file left a readout pole with fewer than 2 words.")
READOUT_KEYS = ("readout_positive", "readout_negative")
_WORD = re.compile(r"[a-z]+")
_MARKER = re.compile(r"\((a|p|ip)\)$")
_ADJECTIVE_SS_TYPES = ("3", "5")  # sense-key ss_type of heads and satellites

TokenIds = Callable[[str], "tuple[int, ...] | None"]


@dataclasses.dataclass(frozen=True)
class Adjectives:
  """The adjective part of WordNet 3.0 that the rule reads.

  Attributes:
    lemmas: synset offset -> its lemmas (markers dropped, ``_`` as a space).
    similar: synset offset -> the offsets it points to with similar-to (``&``).
    antonyms: synset offset -> (word, antonym) for each of its direct antonym pointers.
    senses: lemma (lowercase) -> its adjective synset offsets, in sense-number order.
    tag_counts: (lemma, sense number) -> SemCor tag count, for adjective senses.
  """

  lemmas: Mapping[str, tuple[str, ...]]
  similar: Mapping[str, tuple[str, ...]]
  antonyms: Mapping[str, tuple[tuple[str, str], ...]]
  senses: Mapping[str, tuple[str, ...]]
  tag_counts: Mapping[tuple[str, int], int]

  def tag_count(self, lemma: str, offset: str) -> int:
    """SemCor tag count of ``lemma`` in synset ``offset`` (0 if untagged)."""
    offsets = self.senses.get(lemma.lower().replace(" ", "_"), ())
    if offset not in offsets:
      return 0
    return self.tag_counts.get((lemma.lower().replace(" ", "_"), offsets.index(offset) + 1), 0)


def _data_lines(path: Path) -> Iterable[str]:
  """The lines of a WordNet data or index file after its licence header."""
  with path.open(encoding="utf-8") as f:
    for line in f:
      if not line.startswith("  "):
        yield line


def read_adjectives(wordnet_dir: Path) -> Adjectives:
  """Reads data.adj, index.adj and cntlist.rev from ``wordnet_dir``."""
  lemmas, similar, antonym_pointers = {}, {}, {}
  for line in _data_lines(wordnet_dir / "data.adj"):
    fields = line.split(" | ", 1)[0].split()
    offset, count = fields[0], int(fields[3], 16)
    lemmas[offset] = tuple(_MARKER.sub("", w).replace("_", " ") for w in fields[4 : 4 + 2 * count : 2])
    i = 4 + 2 * count
    pointers = [fields[i + 1 + 4 * k : i + 5 + 4 * k] for k in range(int(fields[i]))]
    similar[offset] = tuple(target for symbol, target, _, _ in pointers if symbol == "&")
    antonym_pointers[offset] = [(int(st[:2], 16), target, int(st[2:], 16))
                                for symbol, target, _, st in pointers if symbol == "!"]
  antonyms = {offset: tuple((lemmas[offset][source - 1], lemmas[target][target_n - 1])
                            for source, target, target_n in pointers if source and target_n)
              for offset, pointers in antonym_pointers.items()}
  senses = {}
  for line in _data_lines(wordnet_dir / "index.adj"):
    fields = line.split()
    synset_count = int(fields[2])
    senses[fields[0]] = tuple(fields[-synset_count:])
  tag_counts = {}
  for line in (wordnet_dir / "cntlist.rev").read_text(encoding="utf-8").splitlines():
    key, number, count = line.split()
    lemma, _, rest = key.partition("%")
    if rest[:1] in _ADJECTIVE_SS_TYPES:
      tag_counts[lemma, int(number)] = int(count)
  return Adjectives(lemmas, similar, antonyms, senses, tag_counts)


def seed_senses(wordnet: Adjectives, seed: str, others: Sequence[str]) -> tuple[str, ...]:
  """Step 2: the synsets in which ``seed`` contrasts with a word of ``others`` (the other pole),
  or else those in which it has any direct antonym."""
  offsets = wordnet.senses.get(seed.lower().replace(" ", "_"), ())

  def antonyms_of_seed(offset: str) -> set[str]:
    pointers = wordnet.antonyms.get(offset, ())
    return {antonym.lower() for word, antonym in pointers if word.lower() == seed.lower()}

  other_pole = {w.lower() for w in others}
  contrasting = tuple(o for o in offsets if antonyms_of_seed(o) & other_pole)
  return contrasting or tuple(o for o in offsets if antonyms_of_seed(o))


def candidates(wordnet: Adjectives, seeds: Sequence[str], others: Sequence[str]) -> dict[str, int]:
  """Steps 2-3 of the rule: each candidate lemma of one pole with its score."""
  reached = set()
  for seed in seeds:
    for offset in seed_senses(wordnet, seed, others):
      reached.add(offset)
      reached.update(wordnet.similar.get(offset, ()))
  scores: dict[str, int] = {}
  for offset in sorted(reached):
    for lemma in dict.fromkeys(wordnet.lemmas[offset]):
      scores[lemma] = scores.get(lemma, 0) + wordnet.tag_count(lemma, offset)
  return scores


def choose_poles(wordnet: Adjectives, positive: Sequence[str], negative: Sequence[str],
                 excluded: set[str], token_ids: TokenIds) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Steps 2-5 for one scale: up to MAX_WORDS readout words per pole (either may be short)."""
  found = candidates(wordnet, positive, negative), candidates(wordnet, negative, positive)
  on_both = found[0].keys() & found[1].keys()
  kept = [{w: n for w, n in pole.items()
           if _WORD.fullmatch(w) and w not in excluded and w not in on_both and token_ids(w) is not None}
          for pole in found]
  tokens = [{(m, t) for w in pole for m, t in enumerate(token_ids(w))} for pole in kept]
  kept = [{w: n for w, n in pole.items() if not {(m, t) for m, t in enumerate(token_ids(w))} & tokens[1 - k]}
          for k, pole in enumerate(kept)]
  ranked = [tuple(sorted(pole, key=lambda w, pole=pole: (-pole[w], w))[:MAX_WORDS]) for pole in kept]
  return ranked[0], ranked[1]


@dataclasses.dataclass(frozen=True)
class Choice:
  """The readout words of one scale; ``own_scale_only`` when the fallback exclusion was used."""

  positive: tuple[str, ...]
  negative: tuple[str, ...]
  own_scale_only: bool = False


def choose(wordnet: Adjectives, scales: Sequence[Mapping[str, Any]],
           token_ids: TokenIds) -> dict[str, Choice | None]:
  """The whole rule for one file's scales (objects with name, positive, negative).

  Returns:
    scale name -> its Choice, or None where a pole has fewer than MIN_WORDS words.
  """
  every = {w for s in scales for w in (*s["positive"], *s["negative"])}
  out: dict[str, Choice | None] = {}
  for s in scales:
    own = set(s["positive"]) | set(s["negative"])
    out[s["name"]] = None
    for excluded, fallback in ((every, False), (own, True)):
      pos, neg = choose_poles(wordnet, s["positive"], s["negative"], excluded, token_ids)
      if len(pos) >= MIN_WORDS and len(neg) >= MIN_WORDS:
        out[s["name"]] = Choice(pos, neg, fallback)
        break
  return out


def single_token_ids(tokenizers: Sequence[Any]) -> TokenIds:
  """A lookup: word -> its one token id in each tokenizer, or None where it is not one token."""
  from jaxsem.analyses import lexicon

  memo: dict[str, tuple[int, ...] | None] = {}

  def token_ids(word: str) -> tuple[int, ...] | None:
    if word not in memo:
      ids = []
      for tokenizer in tokenizers:
        resolved = lexicon.resolve_words(tokenizer, [word], "single")
        ids.append(resolved.used_token_ids[0][0] if resolved.n_used == 1 else None)
      memo[word] = None if None in ids else tuple(ids)
    return memo[word]

  return token_ids


def load_tokenizers(names: Sequence[str] | None = None) -> list[Any]:
  """The tokenizers of the embedded models (default: all of them), read without their params."""
  from jaxsem.io import assets, gguf_file, tokenizer_cache
  from jaxsem.io import tokenizer as tokenizer_lib

  out = []
  for name in names or assets.MODEL_NAMES:
    resolved = assets.resolve_model(name)
    with gguf_file.GGUFFile(resolved.path) as f:
      out.append(tokenizer_cache.cached_tokenizer(
          f.path, build=lambda f=f: tokenizer_lib.tokenizer_from_gguf(f.metadata, f.path)))
  return out


# ---------------------------------------------------------------------------------------
# Rewriting the files.


def _without_fallback(note: str | None) -> str | None:
  if note is None:
    return None
  return note.replace(FALLBACK_NOTE, "").strip() or None


def updated(data: Mapping[str, Any], choices: Mapping[str, Choice | None]) -> dict[str, Any]:
  """A copy of a scale file's JSON with its readout keys (and fallback notes) set from ``choices``."""
  scales = []
  for obj in data["scales"]:
    choice = choices.get(obj["name"])
    note = _without_fallback(obj.get("note"))
    if choice is not None and choice.own_scale_only:
      note = f"{note} {FALLBACK_NOTE}" if note else FALLBACK_NOTE
    new = {}
    for key, value in obj.items():  # the note stays in its place, or goes after the other keys
      if key == "note" and note is not None:
        new[key] = note
      elif key not in (*READOUT_KEYS, "note"):
        new[key] = value
    if note is not None:
      new.setdefault("note", note)
    if choice is not None:
      new.update({"readout_positive": list(choice.positive), "readout_negative": list(choice.negative)})
    scales.append(new)
  return {**data, "scales": scales}


def _dump(value: Any) -> str:
  return json.dumps(value, ensure_ascii=False)


def _scale_text(obj: Mapping[str, Any], one_line: bool) -> str:
  if one_line:
    return "    " + _dump(obj)
  head = [f"{_dump(k)}: {_dump(v)}" for k, v in obj.items() if k != "note" and not isinstance(v, list)]
  rest = [f"{_dump(k)}: {_dump(v)}" for k, v in obj.items() if k == "note"]
  rest += [f"{_dump(k)}: {_dump(v)}" for k, v in obj.items() if isinstance(v, list)]
  return "    {" + ", ".join(head) + ",\n     " + ",\n     ".join(rest) + "}"


def render(data: Mapping[str, Any], one_line: bool) -> str:
  """A scale file's text: top-level keys one per line, then one scale per line (``one_line``)
  or per block (its scalar tags on the first line, the note and each word list on their own)."""
  top = [f"  {_dump(k)}: {_dump(v)}" for k, v in data.items() if k != "scales"]
  scales = ",\n".join(_scale_text(obj, one_line) for obj in data["scales"])
  return "{\n" + ",\n".join([*top, '  "scales": [\n' + scales + "\n  ]"]) + "\n}\n"


def is_one_line(text: str) -> bool:
  """Whether a scale file writes each scale on one line (else its word lists on lines of their own)."""
  return re.search(r'^\s+"positive":', text, re.MULTILINE) is None


def rewrite(text: str, wordnet: Adjectives, token_ids: TokenIds) -> tuple[str, dict[str, Choice | None]]:
  """The new text of one scale file and the choices behind it."""
  data = json.loads(text)
  choices = choose(wordnet, data["scales"], token_ids)
  return render(updated(data, choices), is_one_line(text)), choices


def _summary(name: str, choices: Mapping[str, Choice | None]) -> list[str]:
  lines = []
  for scale, choice in choices.items():
    if choice is None:
      lines.append(f"  {scale}: left out (a readout pole has fewer than {MIN_WORDS} words)")
    else:
      how = " [own direction words only]" if choice.own_scale_only else ""
      lines.append(f"  {scale}: {', '.join(choice.positive)} | {', '.join(choice.negative)}{how}")
  left_out = [s for s, c in choices.items() if c is None]
  lines.append(f"{name}: {len(choices) - len(left_out)} of {len(choices)} scales have readout words;"
               f" left out: {', '.join(left_out) or 'none'}")
  return lines


def main(argv: list[str] | None = None) -> int:
  repo = Path(__file__).resolve().parent.parent
  sys.path.insert(0, str(repo))  # run from a checkout without installing
  from jaxsem.io import scales as scales_io

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"),
                      help="directory with data.adj, index.adj and cntlist.rev")
  parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
  args = parser.parse_args(argv)
  missing = [f for f in ("data.adj", "index.adj", "cntlist.rev") if not (args.wordnet_dir / f).is_file()]
  if missing:
    parser.error(f"{args.wordnet_dir} lacks {missing[0]}; install WordNet 3.0 (Debian: wordnet-base)"
                 " or pass --wordnet-dir")
  wordnet = read_adjectives(args.wordnet_dir)
  token_ids = single_token_ids(load_tokenizers())
  changed = []
  for name in FILES:
    path = scales_io.scale_set_path(name)
    old = path.read_text(encoding="utf-8")
    new, choices = rewrite(old, wordnet, token_ids)
    print("\n".join(_summary(name, choices)))
    if new != old:
      changed.append(path)
      if not args.check:
        path.write_text(new, encoding="utf-8")
        scales_io.load_scales(path)  # the loader's rules hold
  verb = "would change" if args.check else "rewrote"
  print(f"{verb}: {', '.join(str(p) for p in changed) or 'nothing'}")
  return 1 if args.check and changed else 0


if __name__ == "__main__":
  sys.exit(main())
