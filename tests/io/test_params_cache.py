"""The params cache (``jaxsem.models.params_cache`` over the array store ``jaxsem.io.params_cache``):
bitwise round trips, other meshes, keys, damaged entries, switches."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

import jaxsem
from jaxsem.io import cache, packages
from jaxsem.io import params_cache as store
from jaxsem.models import params as params_lib
from jaxsem.models import params_cache
from tests import gguf_fixtures as fx

VOCAB = 99  # pads to 100 on model:4 and to 104 on model:8



def _write_toy(path: Path, seed: int = 0) -> str:
  config = dataclasses.replace(fx.tiny_gemma3_config(vocab_size=VOCAB, n_layers=2), tie_embeddings=False)
  return fx.write_gguf(path, config, fx.random_params(config, seed=seed), types="Q8_0")


@pytest.fixture
def toy(tmp_path: Path) -> str:
  return _write_toy(tmp_path / "toy.gguf")


def _assert_same_params(got: dict, want: dict) -> None:
  """Bitwise equality of every leaf, with equal shapes, dtypes and shardings."""
  got, want = params_lib.flatten(got), params_lib.flatten(want)
  assert set(got) == set(want)
  for path, leaf in want.items():
    assert got[path].shape == leaf.shape and got[path].dtype == leaf.dtype, path
    assert got[path].sharding.is_equivalent_to(leaf.sharding, leaf.ndim), path
    a, b = np.asarray(got[path]), np.asarray(leaf)
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), path


def _warnings(captured: str) -> list[str]:
  return [line for line in captured.splitlines() if "warning" in line.lower()]


def _entry(model: jaxsem.Model) -> Path:
  return Path(model.provenance["params_cache"]["path"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_second_load_restores_bitwise_equal_params(cache_root, toy, dtype, capsys):
  first = jaxsem.load(toy, dtype=dtype)
  assert first.provenance["params_cache"]["hit"] is False
  entry = _entry(first)
  assert entry.parent == cache_root / "params" and entry.name.split("-")[1] == dtype
  meta = json.loads((entry / store.META).read_text())
  assert meta["key"] == entry.name and meta["dtype"] == dtype
  rows = first.params["embed"].shape[0]  # padded to the mesh's model axis
  assert rows >= VOCAB and meta["leaves"]["embed"] == {"shape": [rows, 64], "dtype": dtype}

  second = jaxsem.load(toy, dtype=dtype)
  info = second.provenance["params_cache"]
  assert info["hit"] is True and info["path"] == str(entry) and info["seconds"] >= 0
  assert second.params["blocks"]["q"].dtype == (ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
  _assert_same_params(second.params, jaxsem.load(toy, dtype=dtype, params_cache=False).params)
  assert second.config == first.config
  assert second.tokenizer.encode("<t5><t7>") == first.tokenizer.encode("<t5><t7>")
  assert not _warnings(capsys.readouterr().err)


@pytest.mark.parametrize("save_mesh, restore_mesh", [
    (None, "data:2,model:4"),
    ("data:2,model:4", "data:1,model:8"),
    ("data:1,model:8", None),
    ("data:1,model:8", "data:2,model:4"),
])
def test_restores_onto_another_mesh(cache_root, toy, save_mesh, restore_mesh):
  saved = jaxsem.load(toy, mesh=save_mesh)
  restored = jaxsem.load(toy, mesh=restore_mesh)
  assert restored.provenance["params_cache"]["hit"] is True
  assert _entry(restored) == _entry(saved)
  direct = jaxsem.load(toy, mesh=restore_mesh, params_cache=False)
  _assert_same_params(restored.params, direct.params)
  for leaf in ("embed", "unembed"):
    assert not np.asarray(restored.params[leaf])[VOCAB:].any()  # padding rows are zero


def test_each_device_gets_only_its_vocab_rows(cache_root, toy):
  jaxsem.load(toy)
  restored = jaxsem.load(toy, mesh="data:1,model:8")
  embed = restored.params["embed"]
  assert embed.shape == (104, 64)
  assert {shard.data.shape for shard in embed.addressable_shards} == {(13, 64)}


def test_changed_source_file_is_a_miss(cache_root, tmp_path):
  path = _write_toy(tmp_path / "m.gguf", seed=0)
  old = jaxsem.load(path)
  os.utime(path)  # a new mtime alone: hashed again, same bytes, same entry
  touched = jaxsem.load(path)
  assert touched.provenance["params_cache"]["hit"] is True and _entry(touched) == _entry(old)

  _write_toy(tmp_path / "m.gguf", seed=1)
  new = jaxsem.load(path)
  assert new.provenance["params_cache"]["hit"] is False
  assert _entry(new) != _entry(old)
  assert not np.array_equal(np.asarray(new.params["embed"]), np.asarray(old.params["embed"]))
  _assert_same_params(new.params, jaxsem.load(path, params_cache=False).params)


def test_key_has_source_dtype_and_loader_code(monkeypatch):
  sha = "ab" * 32
  assert params_cache.key(sha, "float32").startswith(sha + "-float32-")
  assert params_cache.key(sha, "float32") != params_cache.key(sha, "bfloat16")
  before = params_cache.loader_fingerprint()
  monkeypatch.setattr(params_cache, "LOADER_MODULES", params_cache.LOADER_MODULES + ("jaxsem.io.cache",))
  assert params_cache.loader_fingerprint() != before
  monkeypatch.setattr(store, "FORMAT_VERSION", store.FORMAT_VERSION + 1)
  assert params_cache.loader_fingerprint() != before


def test_key_covers_every_module_that_shapes_the_params(monkeypatch):
  families_dir = Path(jaxsem.__file__).parent / "models" / "families"
  on_disk = {f"jaxsem.models.families.{p.stem}" for p in families_dir.glob("*.py") if p.stem != "__init__"}
  modules = set(params_cache.LOADER_MODULES)
  assert on_disk <= modules and "jaxsem.models.families" in modules
  shaping = {"jaxsem.models.hf_load", "jaxsem.models.gguf_load", "jaxsem.models.families.leaf_table",
             "jaxsem.io.dequant", "jaxsem.io.gguf_file", "jaxsem.io.hf_checkpoint"}
  assert shaping <= modules
  assert all(store.module_source(name) for name in params_cache.LOADER_MODULES)  # each one is found
  real, before = store.module_source, params_cache.key("ab" * 32, "float32")
  for name in params_cache.LOADER_MODULES:
    monkeypatch.setattr(store, "module_source", lambda m, name=name: real(m) + (b"#" if m == name else b""))
    assert params_cache.key("ab" * 32, "float32") != before, name
  monkeypatch.setattr(store, "module_source", real)
  assert params_cache.key("ab" * 32, "float32") == before


@pytest.mark.parametrize("module", ["jaxsem.models.families.gemma3", "jaxsem.models.families.qwen3"])
def test_changed_family_code_invalidates_the_entry(cache_root, toy, module, monkeypatch):
  old = _entry(jaxsem.load(toy))
  assert jaxsem.load(toy).provenance["params_cache"]["hit"] is True
  real = store.module_source

  def changed(name: str) -> bytes:
    return real(name) + (b"\n# fixed" if name == module else b"")

  monkeypatch.setattr(store, "module_source", changed)
  new = jaxsem.load(toy)
  assert new.provenance["params_cache"]["hit"] is False
  assert _entry(new) != old and _entry(new).name.rsplit("-", 1)[0] == old.name.rsplit("-", 1)[0]
  assert not old.exists()  # the entry of the older code is removed
  assert jaxsem.load(toy).provenance["params_cache"]["hit"] is True


def test_file_sha256_is_remembered_until_the_file_changes(tmp_path):
  path, records = tmp_path / "f.bin", tmp_path / "records"
  path.write_bytes(b"one")
  assert store.file_sha256(path, records) == packages.sha256_file(path)
  (record,) = records.iterdir()
  data = json.loads(record.read_text())
  record.write_text(json.dumps({**data, "sha256": "remembered"}))
  assert store.file_sha256(path, records) == "remembered"  # only stat'ed
  path.write_bytes(b"two")
  assert store.file_sha256(path, records) == packages.sha256_file(path)


def _garbage_meta(entry: Path) -> None:
  (entry / store.META).write_text("{not json")


def _wrong_config_meta(entry: Path) -> None:
  meta = json.loads((entry / store.META).read_text())
  meta["config"]["d_model"] = 65
  (entry / store.META).write_text(json.dumps(meta))


def _delete_data(entry: Path) -> None:
  for path in (entry / store.ORBAX_DIR).rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.unlink()


def _truncate_data(entry: Path) -> None:
  for path in (entry / store.ORBAX_DIR).rglob("*"):
    if path.is_file() and path.parent.name == "d":
      os.truncate(path, path.stat().st_size // 3)


def _delete_orbax_metadata(entry: Path) -> None:
  (entry / store.ORBAX_DIR / "_METADATA").unlink()


def _delete_manifests(entry: Path) -> None:
  for path in (entry / store.ORBAX_DIR).rglob("manifest.ocdbt"):
    path.unlink()


@pytest.mark.parametrize("damage", [_garbage_meta, _wrong_config_meta, _delete_data, _truncate_data,
                                    _delete_orbax_metadata, _delete_manifests])
def test_damaged_entry_warns_once_loads_from_source_and_is_rewritten(cache_root, toy, damage, capsys):
  entry = _entry(jaxsem.load(toy, mesh="data:2,model:4"))
  damage(entry)
  capsys.readouterr()

  model = jaxsem.load(toy, mesh="data:2,model:4")
  err = capsys.readouterr().err
  assert model.provenance["params_cache"]["hit"] is False
  assert len(_warnings(err)) == 1 and str(entry) in _warnings(err)[0], err
  assert "Traceback" not in err
  _assert_same_params(model.params, jaxsem.load(toy, mesh="data:2,model:4", params_cache=False).params)

  again = jaxsem.load(toy, mesh="data:2,model:4")
  assert again.provenance["params_cache"]["hit"] is True
  _assert_same_params(again.params, model.params)
  assert not _warnings(capsys.readouterr().err)


def test_entry_without_meta_does_not_count_and_is_rebuilt_quietly(cache_root, toy, capsys):
  entry = _entry(jaxsem.load(toy))
  (entry / store.META).unlink()  # as if the saving process died before the meta
  model = jaxsem.load(toy)
  assert model.provenance["params_cache"]["hit"] is False
  assert (entry / store.META).is_file()
  assert not _warnings(capsys.readouterr().err)
  assert jaxsem.load(toy).provenance["params_cache"]["hit"] is True


def test_failed_save_leaves_no_entry(cache_root, toy, monkeypatch, capsys):
  def fail(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(store, "atomic_write_text", fail)
  model = jaxsem.load(toy)
  err = capsys.readouterr().err
  assert len(_warnings(err)) == 1 and "could not save" in err
  assert model.provenance["params_cache"]["path"] is None
  assert not [p for p in (cache_root / "params").iterdir() if p.is_dir() and p.name != "sources"]
  monkeypatch.undo()


def test_entries_of_older_loader_code_are_removed(cache_root, toy):
  entry = _entry(jaxsem.load(toy))
  stale = entry.with_name(entry.name.rsplit("-", 1)[0] + "-000000000000")
  entry.rename(stale)
  fresh = jaxsem.load(toy)
  assert fresh.provenance["params_cache"]["hit"] is False
  assert _entry(fresh) == entry and entry.is_dir() and not stale.exists()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_disabled_cache_writes_nothing(cache_root, toy, how, monkeypatch):
  if how == "environment":
    monkeypatch.setenv(store.ENV, "0")
  model = jaxsem.load(toy, params_cache=how != "argument")
  assert model.provenance["params_cache"] == {"hit": False, "path": None, "seconds": 0.0, "enabled": False}
  assert not (cache_root / "params").exists()


def test_unwritable_cache_dir_warns_and_loads(tmp_path, toy, monkeypatch, capsys):
  blocker = tmp_path / "not-a-dir"
  blocker.write_text("")
  monkeypatch.setenv(cache.CACHE_ENV, str(blocker / "cache"))
  monkeypatch.delenv(store.ENV, raising=False)
  model = jaxsem.load(toy)
  err = capsys.readouterr().err
  assert len(_warnings(err)) == 1 and "params cache" in err and "Traceback" not in err
  assert model.provenance["params_cache"]["hit"] is False
  _assert_same_params(model.params, jaxsem.load(toy, params_cache=False).params)


def test_is_valid_checks_key_dtype_and_shapes(cache_root, toy):
  model = jaxsem.load(toy)
  entry, config = _entry(model), model.config
  assert params_cache.is_valid(entry, entry.name, config, "float32") == (True, None)
  assert params_cache.is_valid(entry, entry.name + "x", config, "float32")[0] is False
  assert params_cache.is_valid(entry, entry.name, config, "bfloat16")[0] is False
  bigger = dataclasses.replace(config, vocab_size=VOCAB + 1)
  assert params_cache.is_valid(entry, entry.name, bigger, "float32")[0] is False
  assert params_cache.is_valid(entry.with_name("absent"), "absent", config, "float32") == (False, None)


@pytest.mark.slow
def test_embedded_model_round_trip_and_mesh(cache_root):
  name = "smollm2-135m-instruct"
  first = jaxsem.load(name)
  assert first.provenance["params_cache"]["hit"] is False
  second = jaxsem.load(name)
  assert second.provenance["params_cache"]["hit"] is True
  _assert_same_params(second.params, first.params)
  sharded = jaxsem.load(name, mesh="data:2,model:4")
  assert sharded.provenance["params_cache"]["hit"] is True
  _assert_same_params(sharded.params, jaxsem.load(name, mesh="data:2,model:4", params_cache=False).params)
  prompts = ["The capital of France is"]
  np.testing.assert_array_equal(second.next_token_logits(prompts), first.next_token_logits(prompts))
  jax.clear_caches()


def test_reader_matches_orbax_restore(cache_root, toy):
  import orbax.checkpoint as ocp

  entry = _entry(jaxsem.load(toy, mesh="data:1,model:8"))  # stores 104 vocab rows
  model = jaxsem.load(toy, mesh="data:2,model:4")  # wants 100
  leaves = params_lib.flatten(model.params)
  items = {p: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for p, x in leaves.items()}
  args = {p: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype, strict=False)
          for p, x in leaves.items()}
  handler = ocp.PyTreeCheckpointHandler()
  reference = handler.restore(entry / store.ORBAX_DIR, args=ocp.args.PyTreeRestore(
      item=params_lib.unflatten(items), restore_args=params_lib.unflatten(args)))
  handler.close()
  _assert_same_params(model.params, reference)


def test_snapshot_directory_is_keyed_by_config_and_weights(cache_root, tmp_path):
  snapshot = tmp_path / "snapshot"
  snapshot.mkdir()
  for name, data in {"config.json": "{}", "tokenizer.json": "{}", "model-00001-of-00002.safetensors": "a",
                     "model-00002-of-00002.safetensors": "b"}.items():
    (snapshot / name).write_text(data)
  first = store.source_sha256(snapshot)
  (snapshot / "tokenizer.json").write_text('{"changed": 1}')
  assert store.source_sha256(snapshot) == first  # the tokenizer does not make the params
  (snapshot / "model-00002-of-00002.safetensors").write_text("c")
  second = store.source_sha256(snapshot)
  (snapshot / "config.json").write_text('{"changed": 1}')
  assert len({first, second, store.source_sha256(snapshot)}) == 3

  config = fx.tiny_gemma3_config(vocab_size=VOCAB, n_layers=1)
  place = jaxsem.sharding.make_placer(None, np.float32)
  flat = params_lib.flatten(fx.random_params(config))
  params = params_lib.unflatten({path: place(path, leaf) for path, leaf in flat.items()})
  calls = []

  def build():
    calls.append(1)
    return params

  saved, info = params_cache.cached_params(snapshot, config, "float32", None, build)
  assert info["hit"] is False and calls == [1]
  restored, info = params_cache.cached_params(snapshot, config, "float32", None, build)
  assert info["hit"] is True and calls == [1]
  _assert_same_params(restored, saved)


def test_source_errors_still_surface(cache_root, tmp_path):
  config = fx.tiny_llama_config(vocab_size=VOCAB)  # byte-level BPE without merges: no tokenizer
  path = fx.write_gguf(tmp_path / "no-merges.gguf", config, fx.random_params(config))
  with pytest.raises(jaxsem.InputError, match="merges"):
    jaxsem.load(path)
  broken = fx.write_gguf(tmp_path / "broken.gguf", config, fx.random_params(config), drop=("output_norm.weight",))
  with pytest.raises(jaxsem.InputError):
    jaxsem.load(broken)
