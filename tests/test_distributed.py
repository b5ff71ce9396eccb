"""Multi-process runs: how settings resolve, that 2 processes compute what 1 does, and clean failures.

The multi-process tests start real launcher processes on this machine, each with its own fake CPU
devices (``XLA_FLAGS``), joined by ``jax.distributed`` on a free localhost port with gloo collectives:
``2 processes x 4 devices`` must give the numbers of ``1 process x 8 devices`` and of one device.
They run on the tiny word model (``tests/word_model.py``): what is tested is the layout, not the model.
"""

import dataclasses
import fcntl
import json
import math
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxsem import distributed
from jaxsem import output_filter
from jaxsem.errors import InputError
from tests.test_launch import REPO, _assert_one_line_error

# Everything that could make a child process (or resolve() here) join a run it was not told to join.
_RUN_ENV = (distributed.ENV_ADDRESS, distributed.ENV_PROCESSES, distributed.ENV_PROCESS_ID, "SLURM_JOB_ID",
            "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


# ---------------------------------------------------------------------------------------------------------
# distributed.resolve: flags, environment, cluster detection (in-process, no JAX runtime involved).


@pytest.fixture
def env(monkeypatch):
  for key in _RUN_ENV:
    monkeypatch.delenv(key, raising=False)
  return monkeypatch


def test_nothing_given_is_a_single_process(env):
  s = distributed.resolve()
  assert s == distributed.Settings() and not s.multi_process


def test_flags_win_over_the_environment(env):
  env.setenv(distributed.ENV_ADDRESS, "10.0.0.9:9999")
  env.setenv(distributed.ENV_PROCESSES, "4")
  env.setenv(distributed.ENV_PROCESS_ID, "3")
  s = distributed.resolve("127.0.0.1:1234", 2, 1, timeout_s=7)
  assert (s.coordinator_address, s.num_processes, s.process_id, s.timeout_s) == ("127.0.0.1:1234", 2, 1, 7)
  assert s.multi_process and not s.auto
  # One flag given, the rest from the environment.
  s = distributed.resolve(None, None, 0)
  assert (s.coordinator_address, s.num_processes, s.process_id) == ("10.0.0.9:9999", 4, 0)


def test_environment_alone(env):
  env.setenv(distributed.ENV_ADDRESS, " 10.0.0.1:1234 ")
  env.setenv(distributed.ENV_PROCESSES, "2")
  env.setenv(distributed.ENV_PROCESS_ID, "1")
  s = distributed.resolve()
  assert (s.coordinator_address, s.num_processes, s.process_id) == ("10.0.0.1:1234", 2, 1)
  assert s.multi_process and not s.auto


@pytest.mark.parametrize("given, missing", [
    (dict(coordinator_address="127.0.0.1:1234"), ["--num_processes", "--process_id"]),
    (dict(num_processes=2, process_id=0), ["--coordinator_address"]),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2), ["--process_id"]),
    (dict(process_id=1), ["--coordinator_address", "--num_processes"]),
])
def test_incomplete_settings_name_the_missing_flags(env, given, missing):
  with pytest.raises(InputError) as e:
    distributed.resolve(**given)
  msg = str(e.value)
  assert "incomplete" in msg and "\n" not in msg
  for flag in ("--coordinator_address", "--num_processes", "--process_id"):
    assert (flag in msg) == (flag in missing), msg
  # --distributed=on leaves what the flags do not say to JAX's own cluster detection.
  assert distributed.resolve(**given, mode="on").auto


def test_incomplete_environment_names_the_missing_flag(env):
  env.setenv(distributed.ENV_ADDRESS, "127.0.0.1:1234")
  env.setenv(distributed.ENV_PROCESSES, "2")
  with pytest.raises(InputError, match="--process_id not given"):
    distributed.resolve()


@pytest.mark.parametrize("pid", [2, 5, -1])
def test_process_id_out_of_range(env, pid):
  with pytest.raises(InputError, match=rf"--process_id={pid} is outside 0\.\.1"):
    distributed.resolve("127.0.0.1:1234", 2, pid)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:port", "10.0.0.1:", "localhost:12a"])
def test_bad_coordinator_address(env, address):
  with pytest.raises(InputError, match="--coordinator_address=.*host:port"):
    distributed.resolve(address, 2, 0)


def test_bad_numbers(env):
  with pytest.raises(InputError, match="--num_processes=0"):
    distributed.resolve("127.0.0.1:1234", 0, 0)
  with pytest.raises(InputError, match="--distributed_timeout=0"):
    distributed.resolve("127.0.0.1:1234", 2, 0, timeout_s=0)
  with pytest.raises(InputError, match="--distributed='sometimes'"):
    distributed.resolve(mode="sometimes")
  env.setenv(distributed.ENV_PROCESSES, "two")
  with pytest.raises(InputError, match=r"\$JAX_NUM_PROCESSES='two'"):
    distributed.resolve()


