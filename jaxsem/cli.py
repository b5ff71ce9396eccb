"""Shared launcher plumbing: common flags, checks before work, and one-line errors.

Every launcher that writes claims its ``--out_dir`` (``claim_out_dir``) and checks every
name, file and flag it can without a model (``check_*``) before it loads the first
model, so that a mistake costs seconds, not a computation. Flag errors, like every
``InputError``, print one ``error: ...`` line and exit 2; ``--help`` exits 0.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from absl import app
from absl import flags

from jaxsem import distributed
from jaxsem.errors import InputError
from jaxsem.io import assets
from jaxsem.io import out_dir as out_dir_lib
from jaxsem.models.load import load

# Flags that change how a run goes, not what it writes: a run that differs only in these
# may resume or rewrite another's --out_dir.
_NOT_INPUTS = frozenset({"out_dir", "overwrite", "params_cache", "mesh", "batch_size", "coordinator_address",
                         "num_processes", "process_id", "distributed", "distributed_timeout"})


def define_model_flags() -> None:
  """--model, --mesh, --dtype, --params_cache: every launcher that loads a model takes these."""
  flags.DEFINE_string("model", "gemma3-270m",
                      "Embedded model name (gemma3-270m, smollm2-135m-instruct), a .gguf file, "
                      "or a Hugging Face snapshot directory.")
  flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2,model:4 (-1 = remaining devices). "
                      "Default: one device; model:-1 puts every device on the model axis.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and activation dtype.")
  flags.DEFINE_bool("params_cache", True, "Keep the loaded params in the jaxsem cache ($JAXSEM_CACHE/params) "
                    "and restore them from there on later runs; --noparams_cache (or "
                    "$JAXSEM_PARAMS_CACHE=0) loads from the model file every time.")
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


def define_analysis_flags(scales: str, out_dir: str) -> None:
  """The flags shared by the alignment and structure launchers."""
  flags.DEFINE_string("scales", scales, "Scale set: osgood28, norms, wordnet, or a JSON/TSV file.")
  flags.DEFINE_list("norms", ["warriner"], "Human norm tables: warriner, anew, dal.")
  flags.DEFINE_enum("space", "input_embedding", ["input_embedding", "unembedding", "hidden"],
                    "Where word vectors come from.")
  flags.DEFINE_integer("layer", None, "Block whose output is the hidden space (-1: after the final norm).")
  flags.DEFINE_bool("centre", True, "Subtract the vocabulary mean.")
  flags.DEFINE_bool("whiten", False, "Whiten with the vocabulary covariance (causal inner product).")
  flags.DEFINE_enum("policy", "single", ["single", "mean", "first"], "Word -> token policy.")
  flags.DEFINE_enum("method", "pole_mean", ["pole_mean", "pair_mean", "semaxis"], "Direction construction.")
  flags.DEFINE_enum("metric", "cosine", ["cosine", "dot"], "Projection metric.")
  flags.DEFINE_float("min_coverage", 0.5, "Least share of a norm table's words the policy must cover.",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("seed", 0, "Seed of bootstraps, nulls, probe folds and random baselines.")
  flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples.", lower_bound=1)
  flags.DEFINE_integer("n_null", 1000, "Random directions in the null.", lower_bound=1)
  flags.DEFINE_integer("n_null_pairs", 300, "Random WordNet antonym pairs in the second null (0: skip).",
                       lower_bound=0)
  flags.DEFINE_integer("n_pair_sets", 200, "Structure: random sets of WordNet pairs in the pair null (0: skip).",
                       lower_bound=0)
  flags.DEFINE_integer("n_tag_perms", 1000, "Structure: E/P/A tag permutations in the shuffled-tag null.",
                       lower_bound=1)
  flags.DEFINE_string("out_dir", out_dir, "Where summary.json and the figures are written.")
  define_overwrite_flag()


def define_overwrite_flag(help_text: str = "Replace the outputs of another run (another job or other inputs) "
                          "found in --out_dir; without it such a directory is refused.") -> None:
  """--overwrite, for every launcher that claims an --out_dir."""
  flags.DEFINE_bool("overwrite", False, help_text)


def run_inputs() -> dict:
  """The launcher's flag values that decide its outputs (every flag of the launcher's module
  and of this one, except ``_NOT_INPUTS``), as recorded beside its outputs."""
  f = flags.FLAGS
  modules = {__name__, f.find_module_defining_flag("out_dir")}
  return {fl.name: fl.value for module, fls in f.flags_by_module_dict().items() if module in modules
          for fl in fls if fl.name not in _NOT_INPUTS}


def claim_out_dir(job: str, resumable: bool = False):
  """``out_dir.claim`` of --out_dir for ``job`` with this run's inputs and --overwrite."""
  f = flags.FLAGS
  return out_dir_lib.claim(f.out_dir, job=job, inputs=run_inputs(), overwrite=f.overwrite,
                           resumable=resumable)


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
    raise InputError(f"{flag} is empty; give one or more of {', '.join(assets.NORM_NAMES)}.")
  for name in names:
    if name not in assets.NORM_NAMES:
      raise InputError(f"{flag}: unknown norm table {name!r}{assets.did_you_mean(name, assets.NORM_NAMES)}; "
                       f"use any of {', '.join(assets.NORM_NAMES)}.")


