"""The zarr writer's commit protocol: resumable chunks, fingerprints, half-written chunks, I/O errors."""

import errno
import json
import threading

import numpy as np
import pytest

from jaxsem.analyses import row_checkpoint
from jaxsem.errors import InputError
from jaxsem.kernels import zarr_out

N, S, CHUNK = 100, 3, 32


def _data(seed=0):
  return np.random.default_rng(seed).normal(size=(N, S)).astype(np.float32)


def _fill(writer, data, starts):
  for r in starts:
    writer.write(r, data[r:r + CHUNK])


def test_resumes_committed_chunks_and_finishes_identically(tmp_path):
  path, data = tmp_path / "m.zarr", _data()
  first = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  assert first.written == set()
  _fill(first, data, [0, 64])
  del first  # the run dies here

  again = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  assert again.written == {0, 64} and again.resumed == 2 and again.missing() == [32, 96]
  _fill(again, data, again.missing())
  again.finalize()
  np.testing.assert_array_equal(zarr_out.open_for_read(path).read().result(), data)
  state = json.loads((path / zarr_out.STATE_NAME).read_text())
  assert state["done"] == [0, 32, 64, 96] and state["fingerprint"] == "abc"
  # A finished array reopens with every chunk done.
  assert zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc").missing() == []


def test_other_inputs_are_refused_unless_overwrite(tmp_path):
  path = tmp_path / "m.zarr"
  _fill(zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc"), _data(), [0])
  with pytest.raises(InputError, match="other inputs.*--overwrite"):
    zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="xyz")
  fresh = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="xyz", overwrite=True)
  assert fresh.written == set()
  assert np.isnan(zarr_out.open_for_read(path, require_complete=False).read().result()).all()


def test_chunk_written_but_not_committed_is_computed_again(tmp_path):
  """A chunk whose bytes reached the store but whose commit was never recorded (or a
  half-written one) is not taken for finished: it is rewritten on resume."""
  path, data = tmp_path / "m.zarr", _data()
  writer = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  _fill(writer, data, [0])
  writer.store[32:64].write(np.full((CHUNK, S), 7.0, np.float32)).result()  # died before the commit
  resumed = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  assert resumed.written == {0} and 32 in resumed.missing()
  _fill(resumed, data, resumed.missing())
  resumed.finalize()
  np.testing.assert_array_equal(zarr_out.open_for_read(path).read().result(), data)


def test_killed_while_creating_starts_again(tmp_path):
  """The state is written before the array's metadata: a directory holding only the state
  (a run killed while creating the array) is the same run's and is simply created."""
  path = tmp_path / "m.zarr"
  path.mkdir()
  (path / zarr_out.STATE_NAME).write_text(json.dumps({"fingerprint": "abc", "shape": [N, S],
                                                      "chunk_rows": CHUNK, "done": []}))
  writer = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  _fill(writer, _data(), writer.missing())
  writer.finalize()
  assert zarr_out.is_complete(path)


def test_write_failure_is_one_line_and_keeps_committed_chunks(tmp_path):
  path, data = tmp_path / "m.zarr", _data()
  writer = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  _fill(writer, data, [0])

  class FullDisk:
    shape = writer.store.shape

    def __getitem__(self, index):
      class Chunk:
        def write(self, block):
          raise ValueError("Error writing local file \"c/1/0\": [OS error 28: No space left on device]")
      return Chunk()

  real, writer.store = writer.store, FullDisk()
  with pytest.raises(InputError, match="No space left on device.*rerun the same command to resume"):
    writer.write(32, data[32:64])
  writer.store = real
  resumed = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  assert resumed.written == {0}
  np.testing.assert_array_equal(resumed.store[0:32].read().result(), data[:32])


def _done(path):
  return json.loads((path / zarr_out.STATE_NAME).read_text())["done"]


