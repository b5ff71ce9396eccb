"""Whole-vocabulary sweep: every token x every direction to zarr, then its dimensionality.

    .venv/bin/python -m launch.sweep --model=gemma3-270m --scales=wordnet --out_dir=out/sweep

Writes ``out_dir/projections.zarr`` (``[vocab, directions]`` float32, zarr v3, rows =
token ids, column names in its attributes), ``out_dir/summary.json`` (components for
50/80/90% of the variance for the antonym directions, random baselines and the rated
words; provenance) and ``cumulative.png``.

The matrix is committed chunk by chunk: after ``kill -9`` the same command resumes from
the committed chunks, and a finished matrix is reused.

``--space=hidden --layers=all`` (or e.g. ``--layers=0,6,final``) sweeps every token's hidden
state in ``--context`` (default ``{token}``: right after ``<bos>``) at those sites instead: a
``[site, token, direction]`` array in ``--store_dtype`` (default float16; its size is printed
before the run starts and refused when the disk lacks it) and spectra per site. Multi-process: add
``--coordinator_address --num_processes --process_id`` (see jaxsem/distributed.py).
"""

import dataclasses

from absl import flags

from jaxsem import cli
from jaxsem import experiment_config
from jaxsem.analyses import hidden_sweep
from jaxsem.analyses import sweep
from jaxsem.errors import InputError
from jaxsem.report import writers

_DEFAULT = cli.define_config("sweep")
_D = _DEFAULT.sweep
cli.define_model_flags(_DEFAULT.load)
flags.DEFINE_string("scales", _D.scales, "Scale set: wordnet, osgood28, norms, or a JSON/TSV file.")
flags.DEFINE_enum("space", _D.space, ["input_embedding", "unembedding", "hidden"],
                  "Vocabulary matrix, or hidden: every token's state at --layers in --context.")
flags.DEFINE_string("layers", _D.layers, "Hidden only: all, or sites such as embed,0,6,final.")
flags.DEFINE_string("context", _D.context, "Hidden only: the text each token sits in, with one {token} slot.")
flags.DEFINE_enum("store_dtype", _D.store_dtype, ["auto", "float16", "bfloat16", "float32"],
                  "Zarr dtype (auto: float32 for embedding spaces, float16 for hidden).")
flags.DEFINE_integer("hidden_chunk_rows", _D.hidden_chunk_rows,
                     "Hidden only: tokens per block and zarr chunk.", lower_bound=1)
flags.DEFINE_float("checkpoint_seconds", _D.checkpoint_seconds,
                   "Hidden only: least seconds between two saves of the resumable moments.", lower_bound=0.0)
flags.DEFINE_integer("hidden_stats_sample", _D.hidden_stats_sample,
                     "Hidden only: tokens (seeded sample) whose states centre each site; 0 = all (exact).",
                     lower_bound=0)
flags.DEFINE_bool("centre", _D.centre, "Subtract the vocabulary mean.")
flags.DEFINE_bool("whiten", _D.whiten, "Whiten with the vocabulary covariance (causal inner product).")
flags.DEFINE_enum("policy", _D.policy, ["single", "mean", "first"],
                  "Word -> token policy of pole words (mean keeps every WordNet pair).")
flags.DEFINE_enum("method", _D.method, ["pole_mean", "pair_mean", "semaxis"], "Direction construction.")
flags.DEFINE_enum("metric", _D.metric, ["cosine", "dot"], "Projection metric.")
flags.DEFINE_bool("standardize", _D.standardize, "PCA of the standardized projections (correlation matrix).")
flags.DEFINE_integer("chunk_rows", _D.chunk_rows, "Vocabulary rows per block and zarr chunk.", lower_bound=1)
flags.DEFINE_list("baselines", list(_D.baselines), "Random direction sets to compare with.")
flags.DEFINE_list("norms", list(_D.norms), "Norm tables whose rated words give the rated-words comparison.")
flags.DEFINE_float("min_coverage", _D.min_coverage, "Least share of scales with usable poles.", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_integer("seed", _D.seed, "Seed of the random baselines.")
flags.DEFINE_bool("write_zarr", _D.write_zarr, "Stream the projection matrix to out_dir/projections.zarr.")
for _name in ("scales", "space", "centre", "whiten", "policy", "method", "metric", "standardize", "chunk_rows",
              "baselines", "norms", "min_coverage", "seed", "write_zarr", "layers", "context", "store_dtype",
              "hidden_chunk_rows", "checkpoint_seconds", "hidden_stats_sample"):
  cli.shortcut(_name, f"sweep.{_name}")
cli.define_out_dir_flag(_DEFAULT.out_dir, "Where the outputs are written. A sweep killed part way resumes from "
                        "its committed chunks when the same command runs again.")
cli.define_overwrite_flag("Replace the outputs of another run (another job or other inputs) found in "
                          "--out_dir, its projection matrix included; without it such a directory is "
                          "refused.")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  del argv
  config = cli.config()
  opts = dataclasses.replace(experiment_config.options(sweep.SweepOptions, config.sweep),
                             overwrite=flags.FLAGS.overwrite)
  cli.check_model(config.load.model)
  cli.check_scales(opts.scales)
  cli.check_norms(opts.norms, allow_empty=True)
  unknown = [b for b in opts.baselines if b not in sweep.BASELINES]
  if unknown:
    raise InputError(f"--baselines: unknown baseline {unknown[0]!r}; use any of "
                     f"{', '.join(sweep.BASELINES)}.")
  if opts.space == "hidden":
    hidden_sweep.check_options(opts)  # --method, --store_dtype: before the out_dir and the model
  with cli.claim_out_dir("sweep", config, resumable=True) as out:
    model = cli.load_model(config.load)
    result = sweep.run_sweep(model, opts, out)
    digest = hidden_sweep.digest(result) if opts.space == "hidden" else writers.sweep_digest(result)
    cli.report(lambda: writers.write_sweep(out, result, model, opts, config=config.to_dict()), digest,
               result["seconds"])


if __name__ == "__main__":
  cli.run(main)
