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
from jaxsem.io import out_dir
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
flags.DEFINE_bool("overwrite", False, "Replace a projection matrix in --out_dir made from other inputs.")


def main(argv):
  del argv
  f = flags.FLAGS
  opts = sweep.SweepOptions(scales=f.scales, space=f.space, centre=f.centre, whiten=f.whiten, policy=f.policy,
                            method=f.method, metric=f.metric, standardize=f.standardize,
                            chunk_rows=f.chunk_rows, baselines=tuple(f.baselines), norms=tuple(f.norms),
                            min_coverage=f.min_coverage, seed=f.seed, write_zarr=f.write_zarr,
                            overwrite=f.overwrite)
  with out_dir.claim(f.out_dir):
    model = cli.load_model()
    result = sweep.run_sweep(model, opts, f.out_dir)
    cli.report(lambda: writers.write_sweep(f.out_dir, result, model, opts), writers.sweep_digest(result),
               result["seconds"])


if __name__ == "__main__":
  cli.run(main)