def test_off_refuses_several_processes(env):
  with pytest.raises(InputError, match="--distributed=off but --num_processes=2"):
    distributed.resolve("127.0.0.1:1234", 2, 0, mode="off")
  env.setenv(distributed.ENV_PROCESSES, "4")
  with pytest.raises(InputError, match="--distributed=off but --num_processes=4"):
    distributed.resolve(mode="off")
  assert not distributed.resolve(None, 1, 0, mode="off").multi_process


def test_one_process_is_a_single_process(env):
  for s in (distributed.resolve(None, 1, None), distributed.resolve(None, 1, 0),
            distributed.resolve("127.0.0.1:1234", 1, 0)):
    assert not s.multi_process and not s.auto
  env.setenv(distributed.ENV_PROCESSES, "1")
  assert not distributed.resolve().multi_process


def test_slurm_detection(env):
  env.setenv("SLURM_JOB_ID", "4242")
  env.setenv("SLURM_NTASKS", "1")
  assert not distributed.resolve().multi_process  # a one-task job (e.g. salloc) is no multi-process run
  env.setenv("SLURM_NTASKS", "4")
  s = distributed.resolve()
  assert s.auto and s.multi_process and s.coordinator_address is None
  assert not distributed.resolve(mode="off").multi_process
  env.delenv("SLURM_JOB_ID")
  assert not distributed.resolve().multi_process  # SLURM_NTASKS alone is not a SLURM job


def test_open_mpi_detection(env):
  env.setenv("OMPI_COMM_WORLD_SIZE", "1")
  assert not distributed.resolve().multi_process
  env.setenv("OMPI_COMM_WORLD_SIZE", "2")
  assert distributed.resolve().auto


def test_single_process_helpers():
  """In one process, initialize is a no-op and agree/agree_any raise the local verdict."""
  assert distributed.initialize(distributed.Settings()) == {"process_index": 0, "process_count": 1,
                                                            "coordinator_address": None}
  assert distributed.is_main()
  distributed.agree(None)
  distributed.agree_any(None)
  with pytest.raises(InputError, match="^out_dir is busy$"):
    distributed.agree("out_dir is busy")
  with pytest.raises(InputError, match="^ünïcode$"):
    distributed.agree_any("ünïcode")
  tree = {"a": np.arange(3)}
  assert distributed.broadcast(tree) is tree


# ---------------------------------------------------------------------------------------------------------
# Launcher processes.


@dataclasses.dataclass
class Ran:
  returncode: int
  stdout: str
  stderr: str
  seconds: float


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int | None) -> dict[str, str]:
  """The test environment with ``devices`` fake CPU devices (None: JAX's default of one)."""
  xla = [f for f in os.environ.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
  if devices:
    xla.append(f"--xla_force_host_platform_device_count={devices}")
  env = {k: v for k, v in os.environ.items() if k not in _RUN_ENV}
  env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", XLA_FLAGS=" ".join(xla))
  return env


def _run_one(module: str, *args: str, devices: int | None, timeout: float = 300) -> Ran:
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(devices),
                        capture_output=True, text=True, timeout=timeout)
  return Ran(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def _run_group(module: str, args: list[str], tmp_path, *, n: int = 2, devices: int = 4, timeout: float = 300,
               extra: dict[int, list[str]] | None = None) -> list[Ran]:
  """Runs ``n`` processes of one run (``extra[i]``: more flags for process i, last flag wins).

  Output goes to files, not pipes: a process blocked on a full pipe would stall the collectives.
  Whatever still runs after ``timeout`` seconds is killed and the test fails.
  """
  port = _free_port()
  tag = f"{module.rsplit('.', 1)[-1]}-{port}"
  procs, files = [], []
  start = time.monotonic()
  try:
    for pid in range(n):
      out = open(tmp_path / f"{tag}-{pid}.out", "w+")
      err = open(tmp_path / f"{tag}-{pid}.err", "w+")
      files += [out, err]
      cmd = [sys.executable, "-m", module, *args, f"--coordinator_address=127.0.0.1:{port}",
             f"--num_processes={n}", f"--process_id={pid}", *(extra or {}).get(pid, [])]
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(devices), stdout=out, stderr=err, text=True))
    ended = [None] * n
    while None in ended:
      for i, p in enumerate(procs):
        if ended[i] is None and p.poll() is not None:
          ended[i] = time.monotonic() - start
      if time.monotonic() - start > timeout:
        pytest.fail(f"{module}: processes {[i for i, t in enumerate(ended) if t is None]} of {n} still ran "
                    f"after {timeout} s (a hang)")
      time.sleep(0.1)
    runs = []
    for i, p in enumerate(procs):
      out, err = files[2 * i], files[2 * i + 1]
      out.seek(0)
      err.seek(0)
      runs.append(Ran(p.returncode, out.read(), err.read(), ended[i]))
    return runs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)
    for f in files:
      f.close()


