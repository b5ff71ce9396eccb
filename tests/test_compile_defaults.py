"""What importing jaxsem sets before JAX starts: one OpenBLAS thread and XLA's elemental CPU emitter
(for the jaxlib releases it was checked with), each unless the user chose otherwise."""

import os
import subprocess
import sys
from importlib import metadata

import jaxsem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOW = ("import os, jaxsem, jax; jax.devices(); print(os.environ['OPENBLAS_NUM_THREADS']);"
        " print(os.environ.get('XLA_FLAGS', ''))")
OURS = ("XLA_FLAGS", "OPENBLAS_NUM_THREADS", "JAXSEM_XLA_DEFAULTS")


def _import(**env) -> list[str]:
  base = {k: v for k, v in os.environ.items() if k not in OURS}
  proc = subprocess.run([sys.executable, "-c", SHOW], cwd=REPO, env={**base, "JAX_PLATFORMS": "cpu", **env},
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.splitlines()


def _checked() -> bool:
  return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:2]) in jaxsem.CHECKED_JAXLIB


def test_defaults_when_the_user_set_nothing():
  threads, flags = _import()
  assert threads == "1"
  assert ("--xla_cpu_use_fusion_emitters=false" in flags.split()) == _checked()


def test_the_users_choices_win():
  threads, flags = _import(OPENBLAS_NUM_THREADS="2", XLA_FLAGS="--xla_cpu_use_fusion_emitters=true")
  assert threads == "2" and flags == "--xla_cpu_use_fusion_emitters=true"
  _, flags = _import(JAXSEM_XLA_DEFAULTS="0", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert flags == "--xla_force_host_platform_device_count=2"


def test_other_flags_are_kept_beside_the_default():
  _, flags = _import(XLA_FLAGS="--xla_force_host_platform_device_count=3")
  assert flags.split()[0] == "--xla_force_host_platform_device_count=3"


def test_provenance_records_the_flags():
  from jaxsem.report import summary

  assert summary.provenance()["xla_flags"] == os.environ.get("XLA_FLAGS", "")
