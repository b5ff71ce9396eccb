"""Fixtures of the io tests."""

from pathlib import Path

import pytest

from jaxsem.io import cache
from jaxsem.io import params_cache


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
  """An empty jaxsem cache directory for one test, with the params cache switched on."""
  root = tmp_path / "cache"
  monkeypatch.setenv(cache.CACHE_ENV, str(root))
  monkeypatch.delenv(params_cache.ENV, raising=False)
  return root
