"""GGUF tokenizers kept as ``tokenizers`` JSON, so that later loads need not rebuild them.

Rebuilding a SentencePiece tokenizer from GGUF metadata derives its merges from the
pieces in Python (about 1.1 s for Gemma 3's 262k pieces); reading the ``tokenizers``
library's own JSON back takes about 0.7 s (merges kept as ``"a b"`` strings). With the params cache, that rebuild would
otherwise be the longest part of a cached ``jaxsem.load``.

A file ``cache_dir()/tokenizers/<source sha256>-<fingerprint>.json`` holds one JSON line
of the facts ``Tokenizer`` keeps beside its backend (BOS/EOS/pad ids, word-initial
marker, kind, pre-tokenizer), then the ``tokenizers`` JSON itself, which is handed to
the library as it is (not parsed by Python first). The fingerprint covers this format, the source of
``jaxsem.io.tokenizer`` and the ``tokenizers`` version, so a change to either rebuilds
it. A file is written only after a self-check (the copy read back has the same fields
and encodes probe texts the same), atomically, by process 0; one that cannot be read
costs a warning line and is rewritten. It is JSON only: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from tokenizers import Tokenizer as Backend

from jaxsem.io import host_memory
from jaxsem.io import params_cache
from jaxsem.io import tokenizer as tokenizer_lib
from jaxsem.io.cache import atomic_write_text, cache_dir

FORMAT_VERSION = 3
_PROBES = ("The capital of France is", "  two  spaces\tand a tab\n", "naïve café 東京 🤖", "x=12345; y=0.5")


def fingerprint() -> str:
  """12 hex digits of this format, ``jaxsem.io.tokenizer``'s source and the tokenizers version."""
  import tokenizers

  digest = hashlib.sha256(f"jaxsem tokenizer cache v{FORMAT_VERSION} tokenizers {tokenizers.__version__}\n"
                          .encode())
  digest.update(Path(tokenizer_lib.__file__).read_bytes())
  return digest.hexdigest()[:12]


def path_for(source_sha: str) -> Path:
  """Where the tokenizer of the file with sha256 ``source_sha`` is kept."""
  return cache_dir() / "tokenizers" / f"{source_sha}-{fingerprint()}.json"


def _fields(tokenizer: tokenizer_lib.Tokenizer) -> dict[str, Any]:
  """Everything a Tokenizer holds beside its backend, as the constructor takes it."""
  provenance = tokenizer.provenance()
  return {"kind": provenance["kind"], "pre_tokenizer": provenance["pre_tokenizer"],
          "word_initial_marker": tokenizer.word_initial_marker, "bos_id": tokenizer.bos_id,
          "eos_ids": list(tokenizer.eos_ids), "pad_id": tokenizer.pad_id}


def _record(fields: dict[str, Any], backend_json: str) -> str:
  """The file's text: one JSON line of format and fields, then the backend's own JSON."""
  return json.dumps({"format": FORMAT_VERSION, "fields": fields}, ensure_ascii=False) + "\n" + backend_json + "\n"


def _from_record(text: str, source: str) -> tokenizer_lib.Tokenizer:
  head, _, backend_json = text.partition("\n")
  record = json.loads(head)
  if record.get("format") != FORMAT_VERSION:
    raise ValueError(f"format {record.get('format')!r}")
  fields = dict(record["fields"])
  fields["eos_ids"] = tuple(fields["eos_ids"])
  backend = Backend.from_str(backend_json)
  return tokenizer_lib.Tokenizer(backend, source=source, **fields)


def _same(a: tokenizer_lib.Tokenizer, b: tokenizer_lib.Tokenizer) -> bool:
  """Same attributes (besides the backend) and the same encodings of the probe texts."""
  state = lambda t: {k: v for k, v in vars(t).items() if k != "backend"}  # noqa: E731
  return state(a) == state(b) and all(a.encode_batch(_PROBES, add_special_tokens=special) ==
                                      b.encode_batch(_PROBES, add_special_tokens=special)
                                      for special in (True, False))


def _compact_merges(backend_json: str) -> str:
  """The backend JSON with BPE merges as ``"a b"`` strings where no piece holds a space.

  ``tokenizers`` writes merges as pairs, but reads its older one-string form about a
  third faster (0.7 s instead of 1.1 s for Gemma 3's 515k merges). Pieces with a space
  would be ambiguous in that form, so then the pairs are kept.
  """
  backend = json.loads(backend_json)
  model = backend.get("model") or {}
  merges = model.get("merges")
  if model.get("type") != "BPE" or not merges or not all(isinstance(m, list) for m in merges):
    return backend_json
  if any(" " in piece for pair in merges for piece in pair):
    return backend_json
  model["merges"] = [" ".join(pair) for pair in merges]
  return json.dumps(backend, ensure_ascii=False)


def save(path: str | os.PathLike, tokenizer: tokenizer_lib.Tokenizer) -> bool:
  """Writes ``tokenizer`` to ``path`` if it survives the round trip; returns whether it did."""
  text = _record(_fields(tokenizer), _compact_merges(tokenizer.backend.to_str()))
  if not _same(_from_record(text, tokenizer.provenance()["source"]), tokenizer):
    return False
  atomic_write_text(path, text)
  return True


def restore(path: str | os.PathLike, source: str) -> tokenizer_lib.Tokenizer | None:
  """The tokenizer kept at ``path`` (None if there is none), with ``source`` as its provenance.

  Raises:
    ValueError: If the file exists but is not a tokenizer record.
  """
  try:
    text = Path(path).read_text(encoding="utf-8")
  except FileNotFoundError:
    return None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"cannot read it ({e})") from None
  try:
    return _from_record(text, source)
  except Exception as e:  # any damage: bad JSON, missing fields, a backend tokenizers rejects
    raise ValueError(f"not a tokenizer record ({type(e).__name__}: {str(e)[:120]})") from None


def cached_tokenizer(source: str | os.PathLike, build: Callable[[], tokenizer_lib.Tokenizer], *,
                     use_cache: bool = True) -> tokenizer_lib.Tokenizer:
  """The tokenizer of a GGUF file from the cache, or from ``build()`` and then cached.

  Args:
    source: The GGUF file (its sha256 is the key).
    build: Rebuilds the tokenizer from the file's metadata.
    use_cache: False always builds (as does ``$JAXSEM_PARAMS_CACHE=0``).
  """
  if not params_cache.enabled(use_cache):
    return build()
  try:
    path = path_for(params_cache.source_sha256(source))
  except Exception:  # an unusable cache dir: the params cache reports it
    return build()
  try:
    cached = restore(path, str(source))
  except ValueError as e:
    cached = None
    if jax.process_index() == 0:
      print(f"jaxsem: warning: tokenizer cache file {path} is damaged ({e}); rebuilding it.",
            file=sys.stderr, flush=True)
  if cached is not None:
    host_memory.trim()  # parsing the JSON leaves a few hundred MB of freed heap behind
    return cached
  tokenizer = build()
  if jax.process_index() == 0:
    with contextlib.suppress(OSError):
      save(path, tokenizer)
      for stale in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.json"):
        if stale != path:
          stale.unlink()
  return tokenizer
