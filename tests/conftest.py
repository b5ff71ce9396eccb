"""Test set-up: 8 fake CPU devices so every test exercises sharding."""

import os

# Must happen before JAX initialises its backends.
os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

# Tests load from the model files (the dequantization path); tests/io/test_params_cache.py
# turns the params cache back on where it is the subject.
os.environ.setdefault("JAXSEM_PARAMS_CACHE", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: loads a real embedded model or the reference implementation")
