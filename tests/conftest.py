"""Test set-up: 8 fake CPU devices so every test exercises sharding, and no network.

Every test leaves ``os.environ`` as it found it (``monkeypatch.setenv`` does that); a test
that does not fails at teardown. The quick subset (``-m "not slow"``) imports neither torch
nor transformers: whatever needs them is marked ``slow`` and imports them itself.
"""

import os
import subprocess
import sys
import warnings

import pytest

# Must happen before JAX initialises its backends. JAXSEM_TEST_PLATFORM=gpu (or tpu) runs the
# tests on that accelerator instead, with its real devices (benchmarks/device_check.sh does so).
_PLATFORM = os.environ.get("JAXSEM_TEST_PLATFORM", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if _PLATFORM == "cpu":
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The suite compiles many small programs that then run for milliseconds; most of its time went to
# LLVM optimising their machine code. The tests check what the programs compute, which the HLO (its
# passes, fusions and sharding, as in any run) decides, up to float rounding; so tests compile with
# LLVM's optimisation off, and the launchers and benchmarks/ with XLA's defaults. An XLA_FLAGS that
# names --xla_backend_optimization_level keeps its own choice.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
# The CPU backend's MLIR fusion emitters spend about a third of the suite's compile time on these
# small programs; the older elemental emitter compiles the same fusions faster. XLA aborts the process
# on a flag it does not know, so this one is probed once (worker processes inherit the answer).
FAST_EMITTER = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flags: str) -> bool:
  """Whether a CPU backend starts with ``XLA_FLAGS=flags`` (in a child process, as XLA aborts)."""
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  try:
    proc = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                          timeout=120, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return proc.returncode == 0


if "xla_backend_optimization_level" not in _flags:
  _flags += " " + " ".join(FAST_COMPILE)
  if _PLATFORM == "cpu" and "xla_cpu_use_fusion_emitters" not in _flags and _xla_accepts(FAST_EMITTER):
    _flags += " " + FAST_EMITTER
os.environ["XLA_FLAGS"] = _flags.strip()

# Tests load from the model files (the dequantization path); tests/io/test_params_cache.py
# turns the params cache back on where it is the subject.
os.environ.setdefault("JAXSEM_PARAMS_CACHE", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

# The reference implementation (transformers) must never reach a hub. huggingface_hub reads
# these once, when first imported, so they hold for the whole run and are restored after it.
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_before_run: dict[str, str | None] = {}


# Test processes when pytest-xdist is installed and neither -n nor -p no:xdist is given. Whole files go
# to one worker (--dist loadfile), so a module's shared fixtures are built once.
DEFAULT_WORKERS = 2


def _default_workers(config) -> None:
  """``-n 2 --dist loadfile`` unless the command line says otherwise (as ``-n``/``--tx`` do)."""
  if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
    return  # xdist disabled or missing, or this is already a worker
  option = config.option
  if option.numprocesses is not None or option.tx or option.dist != "no" or config.getoption("collectonly"):
    return
  if config.getoption("usepdb", False):
    return
  workers = min(DEFAULT_WORKERS, len(os.sched_getaffinity(0)))
  if workers > 1:
    option.numprocesses, option.dist, option.tx = workers, "loadfile", ["popen"] * workers


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: loads a real embedded model, runs the reference implementation "
                                     "(torch, transformers), runs whole analyses in launcher processes, or takes over "
                                     "8 s on a 2-core CPU (a layer analysis of every site); "
                                     "deselect with -m 'not slow'")
  _default_workers(config)
  for key, value in _OFFLINE.items():
    _before_run[key] = os.environ.get(key)
    os.environ[key] = value


def pytest_unconfigure(config):
  for key, value in _before_run.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


# Set by pytest itself, or by a library for its own later use (torch, on first compile; the OpenMP
# settings that a CUDA build's libraries set on first import on an accelerator machine).
_NOT_THE_TESTS = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")


@pytest.fixture(autouse=True)
def _environment_restored():
  """Fails the test that changed ``os.environ`` without restoring it, and restores it."""
  before = dict(os.environ)
  yield
  after = dict(os.environ)
  changed = sorted(k for k in before.keys() | after.keys()
                   if before.get(k) != after.get(k) and k not in _NOT_THE_TESTS)
  if changed:
    for key in changed:
      if key in before:
        os.environ[key] = before[key]
      else:
        del os.environ[key]
    pytest.fail(f"the test changed os.environ {changed} and did not restore it; use monkeypatch.setenv")


class EmbeddedModels:
  """``jaxsem.load(name)`` of the embedded models, each loaded once per test process.

  A test that only reads a model shares this copy; one that needs another dtype or mesh loads
  its own. ``load_warnings(name)`` are the warnings the load gave.
  """

  def __init__(self):
    self._models = {}
    self._warnings = {}

  def __call__(self, name: str):
    if name not in self._models:
      import jaxsem
      with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        self._models[name] = jaxsem.load(name, params_cache=False)
      self._warnings[name] = [str(w.message) for w in record]
    return self._models[name]

  def load_warnings(self, name: str) -> list[str]:
    self(name)
    return self._warnings[name]


@pytest.fixture(scope="session")
def embedded_models() -> EmbeddedModels:
  """The embedded models, loaded on first use and shared by every test of this process."""
  return EmbeddedModels()


@pytest.fixture(scope="session")
def word_model(tmp_path_factory) -> str:
  """Path of a tiny GGUF model that has every rated, pole and readout word as one token
  (``tests/word_model.py``): launcher plumbing tests run on it in seconds."""
  from tests import word_model as word_model_lib

  return word_model_lib.write(tmp_path_factory.mktemp("word_model") / "words.gguf")