def _leaves(doc, path=()):
  if isinstance(doc, dict):
    for k, v in doc.items():
      yield from _leaves(v, path + (k,))
  elif isinstance(doc, list):
    for i, v in enumerate(doc):
      yield from _leaves(v, path + (i,))
  else:
    yield path, doc


def _volatile(path) -> bool:
  """Timing, throughput, file paths, the code checkout and the run's layout (devices, mesh, the fake
  device count in ``XLA_FLAGS``), not its numbers."""
  keys = [k for k in path if isinstance(k, str)]
  return any("seconds" in k or k.endswith("per_second")
             or k in ("path", "out_dir", "devices", "mesh", "params_cache", "resumed", "code", "xla_flags")
             for k in keys)


def _assert_same_numbers(a: dict, b: dict, *, rtol: float = 0.0, atol: float = 0.0,
                         ci_rtol: float | None = None) -> int:
  """Every leaf but the volatile ones: numbers to the tolerance, ints/bools/strings exactly.

  ``ci_rtol`` (default ``rtol``) is the relative tolerance of the ends of bootstrap intervals (leaves
  under a ``ci``/``ci_words`` key): an end is an order statistic of the draws, so float rounding that
  reorders two neighbouring draws moves it to the next draw, a jump as large as the gap between them.
  """
  la = {k: v for k, v in _leaves(a) if not _volatile(k)}
  lb = {k: v for k, v in _leaves(b) if not _volatile(k)}
  assert la.keys() == lb.keys(), sorted(set(la) ^ set(lb), key=str)[:10]
  bad = []
  for k, x in la.items():
    y = lb[k]
    if isinstance(x, float) or isinstance(y, float):
      tol = ci_rtol if ci_rtol is not None and any(p in ("ci", "ci_words") for p in k) else rtol
      ok = (isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool)
            and (math.isclose(x, y, rel_tol=tol, abs_tol=atol) or (math.isnan(x) and math.isnan(y))))
    else:
      ok = x == y and type(x) is type(y)
    if not ok:
      bad.append(f"{'/'.join(map(str, k))}: {x!r} vs {y!r}")
  assert not bad, f"{len(bad)} leaves differ:\n" + "\n".join(bad[:20])
  return len(la)


# ---------------------------------------------------------------------------------------------------------
# The sweep: 2 processes x 4 devices, 1 process x 8 devices and 1 device give the same numbers.

@pytest.fixture(scope="module")
def sweep_cmd(word_model):
  return ["launch.sweep", f"--model={word_model}", "--scales=osgood28", "--baselines=gaussian,token_pairs"]


@pytest.fixture(scope="module")
def vocab_rows(word_model):
  from jaxsem.io import gguf_file

  return len(gguf_file.GGUFFile(word_model).metadata["tokenizer.ggml.tokens"])