def test_overlapped_writes_commit_only_synced_chunks(tmp_path, monkeypatch):
  """``write_async`` returns at once; a worker commits each chunk (``written``, the state file) only
  after its file and directories were fsynced. Chunks held back in the sync are not committed, so a
  run that dies then resumes without them; commits follow the order of the writes."""
  path, data = tmp_path / "m.zarr", _data()
  gates = {i: threading.Event() for i in range(4)}
  synced = []  # (fsynced path, chunks committed at that moment)
  real_sync, real_fsync = zarr_out._sync_chunk, zarr_out._fsync

  def gated_sync(array, index):
    assert gates[index].wait(timeout=60)
    real_sync(array, index)

  monkeypatch.setattr(zarr_out, "_sync_chunk", gated_sync)
  monkeypatch.setattr(zarr_out, "_fsync", lambda p: (synced.append((p, _done(path))), real_fsync(p)))
  writer = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  writer.write_async(0, data[:32])
  writer.write_async(32, data[32:64])  # returns: two chunks may wait for their commit
  assert writer.written == set() and _done(path) == []
  # A run that dies now resumes with nothing committed, though both chunks' bytes may be there.
  assert zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc").written == set()
  gates[0].set()
  writer.write_async(64, data[64:96])  # a third chunk waits for the oldest one's commit
  assert writer.written == {0} and _done(path) == [0]
  resumed = zarr_out.open_resumable(path, (N, S), CHUNK, fingerprint="abc")
  assert resumed.written == {0} and resumed.missing() == [32, 64, 96]
  for gate in gates.values():
    gate.set()
  writer.write_async(96, data[96:])
  writer.finalize()
  assert writer.written == {0, 32, 64, 96} and _done(path) == [0, 32, 64, 96]
  np.testing.assert_array_equal(zarr_out.open_for_read(path).read().result(), data)
  # Each chunk's file and directory entries were fsynced before the chunk was committed.
  for index, start in enumerate(range(0, N, CHUNK)):
    chunk_file = path / "c" / str(index) / "0"
    before = [done for p, done in synced if p == chunk_file]
    assert before and start not in before[0], (chunk_file, before)
    for directory in (chunk_file.parent, path / "c", path):
      assert any(p == directory and start not in done for p, done in synced)


def test_failed_async_write_or_sync_is_one_line(tmp_path, monkeypatch):
  """A write whose future fails, or a chunk whose fsync fails, is reported as one line by the
  call that waits for it, and nothing after the last good chunk is committed."""
  data = _data()
  broken = zarr_out.open_resumable(tmp_path / "b.zarr", (N, S), CHUNK, fingerprint="abc")

  class FailsLater:  # the write starts, then its future fails (as a full disk does)
    shape = broken.store.shape

    def __getitem__(self, index):
      class Chunk:
        def write(self, block):
          class Future:
            def result(self):
              raise ValueError("Error writing local file \"c/1/0\": [OS error 28: No space left on device]")
          return Future()
      return Chunk()

  real, broken.store = broken.store, FailsLater()
  broken.write_async(32, data[32:64])
  with pytest.raises(InputError, match="No space left on device"):
    broken.flush()
  assert broken.written == set()

  def no_sync(array, index):
    raise OSError(errno.EIO, "Input/output error")

  broken.store = real
  broken.write_async(0, data[:32])
  broken.flush()
  monkeypatch.setattr(zarr_out, "_sync_chunk", no_sync)
  broken.write_async(64, data[64:96])
  with pytest.raises(InputError) as info:
    broken.finalize()
  assert "Input/output error" in str(info.value) and "\n" not in str(info.value)
  assert broken.written == {0} and _done(tmp_path / "b.zarr") == [0]
  assert not zarr_out.is_complete(tmp_path / "b.zarr")


def test_row_checkpoint_round_trip(tmp_path):
  """Committed blocks come back on the next run; other inputs start from scratch."""
  data = _data()
  key = row_checkpoint.digest("grid", data)
  first = row_checkpoint.RowCheckpoint(tmp_path, "grid", key, N, S, CHUNK)
  assert first.committed == set() and first.get(0) is None
  first.commit(0, data[:32])
  first.commit(96, data[96:])
  again = row_checkpoint.RowCheckpoint(tmp_path, "grid", key, N, S, CHUNK)
  assert again.committed == {0, 96} and again.pending(range(0, N, CHUNK)) == [32, 64]
  np.testing.assert_array_equal(again.get(96), data[96:])
  other = row_checkpoint.RowCheckpoint(tmp_path, "grid", row_checkpoint.digest("grid", data + 1), N, S, CHUNK)
  assert other.committed == set()


def test_digest_sees_every_input():
  a = np.arange(6, dtype=np.float32)
  assert row_checkpoint.digest("x", a) == row_checkpoint.digest("x", a.copy())
  assert row_checkpoint.digest("x", a) != row_checkpoint.digest("x", a.reshape(2, 3))
  assert row_checkpoint.digest("x", a) != row_checkpoint.digest("x", a.astype(np.float64))
  b = a.copy()
  b[3] = np.nextafter(b[3], np.float32(10))
  assert row_checkpoint.digest("x", a) != row_checkpoint.digest("x", b)
  assert row_checkpoint.digest("x", a) != row_checkpoint.digest("y", a)
