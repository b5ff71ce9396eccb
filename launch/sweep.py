"""Whole-vocabulary sweep: every token x every direction to zarr, then its dimensionality.

    .venv/bin/python -m launch.sweep --model=gemma3-270m --scales=wordnet --out_dir=out/sweep

Writes ``out_dir/projections.zarr`` (``[vocab, directions]`` float32, zarr v3, rows =
token ids, column names in its attributes), ``out_dir/summary.json`` (components for
50/80/90% of the variance for the antonym directions, random baselines and the rated
words; provenance) and ``cumulative.png``.

The matrix is committed chunk by chunk: after ``kill -9`` the same command resumes from
the committed chunks, and a finished matrix is reused. Multi-process: add
``--coordinator_address --num_processes --process_id`` (see jaxsem/distributed.py).
"""

from absl import flags

from jaxsem import cli
from jaxsem.analyses import sweep
from jaxsem.errors import InputError
from jaxsem.report import writers

cli.define_model_flags()
flags.DEFINE_string("scales", "wordnet", "Scale set: wordnet, osgood28, norms, or a JSON/TSV file.")
flags.DEFINE_enum("space", "input_embedding", ["input_embedding", "unembedding"], "Vocabulary matrix.")
flags.DEFINE_bool("centre", True, "Subtract the vocabulary mean.")
flags.DEFINE_bool("whiten", False, "Whiten with the vocabulary covariance (causal inner product).")
flags.DEFINE_enum("policy", "mean", ["single", "mean", "first"],
                  "Word -> token policy of pole words (mean keeps every WordNet pair).")
flags.DEFINE_enum("method", "pole_mean", ["pole_mean", "pair_mean", "semaxis"], "Direction construction.")
flags.DEFINE_enum("metric", "cosine", ["cosine", "dot"], "Projection metric.")
flags.DEFINE_bool("standardize", True, "PCA of the standardized projections (correlation matrix).")
flags.DEFINE_integer("chunk_rows", 8192, "Vocabulary rows per block and zarr chunk.", lower_bound=1)
flags.DEFINE_list("baselines", list(sweep.BASELINES), "Random direction sets to compare with.")
flags.DEFINE_list("norms", ["warriner"], "Norm tables whose rated words give the rated-words comparison.")
flags.DEFINE_float("min_coverage", 0.2, "Least share of scales with usable poles.", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_integer("seed", 0, "Seed of the random baselines.")
flags.DEFINE_bool("write_zarr", True, "Stream the projection matrix to out_dir/projections.zarr.")
flags.DEFINE_string("out_dir", "out/sweep", "Where the outputs are written. A sweep killed part way "
                    "resumes from its committed chunks when the same command runs again.")
cli.define_overwrite_flag("Replace the outputs of another run (another job or other inputs) found in "
                          "--out_dir, its projection matrix included; without it such a directory is "
                          "refused.")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  del argv
  f = flags.FLAGS
  opts = sweep.SweepOptions(scales=f.scales, space=f.space, centre=f.centre, whiten=f.whiten, policy=f.policy,
                            method=f.method, metric=f.metric, standardize=f.standardize,
                            chunk_rows=f.chunk_rows, baselines=tuple(f.baselines), norms=tuple(f.norms),
                            min_coverage=f.min_coverage, seed=f.seed, write_zarr=f.write_zarr,
                            overwrite=f.overwrite)
  cli.check_model(f.model)
  cli.check_scales(f.scales)
  cli.check_norms(opts.norms, allow_empty=True)
  unknown = [b for b in opts.baselines if b not in sweep.BASELINES]
  if unknown:
    raise InputError(f"--baselines: unknown baseline {unknown[0]!r}; use any of "
                     f"{', '.join(sweep.BASELINES)}.")
  with cli.claim_out_dir("sweep", resumable=True) as out:
    model = cli.load_model()
    result = sweep.run_sweep(model, opts, out)
    cli.report(lambda: writers.write_sweep(out, result, model, opts), writers.sweep_digest(result),
               result["seconds"])


if __name__ == "__main__":
  cli.run(main)
