"""Axis geometry: do the axes' cosines track how the human scales correlate with one another?

    .venv/bin/python -m launch.geometry --model=gemma3-270m --out_dir=out/geometry

For every pair of norm-tagged scales (``--scales``, default ``norms``): the human inter-scale r
over the words both tables rate, the axes' cosine and the correlation of the words' projections
on the two axes; then r and slope of human r on each model side over the pairs, with a joint
bootstrap CI and a Mantel permutation p. Writes ``out_dir/summary.json`` (``human_r``,
``cosines``, ``projection_r``, ``pairs``, ``relation``, provenance), ``geometry_scatter.png``,
``geometry_matrices.png`` and ``report.html``.
"""

from absl import flags

from jaxsem import cli
from jaxsem import experiment_config
from jaxsem.analyses import geometry
from jaxsem.analyses import scale_directions
from jaxsem.report import geometry_report

_DEFAULT = cli.define_config("geometry")
_D = _DEFAULT.geometry
cli.define_model_flags(_DEFAULT.load)
flags.DEFINE_string("scales", _D.scales, "Scale set (norms, osgood28, or a JSON/TSV file) whose norm-tagged "
                    "scales are compared pair by pair.")
flags.DEFINE_list("also_scales", list(_D.also_scales), "Further scale sets compared the same way where their "
                  "scales carry norm tags.")
flags.DEFINE_list("norms", list(_D.norms), "Human norm tables whose tagged columns enter (empty: every table "
                  "a tag names).")
flags.DEFINE_enum("space", _D.space, ["input_embedding", "unembedding", "hidden"], "Analysis space.")
flags.DEFINE_bool("centre", _D.centre, "Subtract the vocabulary mean.")
flags.DEFINE_bool("whiten", _D.whiten, "Whiten with the vocabulary covariance.")
flags.DEFINE_enum("policy", _D.policy, ["single", "mean", "first"], "Word -> token policy.")
flags.DEFINE_enum("method", _D.method, list(scale_directions.METHODS), "Direction construction.")
flags.DEFINE_enum("metric", _D.metric, ["cosine", "dot"], "Projection metric of the words on the axes.")
flags.DEFINE_float("min_coverage", _D.min_coverage, "Least share of each table's rated words the policy must "
                   "cover.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("seed", _D.seed, "Seed of the bootstrap draws and the Mantel permutations.")
flags.DEFINE_integer("n_boot", _D.n_boot, "Joint bootstrap draws.", lower_bound=1)
flags.DEFINE_integer("n_perm", _D.n_perm, "Mantel permutations.", lower_bound=1)
for _name in ("scales", "also_scales", "norms", "space", "centre", "whiten", "policy", "method", "metric",
              "min_coverage", "seed", "n_boot", "n_perm"):
  cli.shortcut(_name, f"geometry.{_name}")
cli.define_out_dir_flag(_DEFAULT.out_dir, "Where summary.json, the figures and report.html are written.")
cli.define_overwrite_flag()
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  del argv
  config = cli.config()
  opts = experiment_config.options(geometry.GeometryOptions, config.geometry)
  geometry.check_options(opts)
  cli.check_model(config.load.model)
  cli.check_norms(opts.norms, allow_empty=True)
  cli.check_scales(opts.scales)
  for name in opts.also_scales:
    cli.check_scales(name)
  with cli.claim_out_dir("geometry", config) as out:
    model = cli.load_model(config.load)
    result = geometry.run_geometry(model, opts)
    cli.report(lambda: geometry_report.write(out, result, model, opts, config=config.to_dict()),
               geometry_report.digest(result), result["seconds"])


if __name__ == "__main__":
  cli.run(main)