@pytest.fixture(scope="module")
def sweeps(sweep_cmd, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sweeps")
  module, *args = sweep_cmd
  mesh = "--mesh=data:2,model:4"
  runs = {
      "2x4": _run_group(module, [*args, mesh, f"--out_dir={tmp / '2x4'}"], tmp, devices=4),
      "1x8": [_run_one(module, *args, mesh, f"--out_dir={tmp / '1x8'}", devices=8)],
      "1x1": [_run_one(module, *args, f"--out_dir={tmp / '1x1'}", devices=None)],
  }
  for name, ran in runs.items():
    for pid, r in enumerate(ran):
      assert r.returncode == 0, f"{name} process {pid}:\n{r.stderr[-3000:]}"
  docs = {name: json.loads((tmp / name / "summary.json").read_text()) for name in runs}
  return tmp, runs, docs


@pytest.mark.slow
def test_sweep_summary_is_the_same_on_any_layout(sweeps, vocab_rows):
  _, _, docs = sweeps
  devices = {name: doc["provenance"]["devices"] for name, doc in docs.items()}
  assert devices["2x4"] == {"platform": "cpu", "count": 8, "processes": 2}
  assert devices["1x8"] == {"platform": "cpu", "count": 8, "processes": 1}
  assert devices["1x1"] == {"platform": "cpu", "count": 1, "processes": 1}
  assert docs["2x4"]["provenance"]["model"]["mesh"] == {"data": 2, "model": 4}
  n = _assert_same_numbers(docs["2x4"], docs["1x8"], rtol=1e-5, atol=1e-7)
  _assert_same_numbers(docs["2x4"], docs["1x1"], rtol=1e-5, atol=1e-7)
  assert n > 150  # compared the spectra, not an empty document
  assert docs["2x4"]["n_tokens"] == vocab_rows
  assert set(docs["2x4"]["spectra"]) == {"antonym", "gaussian", "token_pairs"}


@pytest.mark.slow
def test_sweep_projection_matrix_is_the_same_on_any_layout(sweeps, vocab_rows):
  from jaxsem.kernels import zarr_out

  tmp, _, _ = sweeps
  m = {name: zarr_out.open_for_read(tmp / name / "projections.zarr").read().result()
       for name in ("2x4", "1x8", "1x1")}
  assert m["2x4"].shape == (vocab_rows, 28) and np.isfinite(m["2x4"]).all()
  np.testing.assert_allclose(m["2x4"], m["1x8"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(m["2x4"], m["1x1"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_sweep_only_process_0_prints_and_writes(sweeps):
  tmp, runs, _ = sweeps
  first, second = runs["2x4"]
  assert "components for 50%" in first.stdout and "wrote " in first.stdout
  assert "sweep osgood28:" in first.stderr
  assert "components for 50%" not in second.stdout and "wrote " not in second.stdout
  assert "sweep osgood28:" not in second.stderr
  for r in (first, second):
    assert "Traceback" not in r.stderr and "error:" not in r.stderr
    assert "[Gloo]" not in r.stdout + r.stderr  # test_gloo_lines_are_dropped shows gloo prints them
  assert sorted(p.name for p in (tmp / "2x4").iterdir() if not p.name.startswith(".")) == [
      "cumulative.png", "cumulative_whitened.png", "projections.zarr", "report.html", "summary.json"]


@pytest.mark.slow
def test_hidden_sweep_on_two_processes_equals_one_device(sweep_cmd, tmp_path):
  """The hidden-state sweep (every token in its context, two sites): 2 processes x 4 devices write the
  [site, token, direction] array and spectra of one device."""
  from jaxsem.kernels import zarr_out

  module, *args = sweep_cmd
  args = [*args, "--space=hidden", "--layers=0,final", "--hidden_chunk_rows=1024"]
  group = _run_group(module, [*args, "--mesh=data:2,model:4", f"--out_dir={tmp_path / '2x4'}"], tmp_path)
  one = _run_one(module, *args, f"--out_dir={tmp_path / '1x1'}", devices=None)
  for name, r in (("2x4 process 0", group[0]), ("2x4 process 1", group[1]), ("1x1", one)):
    assert r.returncode == 0, f"{name}:\n{r.stderr[-3000:]}"
  docs = {n: json.loads((tmp_path / n / "summary.json").read_text()) for n in ("2x4", "1x1")}
  assert [s["site"] for s in docs["2x4"]["sites"]] == ["resid_post.0", "final"]
  assert _assert_same_numbers(docs["2x4"], docs["1x1"], rtol=1e-4, atol=1e-6) > 100
  m = {n: zarr_out.open_for_read(tmp_path / n / "projections.zarr").read().result() for n in docs}
  assert m["2x4"].shape[0] == 2 and m["2x4"].shape[2] == 28 and np.isfinite(m["2x4"]).all()
  np.testing.assert_allclose(m["2x4"].astype(np.float32), m["1x1"].astype(np.float32), rtol=0, atol=2e-3)


# ---------------------------------------------------------------------------------------------------------
# Steering: a small grid (plain steering only) on 2 processes x 4 devices and on one device.

STEER = ["launch.steer", "--n_words=8", "--grid_words=8", "--steer=good-bad,strong-weak",
         "--alphas=-0.5,0.5", "--n_boot=20", "--n_perm=20", "--method=plain", "--n_random=0"]


@pytest.mark.slow
def test_steer_is_the_same_on_two_processes(word_model, tmp_path):
  module, *args = STEER + [f"--model={word_model}"]
  two = _run_group(module, [*args, "--mesh=data:2,model:4", f"--out_dir={tmp_path / 'two'}"], tmp_path,
                   devices=4)
  one = _run_one(module, *args, f"--out_dir={tmp_path / 'one'}", devices=None)
  for r in (*two, one):
    assert r.returncode == 0, r.stderr[-3000:]
  a = json.loads((tmp_path / "two" / "summary.json").read_text())
  b = json.loads((tmp_path / "one" / "summary.json").read_text())
  assert a["provenance"]["devices"]["processes"] == 2 and a["provenance"]["devices"]["count"] == 8
  assert len(a["offtarget"]["per_pair"]) == 2 * 27
  # Float32 sums in another order; the random word model amplifies them more than a trained one (|D| ~ 50).
  # Its disjoint readout barely moves on target, so some slopes' bootstrap draws reach |slope| ~ 5,000
  # with gaps of ~1% between neighbouring draws: interval ends get that much room, point values 1e-3.
  _assert_same_numbers(a, b, rtol=1e-3, atol=1e-4, ci_rtol=2e-2)
  assert "off-target D vs cosine" in two[0].stdout and "off-target" not in two[1].stdout
  assert "steer grid:" in two[0].stderr and "steer grid:" not in two[1].stderr


# ---------------------------------------------------------------------------------------------------------
# Faults: one `error:` line on every process, a non-zero exit, and no hang.


def _assert_clean_failure(r: Ran, *needles: str) -> None:
  _assert_one_line_error(r, *needles)
  assert "Fatal Python error" not in r.stderr and "Check failure" not in r.stderr, r.stderr[-2000:]


@pytest.mark.slow  # waits out the timeout by design
@pytest.mark.parametrize("process_id, reason", [(1, "nothing answers"), (0, "not every process reached it")])
def test_coordinator_out_of_reach_fails_after_the_timeout(sweep_cmd, process_id, reason):
  """Process 1 with no coordinator, or process 0 with no peers: one line after --distributed_timeout.

  Left alone, JAX's runtime aborts the process (a C++ fatal error and stack dump) at its own timeout.
  """
  address = f"127.0.0.1:{_free_port()}"  # nobody listens there (process 0 starts the coordinator itself)
  r = _run_one(sweep_cmd[0], *sweep_cmd[1:], "--out_dir=/nonexistent/never-written",
               f"--coordinator_address={address}", "--num_processes=2", f"--process_id={process_id}",
               "--distributed_timeout=5", devices=4, timeout=300)
  _assert_clean_failure(r, address, "within 5 s", reason, "--distributed_timeout")
  assert r.returncode == 2 and r.seconds >= 5, r.seconds  # it waited for the timeout


# The runs below must fail at once, not after --distributed_timeout: the timeout is set far beyond
# the harness's, so a run that waited for it is killed and the test fails as a hang. No test
# bounds wall time more tightly (a busy machine would make that flaky).
_AT_ONCE = ("--distributed_timeout=900", 300)  # (flag, harness timeout in seconds)


def test_coordinator_port_in_use_fails_at_once(sweep_cmd):
  with socket.socket() as busy:
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    address = f"127.0.0.1:{busy.getsockname()[1]}"
    r = _run_one(sweep_cmd[0], *sweep_cmd[1:], "--out_dir=/nonexistent/never-written",
                 f"--coordinator_address={address}", "--num_processes=2", "--process_id=0",
                 _AT_ONCE[0], devices=4, timeout=_AT_ONCE[1])
  _assert_clean_failure(r, f"--coordinator_address={address}", "already in use")


def test_mesh_for_one_process_fails_on_both(sweep_cmd, tmp_path):
  """data:1,model:4 fits one process's 4 devices but not the run's 8."""
  runs = _run_group(sweep_cmd[0], [*sweep_cmd[1:], "--mesh=data:1,model:4", f"--out_dir={tmp_path / 'out'}",
                               "--distributed_timeout=30"], tmp_path, timeout=300)
  for r in runs:
    _assert_clean_failure(r, "--mesh", "8")
  assert not (tmp_path / "out").exists()  # process 0 removes the out_dir it created


def test_different_num_processes_fails_on_both(sweep_cmd, tmp_path):
  runs = _run_group(sweep_cmd[0], [*sweep_cmd[1:], f"--out_dir={tmp_path / 'out'}", _AT_ONCE[0]],
                    tmp_path, extra={1: ["--num_processes=3"]}, timeout=_AT_ONCE[1])
  for r in runs:
    _assert_clean_failure(r, "--num_processes=3", "2 processes joined")
  assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_fails_on_both(sweep_cmd, tmp_path):
  out = tmp_path / "out"
  out.write_text("not a directory\n")
  runs = _run_group(sweep_cmd[0], [*sweep_cmd[1:], f"--out_dir={out}", _AT_ONCE[0]], tmp_path, timeout=_AT_ONCE[1])
  for r in runs:
    _assert_clean_failure(r, f"--out_dir={out}", "is a file")
  assert out.read_text() == "not a directory\n"


def test_out_dir_held_by_another_run_fails_on_both(sweep_cmd, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  with open(out / ".jaxsem.lock", "w") as lock:
    lock.write(json.dumps({"pid": 4242, "host": "elsewhere", "started": "earlier"}))
    lock.flush()
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    runs = _run_group(sweep_cmd[0], [*sweep_cmd[1:], f"--out_dir={out}", "--distributed_timeout=30"], tmp_path,
                      timeout=300)
  for r in runs:
    _assert_clean_failure(r, f"--out_dir={out}", "in use by jaxsem run pid 4242 on elsewhere")
  assert sorted(p.name for p in out.iterdir()) == [".jaxsem.lock"]


@pytest.mark.slow
def test_params_cache_saved_by_two_processes_restores_anywhere(sweep_cmd, sweeps, tmp_path, monkeypatch):
  """The orbax save is collective: 2 processes save one entry, then 2 processes and a single
  device restore it (a hit), and the numbers equal the uncached runs'."""
  _, _, docs = sweeps
  monkeypatch.setenv("JAXSEM_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("JAXSEM_PARAMS_CACHE", "1")
  module, *args = sweep_cmd
  mesh = "--mesh=data:2,model:4"
  runs = {"save": _run_group(module, [*args, mesh, f"--out_dir={tmp_path / 'save'}"], tmp_path, devices=4),
          "restore": _run_group(module, [*args, mesh, f"--out_dir={tmp_path / 'restore'}"], tmp_path, devices=4),
          "one": [_run_one(module, *args, f"--out_dir={tmp_path / 'one'}", devices=None)]}
  for name, ran in runs.items():
    for pid, r in enumerate(ran):
      assert r.returncode == 0, f"{name} process {pid}:\n{r.stderr[-3000:]}"
  hits = {}
  for name in runs:
    doc = json.loads((tmp_path / name / "summary.json").read_text())
    hits[name] = doc["provenance"]["model"]["params_cache"]["hit"]
    _assert_same_numbers(doc, docs["1x8" if name != "one" else "1x1"], rtol=1e-5, atol=1e-7)
  assert hits == {"save": False, "restore": True, "one": True}
  assert len(list((tmp_path / "cache" / "params").glob("*/meta.json"))) == 1


def test_process_id_out_of_range_is_refused_before_joining(sweep_cmd, tmp_path):
  """Refused from the flags alone: nobody listens at the address, and the timeout is beyond the harness's."""
  address = f"127.0.0.1:{_free_port()}"
  r = _run_one(sweep_cmd[0], *sweep_cmd[1:], f"--out_dir={tmp_path / 'out'}",
               f"--coordinator_address={address}", "--num_processes=2", "--process_id=2", _AT_ONCE[0],
               devices=4, timeout=_AT_ONCE[1])
  _assert_clean_failure(r, "--process_id=2 is outside 0..1")
  assert r.returncode == 2 and not (tmp_path / "out").exists()


_DEAD_PEER_TIMEOUT = 15  # --distributed_timeout of the run below; JAX's own heartbeat abort comes 30 s later


@pytest.mark.slow  # waits out the timeout by design
def test_peer_killed_mid_run_stops_the_survivor_with_one_line(word_model, tmp_path):
  """kill -9 of process 1 once process 0 reports progress: process 0 names process 1 in one line and
  exits non-zero within --distributed_timeout (plus slack), not at JAX's heartbeat abort with a stack dump."""
  # STEER with far more resamples: the work outlasts the test, so only the lost process can end it.
  module, *args = STEER[:1] + ["--n_words=8", "--grid_words=8", "--steer=good-bad,strong-weak",
                               "--alphas=-1,-0.5,0.5,1", "--n_boot=200000", "--n_perm=200000",
                               "--method=plain", "--n_random=0", f"--model={word_model}"]
  port = _free_port()
  procs, logs = [], []
  try:
    for pid in range(2):
      out, err = open(tmp_path / f"{pid}.out", "w+"), open(tmp_path / f"{pid}.err", "w+")
      logs.append((out, err))
      cmd = [sys.executable, "-m", module, *args, "--mesh=data:2,model:4", f"--out_dir={tmp_path / 'out'}",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}",
             f"--distributed_timeout={_DEAD_PEER_TIMEOUT}"]
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(4), stdout=out, stderr=err, text=True))
    start = time.monotonic()
    # Process 0's first progress line of the analysis ("steer baseline: 0/8 prompts ..."): work began.
    while not any(ln.startswith("steer ") for ln in (tmp_path / "0.err").read_text().splitlines()):
      assert procs[0].poll() is None and procs[1].poll() is None, (tmp_path / "0.err").read_text()[-3000:]
      assert time.monotonic() - start < 300, "no progress line from process 0"
      time.sleep(0.1)
    procs[1].kill()  # SIGKILL: no exit handler runs, its sockets just close
    procs[1].wait(timeout=30)
    # A hang guard, not a timing: on a busy machine the watchdog's line may come late. What shows
    # that it came before JAX's own heartbeat abort (at +30 s, a stack dump) is the one clean line.
    try:
      code = procs[0].wait(timeout=_DEAD_PEER_TIMEOUT + 240)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process 0 still ran {_DEAD_PEER_TIMEOUT + 240} s after process 1 was killed")
    out, err = (tmp_path / "0.out").read_text(), (tmp_path / "0.err").read_text()
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)
    for files in logs:
      for f in files:
        f.close()
  r = Ran(code, out, err, 0.0)
  _assert_clean_failure(r, "process 1 of 2", "stopped answering", f"{_DEAD_PEER_TIMEOUT} s", "rerun")
  assert code == 2, code
  assert "[Gloo]" not in out + err


def test_peer_watch_finds_the_silent_process():
  """``PeerWatch.lost``: a beat that moves is alive, one that stays still for the timeout is lost, and a
  process that posted ``exited`` ended normally (process 0 may still be writing its outputs)."""
  watch = distributed.PeerWatch(client=None, process_id=0, num_processes=4, timeout_s=10)
  seen = {}
  assert watch.lost({0: "1", 1: "1", 2: "1"}, seen, now=0.0) is None  # process 3 has not beaten yet
  assert watch.lost({0: "5", 1: "2", 2: "1", 3: "1"}, seen, now=9.0) is None
  assert watch.lost({0: "9", 1: "3", 2: "1", 3: "2"}, seen, now=10.5) == 2  # still "1" after 10.5 s
  assert watch.lost({0: "9", 1: "4", 2: "exited", 3: "3"}, seen, now=30.0) is None and watch.exited == {2}
  assert watch.lost({0: "9", 1: "4", 2: "exited", 3: "4"}, seen, now=40.5) == 1
  assert watch.lost({}, {}, now=0.0) is None  # this process itself never counts
  msg = watch.message(1)
  assert msg.startswith("process 1 of 4 stopped answering for 10 s") and "rerun all 4" in msg
  assert "\n" not in msg
  assert "(the coordinator)" in watch.message(0)


# ---------------------------------------------------------------------------------------------------------
# gloo's "[Gloo] Rank 0 is connected to 1 peer ranks. ..." lines do not reach the user.


def test_line_dropper_drops_only_prefixed_runs():
  """Every run from the prefix through its newline goes, also when another writer's text came first on the
  line (gloo's thread writing between a print's text and its newline); every other byte comes out
  unchanged, in any chunking, as a regular expression over the whole stream says."""
  stream = (b"[Gloo] Rank 0 is connected to 1 peer ranks.\nbefore 0[Gloo] Rank 1 is connected\n\n[Glo\n[G"
            b"\r progress 1/2\r progress 2/2\n\xff\xfe\x00 binary\n[Gloo] Rank 1\n\n[[Gloo]x\n[Gl[Gloo]"
            b" unfinished")
  expected = b"before 0\n[Glo\n[G\r progress 1/2\r progress 2/2\n\xff\xfe\x00 binary\n\n[[Gl"
  assert re.sub(rb"\[Gloo\][^\n]*(\n|$)", b"", stream) == expected
  for size in (1, 2, 3, 5, 7, len(stream)):
    dropper = output_filter.LineDropper(b"[Gloo]")
    out = b"".join(dropper.feed(stream[i:i + size]) for i in range(0, len(stream), size)) + dropper.flush()
    assert out == expected, size
  dropper = output_filter.LineDropper(b"[Gloo]")
  # A line that cannot be a dropped one is passed on at once, without waiting for its newline.
  assert dropper.feed(b"\rsteer grid: 1/8") == b"\rsteer grid: 1/8"
  assert dropper.feed(b"\n[Gl") == b"\n" and dropper.feed(b"ad") == b"[Glad"


_FILTERED = """
import os, sys
from jaxsem import distributed
fd = int(sys.argv[1])
distributed._GLOO_FD = fd
distributed._filter_gloo_lines()
stream = sys.stdout if fd == 1 else sys.stderr
print("tty", stream.isatty(), file=stream, flush=True)
stream.write("python line\\n")
os.write(fd, b"[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\\n")
os.write(fd, b"mid")  # gloo's thread may write between a print's text and its newline
os.write(fd, b"[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\\n")
os.write(fd, b"\\n")
os.write(fd, b"\\xff\\xfe binary\\n")
stream.write("unfinished")  # left in Python's buffer: flushed before the fd is restored
if sys.argv[2] == "exit_with":
  distributed._exit_with("the peer is gone")
"""


@pytest.mark.parametrize("fd", [1, 2])
@pytest.mark.parametrize("how", ["normal", "exit_with"])
def test_output_filter_drops_gloo_lines_and_keeps_the_rest(fd, how):
  """In a child process: print, raw writes to the fd and an unfinished line all come out in order, the
  ``[Gloo]`` line does not, at a normal exit and at the watchdog's hard exit (its error line last)."""
  proc = subprocess.run([sys.executable, "-c", _FILTERED, str(fd), how], cwd=REPO, env=_env(None),
                        capture_output=True, timeout=120)
  out = proc.stdout if fd == 1 else proc.stderr
  assert out.startswith(b"tty False\npython line\nmid\n\xff\xfe binary\nunfinished"), out
  assert b"[Gloo]" not in proc.stdout + proc.stderr
  if how == "exit_with":
    assert proc.returncode == 2 and proc.stderr.endswith(b"error: the peer is gone\n"), proc.stderr
  else:
    assert proc.returncode == 0 and out == b"tty False\npython line\nmid\n\xff\xfe binary\nunfinished"


def test_output_filter_keeps_a_terminal_a_terminal():
  """On a terminal the filter reads through a pseudo-terminal: ``isatty`` (which decides whether progress
  lines are redrawn in place) keeps its answer, and bytes pass without newline translation."""
  import pty

  parent, child = pty.openpty()
  try:
    proc = subprocess.Popen([sys.executable, "-c", _FILTERED, "1", "normal"], cwd=REPO, env=_env(None),
                            stdout=child, stderr=subprocess.PIPE)
    os.close(child)
    chunks = []
    while True:
      try:
        data = os.read(parent, 4096)
      except OSError:  # EIO: the child closed its end
        break
      if not data:
        break
      chunks.append(data)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    proc.stderr.close()
  finally:
    os.close(parent)
  out = b"".join(chunks)
  # The terminal translates "\n" to "\r\n" once, as for any program; the filter adds no second "\r".
  assert out == b"tty True\r\npython line\r\nmid\r\n\xff\xfe binary\r\nunfinished", out


_GLOO_SCRIPT = """
import os, sys
import numpy as np
filtered, pid, port = sys.argv[1] == "filtered", int(sys.argv[2]), sys.argv[3]
import jax
from jaxsem import distributed
if filtered:
  distributed.initialize(distributed.Settings(f"127.0.0.1:{port}", 2, pid, timeout_s=120))
else:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
print(f"before {pid}", flush=True)
print(f"stderr {pid}", file=sys.stderr, flush=True)
from jax.experimental import multihost_utils
got = multihost_utils.process_allgather(np.asarray([pid]))
print(f"gathered {pid}:", *np.ravel(got).tolist(), flush=True)
"""


def test_gloo_lines_are_dropped(tmp_path):
  """Two processes join and run one collective: by JAX alone each prints gloo's ``[Gloo] Rank ...`` line;
  through ``distributed.initialize`` neither does, and their own lines all come out."""
  outputs = {}
  for mode in ("raw", "filtered"):
    port = _free_port()
    procs, files = [], []
    try:
      for pid in range(2):
        out, err = open(tmp_path / f"{mode}{pid}.out", "w+"), open(tmp_path / f"{mode}{pid}.err", "w+")
        files += [out, err]
        cmd = [sys.executable, "-c", _GLOO_SCRIPT, mode, str(pid), str(port)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(2), stdout=out, stderr=err))
      for p in procs:
        p.wait(timeout=240)
      outputs[mode] = [(p.returncode, (tmp_path / f"{mode}{i}.out").read_text(),
                        (tmp_path / f"{mode}{i}.err").read_text()) for i, p in enumerate(procs)]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait(timeout=30)
      for f in files:
        f.close()
  for mode, runs in outputs.items():
    for pid, (code, out, err) in enumerate(runs):
      assert code == 0, err[-3000:]
      assert f"stderr {pid}\n" in err, err
      if mode == "raw":  # gloo writes to file descriptor 1 (C++ std::cout), maybe inside a print's line
        assert f"[Gloo] Rank {pid} is connected to 1 peer ranks" in out, out
        out = re.sub(r"\[Gloo\][^\n]*\n", "", out)
      else:
        assert "[Gloo]" not in out + err, out + err
      assert f"before {pid}\n" in out and f"gathered {pid}: 0 1\n" in out, out
