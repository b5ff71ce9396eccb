"""Long work survives kill -9: the sweep and the steering grid resume to identical output.

Also: one run per out_dir (lock), and an out_dir on a full or read-only disk gives one
line and keeps what was committed. The launchers run as subprocesses, as a user would run
them, on the tiny word model (``tests/word_model.py``): what is tested is the resuming,
not the model.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxsem.io import out_dir as out_dir_lib
from jaxsem.io import scales as scales_io
from jaxsem.kernels import zarr_out

from tests.test_launch import REPO, _assert_one_line_error, _run

CHUNK = 1024
SWEEP = ("launch.sweep", "--scales=osgood28", f"--chunk_rows={CHUNK}", "--baselines=gaussian")
BATCH = 4
STEER = ("launch.steer", "--n_words=16", "--grid_words=8", "--steer=good-bad,strong-weak,fast-slow",
         "--alphas=-0.5,0.5", "--method=plain", "--n_random=2", "--n_boot=20", "--n_perm=20",
         f"--batch_size={BATCH}")
# Keys whose values differ between runs by nature (time, throughput, resume counts, paths).
_VOLATILE = ("seconds", "per_second", "resumed", "provenance", "path", "load_seconds")


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  env["XLA_FLAGS"] = " ".join([f for f in env.get("XLA_FLAGS", "").split()
                               if not f.startswith("--xla_force_host_platform_device_count")]
                              + ["--xla_force_host_platform_device_count=1"])
  return env


def _numbers(doc):
  """summary.json without the fields that legitimately differ between two runs."""
  if isinstance(doc, dict):
    return {k: _numbers(v) for k, v in doc.items() if not any(t in k for t in _VOLATILE)}
  if isinstance(doc, list):
    return [_numbers(v) for v in doc]
  return doc


def _committed(state_file) -> int:
  try:
    return len(json.loads(state_file.read_text())["done"])
  except (OSError, ValueError, KeyError):
    return 0


def _kill_when(args, out, ready, timeout=300):
  """Starts a launcher and kill -9s it as soon as ``ready()`` holds; returns its exit code."""
  proc = subprocess.Popen([sys.executable, "-m", *args, f"--out_dir={out}"], cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
      time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)
  finally:
    with contextlib.suppress(ProcessLookupError):
      proc.kill()


def _finish(args, out):
  proc = subprocess.run([sys.executable, "-m", *args, f"--out_dir={out}"], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def sweep(word_model):
  return (*SWEEP, f"--model={word_model}")


@pytest.fixture(scope="module")
def steer(word_model):
  return (*STEER, f"--model={word_model}")


@pytest.fixture(scope="module")
def sweep_reference(sweep, tmp_path_factory):
  out = tmp_path_factory.mktemp("reference") / "sweep"
  _, doc = _finish(sweep, out)
  return doc, zarr_out.open_for_read(out / "projections.zarr").read().result()


@pytest.mark.slow
@pytest.mark.parametrize("when", ["early", "mid", "late", "after_matrix"])
def test_sweep_killed_then_resumed_is_identical(sweep, sweep_reference, tmp_path, when):
  """kill -9 at several moments (before the array exists, after a few chunks, after most,
  after the matrix was complete), then the same command: identical matrix and numbers."""
  ref_doc, ref_matrix = sweep_reference
  chunks = -(-ref_matrix.shape[0] // CHUNK)
  assert chunks > 40
  out = tmp_path / "sweep"
  state = out / "projections.zarr" / zarr_out.STATE_NAME
  ready = {"early": lambda: out.exists(),
           "mid": lambda: _committed(state) >= 5,
           "late": lambda: _committed(state) >= chunks - 8,
           "after_matrix": lambda: (out / "projections.zarr" / zarr_out.COMPLETE_MARKER).exists()}[when]
  assert _kill_when(sweep, out, ready) == -signal.SIGKILL
  committed = _committed(state)
  assert not (out / "summary.json").exists()
  proc, doc = _finish(sweep, out)
  assert doc["zarr"]["resumed"]["chunks_skipped"] == committed
  assert doc["zarr"]["resumed"]["chunks_computed"] == chunks - committed
  np.testing.assert_array_equal(zarr_out.open_for_read(out / "projections.zarr").read().result(), ref_matrix)
  assert _numbers(doc) == _numbers(ref_doc)
  if committed:
    assert f"{min(committed * CHUNK, ref_matrix.shape[0])} resumed" in proc.stderr


@pytest.mark.slow
def test_sweep_of_other_inputs_is_refused_then_overwritten(sweep, tmp_path):
  out = tmp_path / "sweep"
  _finish(sweep, out)
  other = [a for a in sweep if not a.startswith("--scales")] + ["--scales=norms"]
  proc = _run(*other, f"--out_dir={out}")
  _assert_one_line_error(proc, "other inputs", "--overwrite")
  _, doc = _finish(other + ["--overwrite"], out)
  assert doc["n_directions"] == len(scales_io.load_scales("norms"))


HIDDEN = ("launch.sweep", "--space=hidden", "--layers=0,final", "--scales=osgood28", "--baselines=gaussian",
          f"--hidden_chunk_rows={CHUNK}", "--checkpoint_seconds=0")


@pytest.mark.slow
def test_hidden_sweep_killed_mid_projection_then_resumed_is_identical(word_model, tmp_path):
  """kill -9 once five token blocks of the projection pass are committed, then the same command:
  the same bytes in the [site, token, direction] array and the same numbers."""
  args = (*HIDDEN, f"--model={word_model}")
  ref_out, out = tmp_path / "reference", tmp_path / "hidden"
  _, ref = _finish(args, ref_out)
  ref_matrix = zarr_out.open_for_read(ref_out / "projections.zarr").read().result()
  chunks = -(-ref_matrix.shape[1] // CHUNK)
  state = out / "projections.zarr" / zarr_out.STATE_NAME
  assert _kill_when(args, out, lambda: _committed(state) >= 5) == -signal.SIGKILL
  committed = _committed(state)
  assert 5 <= committed < chunks and not (out / "summary.json").exists()
  proc, doc = _finish(args, out)
  skipped = doc["zarr"]["resumed"]["chunks_skipped"]
  assert committed <= skipped <= committed + 1  # the moments are saved just before the state
  assert doc["zarr"]["resumed"]["chunks_computed"] == chunks - skipped
  np.testing.assert_array_equal(zarr_out.open_for_read(out / "projections.zarr").read().result(), ref_matrix)
  assert _numbers(doc) == _numbers(ref)
  assert f"{skipped * CHUNK} resumed" in proc.stderr


@pytest.mark.slow
def test_steering_grid_killed_then_resumed_is_identical(steer, tmp_path):
  ref_out, out = tmp_path / "reference", tmp_path / "steer"
  _, ref = _finish(steer, ref_out)
  grid_state = out / "checkpoint" / "grid.zarr" / zarr_out.STATE_NAME
  assert _kill_when(steer, out, lambda: _committed(grid_state) >= 2) == -signal.SIGKILL
  assert not (out / "summary.json").exists()
  committed = _committed(grid_state)
  assert 2 <= committed <= 48 // BATCH  # 8 words x 3 scales x 2 strengths = 48 rows
  proc, doc = _finish(steer, out)
  assert _numbers(doc) == _numbers(ref)
  # The 16 baseline rows and the committed grid batches came from the checkpoint.
  assert doc["resumed"]["rows_from_checkpoint"] == 16 + committed * BATCH
  assert doc["resumed"]["rows_computed"] == ref["resumed"]["rows_computed"] - 16 - committed * BATCH
  assert "steer grid: 48/48 prompts (100.0%)" in proc.stderr
  if committed < 48 // BATCH:
    assert f"{committed * BATCH} resumed" in proc.stderr


@pytest.mark.slow
def test_fitted_steering_killed_in_its_jacobian_then_resumed_is_identical(steer, tmp_path):
  """The methods comparison too: killed once a Jacobian batch is committed, the resumed
  run takes the grid, the controls and the committed batches from the checkpoint and fits
  the same vectors (plain, orthogonal and fitted compared as in the uninterrupted run)."""
  args = tuple(a for a in steer if not a.startswith("--method")) + ("--method=plain,orthogonal,fitted",
                                                                    "--fit_steps=50", "--refine=1")
  ref_out, out = tmp_path / "reference", tmp_path / "steer"
  _, ref = _finish(args, ref_out)
  jac_state = out / "checkpoint" / "jacobian.zarr" / zarr_out.STATE_NAME
  assert _kill_when(args, out, lambda: _committed(jac_state) >= 1) == -signal.SIGKILL
  assert not (out / "summary.json").exists()
  committed = _committed(jac_state)
  assert 1 <= committed <= 3  # 12 training words in batches of 4
  _, doc = _finish(args, out)
  assert _numbers(doc) == _numbers(ref)
  assert set(doc["methods"]["reduction_vs_plain"]) == {"orthogonal", "fitted"}
  # Baseline 16 + grid 48 + random control 32 rows, and the Jacobian's committed words.
  assert doc["resumed"]["rows_from_checkpoint"] == 16 + 48 + 32 + committed * BATCH


@pytest.mark.slow
def test_second_run_on_the_same_out_dir_is_refused(sweep, tmp_path):
  out = tmp_path / "sweep"
  with out_dir_lib.claim(out):
    proc = _run(*sweep, f"--out_dir={out}")
  _assert_one_line_error(proc, str(out), "in use by", f"pid {os.getpid()}")
  assert sorted(p.name for p in out.iterdir()) == [out_dir_lib.LOCK_NAME]


def test_claim_is_exclusive_and_cleans_up_after_a_user_error(tmp_path):
  from jaxsem.errors import InputError

  out = tmp_path / "new"
  with pytest.raises(InputError, match="in use by"):
    with out_dir_lib.claim(out):
      with out_dir_lib.claim(out):
        pass
  assert not out.exists()  # created by the failed run and left empty: removed
  with pytest.raises(RuntimeError):
    with out_dir_lib.claim(out):
      (out / "result.txt").write_text("committed")
      raise RuntimeError("the run failed after writing")
  assert (out / "result.txt").read_text() == "committed"
  with out_dir_lib.claim(out):  # the lock was released
    pass
  target = tmp_path / "a_file"
  target.write_text("x")
  with pytest.raises(InputError, match="is a file"):
    with out_dir_lib.claim(target):
      pass


@contextlib.contextmanager
def _tmpfs(path, size, read_only=False):
  """A small tmpfs at ``path`` (root on Linux, as CI runs); skips where mounting is not allowed."""
  path.mkdir()
  opts = f"size={size}" + (",ro" if read_only else "")
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); test_zarr_out covers the same "
                "error path with an injected ENOSPC")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_resumes_once_there_is_space(sweep, sweep_reference, tmp_path):
  """The 7 MB matrix on a 2 MB disk: one line, the committed chunks stay valid; with
  room again, the same command resumes and gives the reference matrix."""
  _, ref_matrix = sweep_reference
  chunks = -(-ref_matrix.shape[0] // CHUNK)
  with _tmpfs(tmp_path / "disk", "2m") as disk:
    out = disk / "sweep"
    proc = _run(*sweep, f"--out_dir={out}")
    _assert_one_line_error(proc, "No space left on device", "rerun the same command to resume")
    state = json.loads((out / "projections.zarr" / zarr_out.STATE_NAME).read_text())
    assert 0 < len(state["done"]) < chunks
    partial = zarr_out.open_for_read(out / "projections.zarr", require_complete=False)
    for start in state["done"]:
      np.testing.assert_array_equal(partial[start:start + CHUNK].read().result(), ref_matrix[start:start + CHUNK])
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    _, doc = _finish(sweep, out)
    assert doc["zarr"]["resumed"]["chunks_skipped"] == len(state["done"])
    np.testing.assert_array_equal(zarr_out.open_for_read(out / "projections.zarr").read().result(), ref_matrix)


@pytest.mark.slow
def test_read_only_out_dir_is_one_line(sweep, tmp_path):
  with _tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
    proc = _run(*sweep, f"--out_dir={disk / 'sweep'}")
    _assert_one_line_error(proc, "Read-only file system", "--out_dir")