def check_words(words, flag: str = "--words", least: int = 4) -> None:
  """Checks a steering word flag: one norm table name, or at least ``least`` words; a lone
  word near a norm table's name is taken for its typo."""
  words = list(words)
  if len(words) == 1 and words[0] in assets.NORM_NAMES:
    return
  hint = assets.did_you_mean(words[0], assets.NORM_NAMES) if len(words) == 1 else ""
  if hint:
    raise InputError(f"{flag}={words[0]} is not a norm table{hint}; give one of "
                     f"{', '.join(assets.NORM_NAMES)}, or at least {least} words.")
  if len(words) < least:
    raise InputError(f"{flag}={','.join(words)}: give a norm table ({', '.join(assets.NORM_NAMES)}) or at "
                     f"least {least} comma-separated words.")


def check_scales(name: str):
  """Reads and validates a scale set (a name or a file) before any model loads; returns it."""
  from jaxsem.io import scales as scales_io

  if not name:
    raise InputError(f"--scales is empty; give one of {', '.join(scales_io.SCALE_SETS)} or a JSON/TSV file.")
  return scales_io.load_scales(name)


def analysis_options():
  """The analysis flags as ``jaxsem.analyses.experiments.Options``."""
  from jaxsem.analyses.experiments import Options

  f = flags.FLAGS
  return Options(scales=f.scales, norms=tuple(f.norms), space=f.space, layer=f.layer, centre=f.centre,
                 whiten=f.whiten, policy=f.policy, method=f.method, metric=f.metric,
                 min_coverage=f.min_coverage, seed=f.seed, n_boot=f.n_boot, n_null=f.n_null,
                 n_null_pairs=f.n_null_pairs, n_pair_sets=f.n_pair_sets, n_tag_perms=f.n_tag_perms)


def run_analysis(job: str, run: Callable, write: Callable, digest: Callable) -> None:
  """Checks the flags and claims --out_dir, then loads --model, runs ``run(model, options)``,
  writes to --out_dir and prints the digest."""
  f = flags.FLAGS
  opts = analysis_options()
  check_model(f.model)
  check_norms(opts.norms)
  check_scales(opts.scales)
  with claim_out_dir(job) as out:
    model = load_model()
    result = run(model, opts)
    report(lambda: write(out, result, model, opts), digest(result), result["seconds"])


def load_model():
  """Loads --model on --mesh with --dtype and --params_cache, printing load progress."""
  f = flags.FLAGS
  return load(f.model, mesh=f.mesh, dtype=f.dtype, params_cache=f.params_cache, progress=True)


def report(write: Callable[[], object], digest: list[str], seconds: float) -> None:
  """On process 0 only: writes the outputs and prints the digest."""
  if not distributed.is_main():
    return
  path = write()
  print("\n".join(digest))
  print(f"wrote {path} ({seconds:.1f} s)")


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
