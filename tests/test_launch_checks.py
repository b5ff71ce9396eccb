"""Checks before work: every launcher claims its --out_dir and checks names, files and flags
before it loads a model; failed writes are one line naming --out_dir and leave no temporary file.

The subprocess cases all fail before any model loads (a few seconds each).
"""

import errno
import json

import matplotlib.pyplot as plt
import pytest

from jaxsem import cli
from jaxsem.analyses import steer
from jaxsem.errors import InputError
from jaxsem.io import assets, norms
from jaxsem.io import cache
from jaxsem.io import out_dir as out_dir_lib
from jaxsem.report import figures

from tests.test_launch import _assert_one_line_error, _run


def _full_disk():
  return OSError(errno.ENOSPC, "No space left on device")


def _enospc(*args, **kwargs):
  raise _full_disk()


# ----------------------------------------------------------------------------- atomic figure writes


def test_atomic_path_keeps_the_extension_and_cleans_up(tmp_path):
  target = tmp_path / "fig.png"
  with cache.atomic_path(target) as tmp:
    assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != target
    tmp.write_bytes(b"new")
  assert target.read_bytes() == b"new"
  with pytest.raises(OSError):
    with cache.atomic_path(target) as tmp:
      tmp.write_bytes(b"half")
      _enospc()
  assert target.read_bytes() == b"new"  # untouched
  assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_figure_on_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
  (tmp_path / "cosine.png").write_bytes(b"earlier")
  monkeypatch.setattr(plt.Figure, "savefig", _enospc)
  n_figures = len(plt.get_fignums())
  with pytest.raises(OSError, match="No space"):
    figures.heatmap(tmp_path / "cosine.png", [[1.0, 0.5], [0.5, 1.0]], ["a", "b"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["cosine.png"]
  assert (tmp_path / "cosine.png").read_bytes() == b"earlier"
  assert len(plt.get_fignums()) == n_figures  # the figure was closed


def test_figure_is_a_real_png_under_its_own_name(tmp_path):
  path = figures.heatmap(tmp_path / "m.png", [[1.0, 0.0], [0.0, 1.0]], ["a", "b"])
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]


# ----------------------------------------------------------------------------- write errors in a claim


def test_full_disk_inside_a_claim_names_the_given_out_dir(tmp_path, monkeypatch):
  out = tmp_path / "align"
  monkeypatch.setattr(plt.Figure, "savefig", _enospc)
  with pytest.raises(InputError) as info:
    with out_dir_lib.claim(out, job="align", inputs={"seed": 0}):
      figures.heatmap(out / "inner" / "cosine.png", [[1.0]], ["a"])
  message = str(info.value)
  assert message.startswith(f"--out_dir={out}: cannot write there (No space left on device)")
  assert "inner" not in message and "\n" not in message
  assert "rerun" not in message  # not resumable: nothing to resume
  assert not [p for p in out.rglob("*") if not p.is_dir()]  # no temporary file, record or lock left


def test_a_writer_error_about_an_inner_directory_is_reported_against_out_dir(tmp_path, monkeypatch):
  from jaxsem.report import summary

  out = tmp_path / "main"
  monkeypatch.setattr(summary, "atomic_write_text", lambda *a, **k: _enospc())
  with pytest.raises(InputError) as info:
    summary.write(out / "model" / "align", {"x": 1})
  assert str(info.value).startswith(f"--out_dir={out / 'model' / 'align'}: cannot write there (No space")
  with pytest.raises(InputError, match=rf"^--out_dir={out}: cannot write there \(No space"):
    with out_dir_lib.claim(out, job="main", inputs={}):
      summary.write(out / "model" / "align", {"x": 1})


@pytest.mark.parametrize("relayed", [False, True], ids=["raised", "relayed-as-text"])
def test_a_full_disk_in_the_projection_matrix_names_out_dir(tmp_path, relayed):
  """The zarr writer's own one-line error (naming out_dir/projections.zarr) is re-reported,
  also when process 0 relays it to every process as text."""
  out = tmp_path / "sweep"
  with pytest.raises(InputError) as info:
    with out_dir_lib.claim(out, job="sweep", inputs={}, resumable=True):
      (out / "projections.zarr").mkdir()
      error = out_dir_lib.write_error(out / "projections.zarr", _full_disk())
      raise InputError(str(error)) if relayed else error
  assert str(info.value).startswith(f"--out_dir={out}: cannot write there (No space left on device)")
  assert "projections.zarr" not in str(info.value) and "rerun the same command to resume" in str(info.value)


def test_resume_is_offered_only_where_work_was_committed(tmp_path):
  out = tmp_path / "sweep"
  with pytest.raises(InputError) as nothing:
    with out_dir_lib.claim(out, job="sweep", inputs={}, resumable=True):
      _enospc()
  assert "rerun" not in str(nothing.value)
  with pytest.raises(InputError) as some:
    with out_dir_lib.claim(out, job="sweep", inputs={}, resumable=True):
      (out / "projections.zarr").mkdir()
      _enospc()
  assert "rerun the same command to resume" in str(some.value)


def test_other_errors_inside_a_claim_pass_through(tmp_path):
  with pytest.raises(InputError, match="^Unknown word norms"):
    with out_dir_lib.claim(tmp_path / "a", job="align", inputs={}):
      norms.read_norms("nosuch")
  with pytest.raises(FileNotFoundError):  # reading a missing input is not a write error
    with out_dir_lib.claim(tmp_path / "a", job="align", inputs={}):
      open(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------- another run's outputs


def test_another_runs_outputs_are_refused_unless_overwrite(tmp_path):
  out = tmp_path / "out"
  with out_dir_lib.claim(out, job="align", inputs={"norms": ["warriner"], "seed": 0}):
    (out / "summary.json").write_text(json.dumps({"job": "align"}))
  with out_dir_lib.claim(out, job="align", inputs={"norms": ["warriner"], "seed": 0}):  # the same run
    pass
  with pytest.raises(InputError, match=r"holds the outputs of another run \(job 'align'\)") as other_job:
    with out_dir_lib.claim(out, job="structure", inputs={"norms": ["warriner"], "seed": 0}):
      pass
  assert "--overwrite" in str(other_job.value) and str(out) in str(other_job.value)
  with pytest.raises(InputError, match=r"other inputs \(--seed differs\).*--overwrite"):
    with out_dir_lib.claim(out, job="align", inputs={"norms": ["warriner"], "seed": 1}):
      pass
  assert (out / "summary.json").exists()  # a refused run changes nothing
  with out_dir_lib.claim(out, job="align", inputs={"norms": ["warriner"], "seed": 1}, overwrite=True):
    assert not (out / "summary.json").exists()  # never paired with the new record
  record = json.loads((out / out_dir_lib.RECORD_NAME).read_text())
  assert record == {"job": "align", "inputs": {"norms": ["warriner"], "seed": 1}}


def test_a_summary_without_a_record_counts_by_its_job(tmp_path):
  out = tmp_path / "old"
  out.mkdir()
  (out / "summary.json").write_text(json.dumps({"job": "sweep"}))
  with out_dir_lib.claim(out, job="sweep", inputs={"scales": "wordnet"}):
    pass
  (out / out_dir_lib.RECORD_NAME).unlink()
  with pytest.raises(InputError, match="another run \\(job 'sweep'\\)"):
    with out_dir_lib.claim(out, job="steer", inputs={}):
      pass
  (out / "summary.json").write_text("{not json")
  with pytest.raises(InputError, match="unreadable summary.json"):
    with out_dir_lib.claim(out, job="sweep", inputs={}):
      pass


# ----------------------------------------------------------------------------- names


def test_did_you_mean_only_for_near_names():
  assert assets.did_you_mean("warrinr", norms.NORM_NAMES) == " (did you mean warriner?)"
  assert assets.did_you_mean("gemma3-207m", assets.MODEL_NAMES) == " (did you mean gemma3-270m?)"
  assert assets.did_you_mean("good", norms.NORM_NAMES) == ""
  with pytest.raises(InputError, match=r"--models: Unknown model 'smolm2-135m-instruct' \(did you mean "
                     r"smollm2-135m-instruct\?\)"):
    cli.check_model("smolm2-135m-instruct", flag="--models")
  with pytest.raises(InputError, match=r"--words=anwe is not a norm table \(did you mean anew\?\)"):
    steer.check_options(steer.SteerOptions(words=("anwe",)))
  with pytest.raises(InputError, match="at least 4"):
    steer.check_options(steer.SteerOptions(words=("good", "bad")))
  steer.check_options(steer.SteerOptions(words=("dal",)))
  steer.check_options(steer.SteerOptions(words=("good", "bad", "fast", "slow")))
  with pytest.raises(InputError, match="--norms is empty"):
    cli.check_norms([])


# ----------------------------------------------------------------------------- launchers, before any model


def test_flag_errors_are_one_line_and_help_exits_zero():
  proc = _run("launch.align", "--n_boot=-1")
  _assert_one_line_error(proc, "--n_boot=-1")
  assert proc.returncode == 2 and "FATAL" not in proc.stderr
  proc = _run("launch.sweep", "--no_such_flag=1")
  _assert_one_line_error(proc, "no_such_flag")
  assert proc.returncode == 2 and "FATAL" not in proc.stderr
  proc = _run("launch.structure", "--help")
  assert proc.returncode == 0 and "--out_dir:" in proc.stdout and "--[no]overwrite:" in proc.stdout


@pytest.mark.parametrize("launcher,args,needles", [
    ("launch.main", ["--models=smollm2-135m-instruct,gemma3-27m"],
     ["gemma3-27m", "did you mean gemma3-270m?"]),
    ("launch.main", ["--models="], ["--models is empty"]),
    ("launch.align", ["--norms="], ["--norms is empty"]),
    ("launch.align", ["--norms=warriner,dall"], ["'dall'", "did you mean dal?"]),
    ("launch.steer", ["--words=warrinr"], ["--words=warrinr", "did you mean warriner?"]),
    ("launch.steer", ["--model=smollm2-135m", "--words=warriner"], ["smollm2-135m",
                                                                   "did you mean smollm2-135m-instruct?"]),
    ("launch.sweep", ["--baselines=gausian"], ["--baselines", "gausian"]),
], ids=["main-model-typo", "main-no-models", "align-no-norms", "align-norm-typo", "steer-words-typo",
        "steer-model-typo", "sweep-baseline"])
def test_names_are_checked_before_any_model_loads(tmp_path, launcher, args, needles):
  """Each exits 2 with one line before loading (no load progress) and creates no --out_dir."""
  out = tmp_path / "out"
  proc = _run(launcher, f"--out_dir={out}", *args)
  _assert_one_line_error(proc, *needles)
  assert proc.returncode == 2
  assert "load " not in proc.stderr and not out.exists()


@pytest.mark.parametrize("launcher,job,args", [
    ("launch.structure", "align", ["--model=smollm2-135m-instruct"]),
    ("launch.steer", "steer", ["--model=smollm2-135m-instruct"]),
    ("launch.main", "main", ["--models=smollm2-135m-instruct"]),
], ids=["structure-in-align-dir", "steer-other-flags", "main-other-flags"])
def test_another_runs_out_dir_is_refused_before_loading(tmp_path, launcher, job, args):
  """A directory of another job (or, for steer and main, the same job with other flags) is refused."""
  out = tmp_path / "out"
  out.mkdir()
  (out / out_dir_lib.RECORD_NAME).write_text(json.dumps({"job": job, "inputs": {"seed": 12345}}))
  (out / "summary.json").write_text(json.dumps({"job": job, "kept": True}))
  proc = _run(launcher, f"--out_dir={out}", *args)
  _assert_one_line_error(proc, str(out), "job 'align'" if job == "align" else "other inputs", "--overwrite")
  assert proc.returncode == 2 and "load " not in proc.stderr
  assert json.loads((out / "summary.json").read_text())["kept"] is True


def test_out_dir_that_cannot_be_made_does_not_offer_to_resume():
  proc = _run("launch.steer", "--out_dir=/proc/jaxsem-out", "--words=warriner")
  _assert_one_line_error(proc, "--out_dir=/proc/jaxsem-out", "cannot write there")
  assert "rerun" not in proc.stderr and "load " not in proc.stderr


@pytest.mark.parametrize("launcher,args,needles", [
    ("launch.main", ["--config=configs/experiments/nope.py"], ["--config=configs/experiments/nope.py",
                                                               "no such file"]),
    ("launch.steer", ["--config.steer.nonfield=1"], ["'nonfield'", "--config_print"]),
    ("launch.steer", ["--config.steer.n_words=abc"], ["--config.steer.n_words=abc"]),
    ("launch.align", ["--config=configs/experiments/steer.py"], ["no 'analysis'", "start from"]),
], ids=["missing-file", "unknown-field", "bad-value", "wrong-sections"])
def test_config_errors_are_one_line_before_any_model_loads(tmp_path, launcher, args, needles):
  out = tmp_path / "out"
  proc = _run(launcher, f"--out_dir={out}", *args)
  _assert_one_line_error(proc, *needles)
  assert proc.returncode == 2 and "load " not in proc.stderr and not out.exists()


def test_config_print_shows_overrides_in_order_of_precedence():
  """File < --config.* override < short flag; --config_print prints the result and exits 0."""
  proc = _run("launch.steer", "--config=configs/experiments/steer.py", "--config.steer.n_words=64",
              "--config.steer.n_boot=77", "--n_boot=33", "--config_print")
  assert proc.returncode == 0, proc.stderr
  resolved = json.loads(proc.stdout)
  assert resolved["steer"]["n_words"] == 64 and resolved["steer"]["n_boot"] == 33
  assert resolved["steer"]["n_perm"] == steer.SteerOptions().n_perm  # untouched: the file's value
  assert resolved["load"]["model"] == "gemma3-270m" and resolved["out_dir"] == "out/steer"

