"""Shared launcher plumbing: common flags and one-line errors for user mistakes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from absl import app
from absl import flags

from jaxsem import distributed
from jaxsem.errors import InputError
from jaxsem.models.load import load


def define_model_flags() -> None:
  """--model, --mesh, --dtype, --params_cache: every launcher that loads a model takes these."""
  flags.DEFINE_string("model", "gemma3-270m",
                      "Embedded model name (gemma3-270m, smollm2-135m-instruct), a .gguf file, "
                      "or a Hugging Face snapshot directory.")
  flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2,model:4 (-1 = remaining devices). "
                      "Default: all devices on the model axis.")
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


def analysis_options():
  """The analysis flags as ``jaxsem.analyses.experiments.Options``."""
  from jaxsem.analyses.experiments import Options

  f = flags.FLAGS
  return Options(scales=f.scales, norms=tuple(f.norms), space=f.space, layer=f.layer, centre=f.centre,
                 whiten=f.whiten, policy=f.policy, method=f.method, metric=f.metric,
                 min_coverage=f.min_coverage, seed=f.seed, n_boot=f.n_boot, n_null=f.n_null,
                 n_null_pairs=f.n_null_pairs, n_pair_sets=f.n_pair_sets, n_tag_perms=f.n_tag_perms)


def run_analysis(run: Callable, write: Callable, digest: Callable) -> None:
  """Loads --model, runs ``run(model, options)``, writes to --out_dir, prints the digest."""
  f = flags.FLAGS
  model = load_model()
  opts = analysis_options()
  result = run(model, opts)
  report(lambda: write(f.out_dir, result, model, opts), digest(result), result["seconds"])


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


def run(main: Callable[[list[str]], None]) -> None:
  """``absl.app.run(main)``, with ``InputError`` turned into a one-line error."""

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
  app.run(wrapped)
