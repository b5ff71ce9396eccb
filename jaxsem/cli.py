"""Shared launcher plumbing: common flags, checks before work, and one-line errors.

Every launcher that writes claims its ``--out_dir`` (``claim_out_dir``) and checks every
name, file and flag it can without a model (``check_*``) before it loads the first
model, so that a mistake costs seconds, not a computation. Flag errors, like every
``InputError``, print one ``error: ...`` line and exit 2; ``--help`` exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxsem import distributed
from jaxsem import experiment_config
from jaxsem.errors import InputError
from jaxsem.io import assets, norms
from jaxsem.io import out_dir as out_dir_lib
from jaxsem.models.load import load
from jaxsem.report import html

# Config fields that change how a run goes, not what it writes: a run that differs only in
# these may resume or rewrite another's --out_dir.
_NOT_INPUTS = frozenset({"out_dir", "load.params_cache", "load.mesh", "steer.batch_size", "layers.batch_size",
                         "sweep.overwrite"})
# Short flag -> (dotted config field, converter): each short flag, when given, overrides that
# field of the --config file (after its --config.* overrides).
_SHORTCUTS: dict[str, tuple[str, Callable | None]] = {}
# The top-level keys of the launcher's default config: a --config file must have them all.
_SECTIONS: list[str] = []
_NAME: list[str] = ["quick"]  # the launcher's default config


def define_config(name: str):
  """--config (default ``configs/experiments/<name>.py``, dotted overrides ``--config.a.b=v``)
  and --config_print; returns the default config, whose values are the short flags' defaults."""
  try:
    # config_flags reads the --config.* overrides from sys.argv here, at definition time.
    config_flags.DEFINE_config_file(
        "config", experiment_config.path_of(name),
        f"Experiment config file with get_config() (default: configs/experiments/{name}.py); override a "
        "field with --config.<section>.<field>=value. The short flags below override it too.",
        lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    fail(f"a --config.* override names a field the config does not have ({_one_line(e).strip(chr(34))}); "
         f"see --config_print for the fields of configs/experiments/{name}.py.")
  flags.DEFINE_bool("config_print", False, "Print the resolved config (JSON) and exit without running.")
  default = experiment_config.get_config(name)
  _SECTIONS[:] = sorted(default.keys())
  _NAME[:] = [name]
  return default


def shortcut(flag: str, field: str, convert: Callable | None = None) -> None:
  """Makes --``flag`` an override of the config field ``field`` (dotted), converted by ``convert``."""
  _SHORTCUTS[flag] = (field, convert)


def _set_field(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  for part in parents:
    config = config[part]
  if isinstance(config[leaf], tuple) and isinstance(value, list):
    value = tuple(value)
  config[leaf] = value


def config():
  """The resolved config: --config, its --config.* overrides, then the short flags given.

  With --config_print, prints it as JSON and exits 0.
  """
  f = flags.FLAGS
  filename = f["config"].config_filename
  if not os.path.isfile(filename):
    raise InputError(f"--config={filename}: no such file; give a Python file with get_config(), e.g. "
                     f"configs/experiments/{_NAME[0]}.py.")
  try:
    resolved = f.config.copy_and_resolve_references()
  except Exception as e:  # config_flags reports a file it could not load (or run) only when read
    raise InputError(f"--config={filename}: cannot load it ({_one_line(e)[:300]}); give a "
                     "Python file with get_config(), e.g. one in configs/experiments/.") from None
  missing = [key for key in _SECTIONS if key not in resolved]
  if missing:
    raise InputError(f"--config={filename}: it has no {missing[0]!r}, which this launcher "
                     f"needs (it needs {', '.join(_SECTIONS)}); start from its default config.")
  resolved.unlock()
  for flag, (field, convert) in _SHORTCUTS.items():
    if flag in f and f[flag].present:
      value = f[flag].value
      try:
        _set_field(resolved, field, convert(value) if convert else value)
      except (KeyError, AttributeError):
        raise InputError(f"--{flag}: the config has no field {field}; use a config with that "
                         "section.") from None
      except TypeError as e:
        raise InputError(f"--{flag}={value!r} does not fit config field {field} ({e}).") from None
  resolved.lock()
  if f.config_print:
    print(json.dumps(resolved.to_dict(), indent=2, default=list))
    sys.exit(0)
  return resolved


def define_model_flags(load_section) -> None:
  """--model, --mesh, --dtype, --params_cache (overrides of the config's ``load``), and the
  distributed flags: every launcher that loads a model takes these."""
  if "model" in load_section:
    flags.DEFINE_string("model", load_section.model,
                        "Embedded model name (gemma3-270m, smollm2-135m-instruct), a .gguf file, "
                        "or a Hugging Face snapshot directory.")
    shortcut("model", "load.model")
  flags.DEFINE_string("mesh", load_section.mesh, "Device mesh, e.g. data:2,model:4 (-1 = remaining devices). "
                      "Default: one device; model:-1 puts every device on the model axis.")
  flags.DEFINE_enum("dtype", load_section.dtype, ["float32", "bfloat16"], "Parameter and activation dtype.")
  flags.DEFINE_bool("params_cache", load_section.params_cache, "Keep the loaded params in the jaxsem cache "
                    "($JAXSEM_CACHE/params) and restore them from there on later runs; --noparams_cache (or "
                    "$JAXSEM_PARAMS_CACHE=0) loads from the model file every time.")
  for name in ("mesh", "dtype", "params_cache"):
    shortcut(name, f"load.{name}")
  define_distributed_flags()


def define_distributed_flags() -> None:
  """Multi-process settings (else $JAX_COORDINATOR_ADDRESS etc., or a detected TPU/SLURM cluster)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator service "
                      "(multi-process runs; default $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (default $JAX_NUM_PROCESSES).")
  flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1 (default $JAX_PROCESS_ID).")
  flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                    "auto: join a run when settings are given or a TPU/SLURM/Open MPI cluster is detected; "
                    "on: always call jax.distributed.initialize; off: single process.")
  flags.DEFINE_integer("distributed_timeout", 300, "Seconds to wait for all processes to join.")


def start_distributed() -> dict:
  """Joins the multi-process run the flags describe (before any JAX computation)."""
  f = flags.FLAGS
  settings = distributed.resolve(f.coordinator_address, f.num_processes, f.process_id, mode=f.distributed,
                                 timeout_s=f.distributed_timeout)
  return distributed.initialize(settings)


def define_analysis_flags(config) -> None:
  """The flags shared by the alignment and structure launchers: overrides of ``config.analysis``
  (and ``config.out_dir``), with its values as their defaults."""
  a = config.analysis
  flags.DEFINE_string("scales", a.scales, "Scale set: osgood28, norms, wordnet, or a JSON/TSV file.")
  flags.DEFINE_list("norms", list(a.norms), "Human norm tables: warriner, anew, dal.")
  flags.DEFINE_enum("space", a.space, ["input_embedding", "unembedding", "hidden"],
                    "Where word vectors come from.")
  flags.DEFINE_integer("layer", a.layer, "Block whose output is the hidden space (-1: after the final norm).")
  flags.DEFINE_bool("centre", a.centre, "Subtract the vocabulary mean.")
  flags.DEFINE_bool("whiten", a.whiten, "Whiten with the vocabulary covariance (causal inner product).")
  flags.DEFINE_enum("policy", a.policy, ["single", "mean", "first"], "Word -> token policy.")
  flags.DEFINE_enum("method", a.method, ["pole_mean", "pair_mean", "semaxis"], "Direction construction.")
  flags.DEFINE_enum("metric", a.metric, ["cosine", "dot"], "Projection metric.")
  flags.DEFINE_float("min_coverage", a.min_coverage, "Least share of a norm table's words the policy must "
                     "cover.", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("seed", a.seed, "Seed of bootstraps, nulls, probe folds and random baselines.")
  flags.DEFINE_integer("n_boot", a.n_boot, "Bootstrap resamples.", lower_bound=1)
  flags.DEFINE_integer("n_null", a.n_null, "Random directions in the null.", lower_bound=1)
  flags.DEFINE_integer("n_null_pairs", a.n_null_pairs, "Random WordNet antonym pairs in the second null "
                       "(0: skip).", lower_bound=0)
  flags.DEFINE_integer("n_pair_sets", a.n_pair_sets, "Structure: random sets of WordNet pairs in the pair "
                       "null (0: skip).", lower_bound=0)
  flags.DEFINE_integer("n_tag_perms", a.n_tag_perms, "Structure: E/P/A tag permutations in the shuffled-tag "
                       "null.", lower_bound=1)
  for name in ("scales", "norms", "space", "layer", "centre", "whiten", "policy", "method", "metric",
               "min_coverage", "seed", "n_boot", "n_null", "n_null_pairs", "n_pair_sets", "n_tag_perms"):
    shortcut(name, f"analysis.{name}")
  define_out_dir_flag(config.out_dir, "Where summary.json and the figures are written.")
  define_overwrite_flag()


def define_out_dir_flag(default: str, help_text: str) -> None:
  """--out_dir, an override of the config's ``out_dir``."""
  flags.DEFINE_string("out_dir", default, help_text)
  shortcut("out_dir", "out_dir")


def define_overwrite_flag(help_text: str = "Replace the outputs of another run (another job or other inputs) "
                          "found in --out_dir; without it such a directory is refused.") -> None:
  """--overwrite, for every launcher that claims an --out_dir."""
  flags.DEFINE_bool("overwrite", False, help_text)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def run_inputs(resolved) -> dict:
  """The resolved config's fields that decide a run's outputs (dotted names; all but
  ``_NOT_INPUTS``), as recorded beside its outputs."""
  return {k: v for k, v in _flatten(resolved.to_dict()).items() if k not in _NOT_INPUTS}


def claim_out_dir(job: str, resolved, resumable: bool = False):
  """``out_dir.claim`` of the config's out_dir for ``job`` with this run's inputs and --overwrite."""
  return out_dir_lib.claim(resolved.out_dir, job=job, inputs=run_inputs(resolved),
                           overwrite=flags.FLAGS.overwrite, resumable=resumable)


def check_model(name: str, flag: str = "--model") -> None:
  """Checks a model name or path without loading it (an embedded name, a GGUF file, a snapshot
  directory); a typo of an embedded name is answered with the nearest one."""
  if not name:
    raise InputError(f"{flag} is empty; give one of {', '.join(assets.MODEL_NAMES)}, a .gguf file or a "
                     "Hugging Face snapshot directory.")
  if name not in assets.MODEL_NAMES:
    try:
      assets.resolve_model(name)  # a path: checks it is a GGUF file or snapshot directory; else unknown
    except InputError as e:
      raise InputError(f"{flag}: {e}") from None


def check_norms(names, flag: str = "--norms", allow_empty: bool = False) -> None:
  """Checks norm table names (with a did-you-mean for typos)."""
  if not names and not allow_empty:
    raise InputError(f"{flag} is empty; give one or more of {', '.join(norms.NORM_NAMES)}.")
  for name in names:
    if name not in norms.NORM_NAMES:
      raise InputError(f"{flag}: unknown norm table {name!r}{assets.did_you_mean(name, norms.NORM_NAMES)}; "
                       f"use any of {', '.join(norms.NORM_NAMES)}.")


def check_scales(name: str):
  """Reads and validates a scale set (a name or a file) before any model loads; returns it."""
  from jaxsem.io import scales as scales_io

  if not name:
    raise InputError(f"--scales is empty; give one of {', '.join(scales_io.SCALE_SETS)} or a JSON/TSV file.")
  return scales_io.load_scales(name)


def run_analysis(job: str, run: Callable, write: Callable, digest: Callable) -> None:
  """Resolves the config and checks it, claims its out_dir, then loads the model, runs
  ``run(model, options)``, writes to out_dir and prints the digest."""
  from jaxsem.analyses.experiments import Options

  resolved = config()
  opts = experiment_config.options(Options, resolved.analysis)
  check_model(resolved.load.model)
  check_norms(opts.norms)
  check_scales(opts.scales)
  with claim_out_dir(job, resolved) as out:
    model = load_model(resolved.load)
    result = run(model, opts)
    report(lambda: write(out, result, model, opts, config=resolved.to_dict()), digest(result),
           result["seconds"])


def load_model(load_section, name: str | None = None):
  """Loads the config's model (or ``name``) with its mesh, dtype and params cache, printing progress."""
  return load(name or load_section.model, mesh=load_section.mesh, dtype=load_section.dtype,
              params_cache=load_section.params_cache, progress=True)


def report(write: Callable[[], object], digest: list[str], seconds: float) -> None:
  """On process 0 only: writes the outputs and prints the digest."""
  if not distributed.is_main():
    return
  path = write()
  page = html.write_report(Path(path).parent)
  print("\n".join(digest))
  print(f"wrote {path} and {page} ({seconds:.1f} s)")


def fail(message: str, code: int = 2) -> None:
  """Prints one line to stderr and exits non-zero (no traceback)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _one_line(text: str) -> str:
  return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag as one ``error:`` line (exit 2) and help as exit 0."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{_one_line(e)} (see --help).")
  except SystemExit as e:  # --help, --helpfull, --only_check_args: they print, then exit
    sys.exit(0 if e.code in (None, 0, 1) else e.code)


def run(main: Callable[[list[str]], None]) -> None:
  """``absl.app.run(main)``, with ``InputError`` and flag errors turned into one-line errors."""

  def wrapped(argv):
    try:
      if "num_processes" in flags.FLAGS:
        start_distributed()
      main(argv)
    except InputError as e:
      fail(str(e))
    except KeyboardInterrupt:
      fail("interrupted", code=130)

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # JAX logs its backend probing (e.g. no TPU on this host) at INFO; keep launches quiet.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  logging.getLogger("jax._src.distributed").setLevel(logging.WARNING)  # "Connecting to ..." per process
  app.run(wrapped, flags_parser=parse_flags)
