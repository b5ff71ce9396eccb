"""JSON side files of model snapshots and user inputs, read with limits a hostile file cannot pass.

    config = safe_json.read_object(path, fix="re-download the file")

Python's ``json`` recurses once per nesting level, so a file of 100,000 ``[`` stops it
with a ``RecursionError``, and a file read whole may be as large as the disk. Here:

* a file is read only if it is a regular file no larger than ``max_bytes``
  (``MAX_BYTES``, 64 MiB, for config-like files; ``MAX_TOKENIZER_BYTES``, 1 GiB, for
  ``tokenizer.json``, whose largest public vocabularies take a few tens of MiB), and
  never more than the size the directory listing gave (a file that grows while being
  read, or a device or pipe, is refused);
* its nesting is measured before parsing, by a scan of its brackets outside strings
  that does not recurse, and more than ``MAX_DEPTH`` (64) levels is refused; real
  configs and tokenizers nest fewer than ten.

Every failure is an ``InputError`` of one sentence that names the file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

import numpy as np

from jaxsem.errors import InputError

MAX_BYTES = 64 << 20
MAX_TOKENIZER_BYTES = 1 << 30
MAX_DEPTH = 64

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_QUOTE, _OPEN_LIST, _OPEN_OBJECT, _CLOSE_LIST, _CLOSE_OBJECT = (ord(c) for c in '"[{]}')
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def nesting_depth(data: bytes | str) -> int:
  """Deepest nesting of ``[`` / ``{`` in JSON text, ignoring brackets inside strings.

  Works on the bytes without recursion, so it is safe for any input; it is only
  meaningful for text that is otherwise valid JSON (malformed text gives some number).
  """
  raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else bytes(data)
  # Drop escape pairs (\" and \\ among them): every quote left opens or closes a string.
  if b"\\" in raw:
    raw = _ESCAPE.sub(b"", raw)
  codes = np.frombuffer(raw, dtype=np.uint8)
  marks = codes[(codes == _QUOTE) | (codes == _OPEN_LIST) | (codes == _OPEN_OBJECT) | (codes == _CLOSE_LIST)
                | (codes == _CLOSE_OBJECT)]
  inside = (np.cumsum(marks == _QUOTE, dtype=np.int64) & 1).astype(bool)
  step = ((marks == _OPEN_LIST) | (marks == _OPEN_OBJECT)).astype(np.int64)
  step -= (marks == _CLOSE_LIST) | (marks == _CLOSE_OBJECT)
  step[inside] = 0
  return int(np.cumsum(step).max(initial=0))


def loads(text: str | bytes, where: str, fix: str = "fix the file") -> Any:
  """Parses JSON text that is nested at most ``MAX_DEPTH`` levels.

  Args:
    text: the JSON text.
    where: what to name in errors (a path, or ``--flag=path``).
    fix: the end of the error sentence, what the user should do.

  Raises:
    InputError: too deeply nested, or not valid JSON.
  """
  depth = nesting_depth(text)
  if depth > MAX_DEPTH:
    raise InputError(f"{where} is nested {depth} levels deep, more than the {MAX_DEPTH} a JSON config "
                     f"may have; {fix}.")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}); {fix}.") from None
  except (ValueError, RecursionError) as e:  # bad UTF-8 in bytes; nesting the scan missed
    raise InputError(f"{where} is not valid JSON ({str(e)[:120]}); {fix}.") from None


def read_bytes(path: str | os.PathLike, *, where: str | None = None, max_bytes: int = MAX_BYTES,
               fix: str = "fix the file") -> bytes:
  """The bytes of a regular file no larger than ``max_bytes``, read no further than its listed size.

  Raises:
    InputError: missing, unreadable, not a regular file, too large, or growing while read.
  """
  where = where or os.fspath(path)
  try:
    info = os.stat(path)  # before opening: opening a pipe would wait for a writer
    if not stat.S_ISREG(info.st_mode):
      raise InputError(f"{where} is not a regular file; {fix}.")
    if info.st_size > max_bytes:
      raise InputError(f"{where} has {info.st_size:,} bytes, more than the {max_bytes:,} allowed for "
                       f"this file; {fix}.")
    with open(path, "rb") as f:
      data = f.read(info.st_size + 1)
  except OSError as e:
    raise InputError(f"{where} cannot be read ({e.strerror or e}); {fix}.") from None
  if len(data) > info.st_size:
    raise InputError(f"{where} grew while it was read (listed as {info.st_size:,} bytes); {fix}.")
  return data


def read_text(path: str | os.PathLike, *, where: str | None = None, max_bytes: int = MAX_BYTES,
              fix: str = "fix the file") -> str:
  """``read_bytes`` decoded as UTF-8 (a byte-order mark is dropped)."""
  where = where or os.fspath(path)
  data = read_bytes(path, where=where, max_bytes=max_bytes, fix=fix)
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise InputError(f"{where} is not UTF-8 text (byte {e.start}); {fix}.") from None


def read(path: str | os.PathLike, *, where: str | None = None, max_bytes: int = MAX_BYTES,
         fix: str = "fix the file") -> Any:
  """Any JSON value from a file, within the size and nesting limits."""
  where = where or os.fspath(path)
  return loads(read_text(path, where=where, max_bytes=max_bytes, fix=fix), where, fix)


def read_object(path: str | os.PathLike, *, where: str | None = None, max_bytes: int = MAX_BYTES,
                fix: str = "fix the file") -> dict[str, Any]:
  """A JSON object from a file (``read``, and the top level must be ``{...}``)."""
  where = where or os.fspath(path)
  data = read(path, where=where, max_bytes=max_bytes, fix=fix)
  if not isinstance(data, dict):
    kind = _JSON_TYPES.get(type(data), "value")
    raise InputError(f"{where} holds a JSON {kind}, not the object expected at the top "
                     f"level; {fix}.")
  return data
