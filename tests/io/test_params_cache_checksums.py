"""The params cache's checksums: flipped bytes, damaged manifests and old layouts are never served."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import jaxsem
from jaxsem.io import params_cache
from jaxsem.io import params_checksums
from jaxsem.io import params_restore
from jaxsem.models import params as params_lib
from jaxsem.models import params_cache as model_cache
from tests import gguf_fixtures as fx

VOCAB = 99
SAVE_MESH = "data:1,model:8"
PROMPTS = ["<t5><t7><t9>", "<t3>"]


@pytest.fixture
def toy(tmp_path: Path) -> str:
  config = dataclasses.replace(fx.tiny_gemma3_config(vocab_size=VOCAB, n_layers=2), tie_embeddings=False)
  return fx.write_gguf(tmp_path / "toy.gguf", config, fx.random_params(config, seed=0), types="Q8_0")


def _warnings(captured: str) -> list[str]:
  return [line for line in captured.splitlines() if "warning" in line.lower()]


def _entry(model: jaxsem.Model) -> Path:
  return Path(model.provenance["params_cache"]["path"])


def _assert_same_params(got: dict, want: dict) -> None:
  got, want = params_lib.flatten(got), params_lib.flatten(want)
  assert set(got) == set(want)
  for path, leaf in want.items():
    assert np.array_equal(np.asarray(got[path]).view(np.uint8), np.asarray(leaf).view(np.uint8)), path


def _flip_stored_bytes(entry: Path, leaf: np.ndarray, row: int) -> Path:
  """Inverts 64 bytes of ``leaf[row]`` where orbax stored them; the file keeps its size."""
  needle = np.ascontiguousarray(leaf[row]).tobytes()
  for path in sorted((entry / params_cache.ORBAX_DIR).rglob("*")):
    if path.is_file() and path.parent.name == "d":
      data = bytearray(path.read_bytes())
      at = data.find(needle)
      if at >= 0:
        size = len(data)
        data[at + 8:at + 72] = bytes(b ^ 0xFF for b in data[at + 8:at + 72])
        path.write_bytes(bytes(data))
        assert path.stat().st_size == size
        return path
  raise AssertionError(f"row {row} of the leaf is not stored verbatim under {entry}")


@pytest.mark.parametrize("restore_mesh", [SAVE_MESH, "data:2,model:4"])
def test_flipped_bytes_of_a_same_sized_file_warn_once_and_are_repaired(cache_root, toy, restore_mesh, capsys):
  saved = jaxsem.load(toy, mesh=SAVE_MESH)
  entry = _entry(saved)
  _flip_stored_bytes(entry, np.asarray(saved.params["unembed"]), row=40)
  capsys.readouterr()

  model = jaxsem.load(toy, mesh=restore_mesh)
  err = capsys.readouterr().err
  assert model.provenance["params_cache"]["hit"] is False
  (warning,) = _warnings(err)
  assert str(entry) in warning and "checksum" in warning and "rewriting" in warning
  assert "Traceback" not in err
  direct = jaxsem.load(toy, mesh=restore_mesh, params_cache=False)
  _assert_same_params(model.params, direct.params)
  np.testing.assert_array_equal(model.next_token_logits(PROMPTS), direct.next_token_logits(PROMPTS))

  again = jaxsem.load(toy, mesh=restore_mesh)
  assert again.provenance["params_cache"]["hit"] is True and _entry(again) == entry
  _assert_same_params(again.params, direct.params)
  assert not _warnings(capsys.readouterr().err)


def _manifest(entry: Path) -> Path:
  return entry / params_cache.CHECKSUMS.format(process=0)


def _garbage_manifest(entry: Path) -> None:
  _manifest(entry).write_text('{"format": 2, "algorithm": "sha2')


def _deleted_manifest(entry: Path) -> None:
  _manifest(entry).unlink()


def _altered_sum(entry: Path) -> None:
  manifest = json.loads(_manifest(entry).read_text())
  sums = manifest["leaves"]["blocks/q"]["sums"]
  name = sorted(sums)[0]
  sums[name] = "0" * 8
  _manifest(entry).write_text(json.dumps(manifest))


def _dropped_leaf(entry: Path) -> None:
  manifest = json.loads(_manifest(entry).read_text())
  del manifest["leaves"]["embed"]
  _manifest(entry).write_text(json.dumps(manifest))


def _other_algorithm(entry: Path) -> None:
  manifest = json.loads(_manifest(entry).read_text())
  _manifest(entry).write_text(json.dumps({**manifest, "algorithm": "md5"}))


def _meta_without_manifests(entry: Path) -> None:
  meta = json.loads((entry / params_cache.META).read_text())
  del meta["checksums"]
  (entry / params_cache.META).write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_garbage_manifest, _deleted_manifest, _altered_sum, _dropped_leaf,
                                    _other_algorithm, _meta_without_manifests])
def test_damaged_manifest_is_a_damaged_entry(cache_root, toy, damage, capsys):
  entry = _entry(jaxsem.load(toy, mesh=SAVE_MESH))
  damage(entry)
  capsys.readouterr()

  model = jaxsem.load(toy, mesh=SAVE_MESH)
  err = capsys.readouterr().err
  assert model.provenance["params_cache"]["hit"] is False
  assert len(_warnings(err)) == 1 and str(entry) in _warnings(err)[0], err
  _assert_same_params(model.params, jaxsem.load(toy, mesh=SAVE_MESH, params_cache=False).params)
  assert json.loads(_manifest(entry).read_text())["algorithm"] == params_checksums.CHECKSUM_ALGORITHM

  again = jaxsem.load(toy, mesh=SAVE_MESH)
  assert again.provenance["params_cache"]["hit"] is True
  assert not _warnings(capsys.readouterr().err)


def test_entry_of_the_layout_without_checksums_is_stale_and_rewritten(cache_root, toy, monkeypatch, capsys):
  entry = _entry(jaxsem.load(toy, mesh=SAVE_MESH))
  # What layout 1 left: no manifest, no "checksums" in the meta, its own key.
  with monkeypatch.context() as patch:
    patch.setattr(params_cache, "FORMAT_VERSION", 1)
    old_key = model_cache.key(entry.name.split("-")[0], "float32")
  assert old_key != entry.name
  _deleted_manifest(entry)
  _meta_without_manifests(entry)
  meta = json.loads((entry / params_cache.META).read_text())
  (entry / params_cache.META).write_text(json.dumps({**meta, "format": 1, "key": old_key}))
  old = entry.rename(entry.with_name(old_key))
  capsys.readouterr()

  model = jaxsem.load(toy, mesh=SAVE_MESH)
  assert model.provenance["params_cache"]["hit"] is False
  assert _entry(model) == entry and _manifest(entry).is_file() and not old.exists()
  assert not _warnings(capsys.readouterr().err)
  assert jaxsem.load(toy, mesh=SAVE_MESH).provenance["params_cache"]["hit"] is True


def test_every_saved_block_has_a_checksum(cache_root, toy):
  model = jaxsem.load(toy, mesh=SAVE_MESH)
  entry = _entry(model)
  meta = json.loads((entry / params_cache.META).read_text())
  assert meta["checksums"] == [params_cache.CHECKSUMS.format(process=0)]
  assert not [p.name for p in entry.iterdir() if p.name.endswith(".tmp")]
  checksums = params_restore.read_checksums(entry, meta)
  for path, leaf in params_lib.flatten(model.params).items():
    block = checksums[path]["block"]
    grid = [-(-n // b) for n, b in zip(leaf.shape, block)]
    assert len(checksums[path]["sums"]) == int(np.prod(grid)), path
    first = np.asarray(leaf)[tuple(slice(0, b) for b in block)]
    assert checksums[path]["sums"][",".join("0" * len(block))] == params_checksums.digest(first), path


@pytest.mark.parametrize("shard, itemsize, block", [
    ((104, 64), 4, (104, 64)),  # small: one block
    ((262144, 640), 4, (2048, 640)),  # Gemma's embedding: rows only, 5 MiB blocks
    ((1, 3, 5 << 20), 4, (1, 1, 5 << 18)),  # rows exhausted: split the next axes
    ((7919, 4096), 4, (1, 4096)),  # a prime row count splits to single rows
])
def test_block_shape_divides_the_shard_into_small_blocks(shard, itemsize, block):
  got = params_checksums.block_shape(shard, itemsize)
  assert got == block
  assert all(n % b == 0 for n, b in zip(shard, got))
  assert np.prod(got) * itemsize <= params_checksums.CHUNK_BYTES


def test_read_spec_and_context_are_orbax_own(tmp_path):
  import orbax.checkpoint as ocp
  from etils import epath

  limit = params_restore.READ_CONCURRENCY
  context = ocp.type_handlers.get_ts_context(use_ocdbt=True, file_io_concurrency_limit=limit,
                                             data_copy_concurrency_limit=limit)
  assert {**context.spec.to_json(), "file_io_mode": {"mode": "memmap"}} == params_restore._READ_CONTEXT
  directory = tmp_path / params_cache.ORBAX_DIR
  info = ocp.type_handlers.ParamInfo(name="blocks.q", parent_dir=epath.Path(directory), ts_context=context)
  orbax_spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=True)
  assert params_restore.read_spec(directory, "blocks/q") == orbax_spec


def _write_manifests(entry: Path, *manifests: dict) -> dict:
  entry.mkdir(exist_ok=True)
  names = [params_cache.CHECKSUMS.format(process=p) for p in range(len(manifests))]
  for name, leaves in zip(names, manifests):
    (entry / name).write_text(json.dumps({"format": params_cache.FORMAT_VERSION,
                                          "algorithm": params_checksums.CHECKSUM_ALGORITHM,
                                          "leaves": leaves}))
  return {"checksums": names}


def test_manifests_of_several_processes_are_merged(tmp_path):
  first = {"embed": {"block": [4, 8], "sums": {"0,0": "a"}}}
  second = {"embed": {"block": [4, 8], "sums": {"1,0": "b"}}, "final_norm": {"block": [8], "sums": {}}}
  meta = _write_manifests(tmp_path / "entry", first, second)
  merged = params_restore.read_checksums(tmp_path / "entry", meta)
  assert merged == {"embed": {"block": (4, 8), "sums": {"0,0": "a", "1,0": "b"}},
                    "final_norm": {"block": (8,), "sums": {}}}


@pytest.mark.parametrize("meta, second, match", [
    ({"checksums": ["checksums.0.json", "checksums.1.json"]}, None, "checksums.1.json"),  # one is missing
    ({"checksums": ["../meta.json"]}, None, "lists no checksum manifests"),
    ({}, None, "lists no checksum manifests"),
    (None, {"embed": {"block": [2, 8], "sums": {}}}, "another block shape"),
    (None, {"embed": {"block": [0, 8], "sums": {}}}, "no valid block shape"),
    (None, {"embed": {"block": [4, 8], "sums": []}}, "no valid block shape"),
])
def test_unusable_manifests_are_refused(tmp_path, meta, second, match):
  first = {"embed": {"block": [4, 8], "sums": {"0,0": "a"}}}
  written = _write_manifests(tmp_path / "entry", first, *([second] if second else []))
  with pytest.raises(ValueError, match=match):
    params_restore.read_checksums(tmp_path / "entry", written if meta is None else meta)


@pytest.mark.parametrize("name", [params_cache.META, params_cache.CHECKSUMS.format(process=0)])
def test_deeply_nested_meta_or_manifest_is_a_damaged_entry(cache_root, toy, name, capsys):
  entry = _entry(jaxsem.load(toy, mesh=SAVE_MESH))
  (entry / name).write_text("[" * 100_000 + "]" * 100_000)
  capsys.readouterr()
  model = jaxsem.load(toy, mesh=SAVE_MESH)
  err = capsys.readouterr().err
  assert model.provenance["params_cache"]["hit"] is False
  assert len(_warnings(err)) == 1 and str(entry) in _warnings(err)[0] and "Traceback" not in err, err
  assert jaxsem.load(toy, mesh=SAVE_MESH).provenance["params_cache"]["hit"] is True
