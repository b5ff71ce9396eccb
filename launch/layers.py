"""Layer-resolved alignment and structure: every site from the input to the output embedding.

    .venv/bin/python -m launch.layers --model=gemma3-270m --norms=warriner --out_dir=out/layers

One forward pass per template (and batch) captures every block's output at each word's last
token; at each site the directions come from the pole words' states there, centred by a seeded
token sample in the same templates. Writes ``out_dir/summary.json`` (``layers``: one entry per
site with its alignment rows, probe ceiling, PCA cumulative variance, E/P/A congruence and
participation ratio; ``best``: the site with the highest r per norm column; the templates;
provenance), ``layers_alignment.png``, ``layers_pca.png``, ``layers_congruence.png`` and
``report.html``.

With four or more ``align_scales`` scales tagged with the tables' columns, every site also
carries the geometry relation (``geometry``: r of the human inter-scale r on the axis cosines
and on the projection correlations, with CI and Mantel p; ``best_geometry``) and
``layers_geometry.png`` is written. Warriner alone tags three scales, so the default run records
it as skipped; ``--norms=warriner,dal,brysbaert,lancaster`` gives 11-12 tagged columns (the
concreteness table lists many multiword entries, so the single-token policy covers under half of
it: lower ``--min_coverage``):

    .venv/bin/python -m launch.layers --model=gemma3-270m --norms=warriner,dal,brysbaert,lancaster \
        --min_coverage=0.3 --out_dir=out/layers
"""

from absl import flags

from jaxsem import cli
from jaxsem import experiment_config
from jaxsem.analyses import layers
from jaxsem.analyses.layers_geometry import MIN_GEOMETRY_SCALES
from jaxsem.report import layers_report

_DEFAULT = cli.define_config("layers")
_D = _DEFAULT.layers
cli.define_model_flags(_DEFAULT.load)
flags.DEFINE_string("align_scales", _D.align_scales, "Scales correlated with every norm column at every "
                    "site (norms, osgood28, wordnet, or a JSON/TSV file).")
flags.DEFINE_string("structure_scales", _D.structure_scales, "Scales whose PCA and E/P/A structure is "
                    "followed through the sites.")
flags.DEFINE_list("norms", list(_D.norms), "Human norm tables: warriner, anew, dal, brysbaert, lancaster.")
flags.DEFINE_multi_string("templates", list(_D.templates), f"Templates with one {{word}} slot (at least "
                          f"{layers.MIN_TEMPLATES}; repeat the flag for each); states are averaged over "
                          "them.")
flags.DEFINE_integer("n_words", _D.n_words, "Rated words per norm table, a seeded sample (0: all).",
                     lower_bound=0)
flags.DEFINE_integer("stats_sample", _D.stats_sample, "Vocabulary tokens whose states centre each site.",
                     lower_bound=2)
flags.DEFINE_bool("centre", _D.centre, "Subtract each site's mean over the token sample.")
flags.DEFINE_bool("whiten", _D.whiten, "Whiten each site with the token sample's covariance.")
flags.DEFINE_enum("policy", _D.policy, ["single", "mean", "first"], "Word -> token policy.")
flags.DEFINE_enum("method", _D.method, list(layers.METHODS), "Direction construction.")
flags.DEFINE_enum("metric", _D.metric, ["cosine", "dot"], "Projection metric.")
flags.DEFINE_float("min_coverage", _D.min_coverage, "Least share of a norm table's words the policy must "
                   "cover.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("seed", _D.seed, "Seed of the word and token samples, bootstraps, nulls and probe "
                     "folds.")
flags.DEFINE_integer("n_boot", _D.n_boot, "Bootstrap resamples per site.", lower_bound=1)
flags.DEFINE_integer("n_null", _D.n_null, "Random directions in the null per site.", lower_bound=1)
flags.DEFINE_integer("n_pair_sets", _D.n_pair_sets, "Random WordNet pair sets in the structure pair null per "
                     "site (0: skip).", lower_bound=0)
flags.DEFINE_integer("n_tag_perms", _D.n_tag_perms, "E/P/A tag permutations per site (0: skip).",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", _D.batch_size, "Sequences per forward call.", lower_bound=1)
flags.DEFINE_bool("geometry", _D.geometry, "The geometry relation (human inter-scale r against axis cosines "
                  f"and projection r) at every site; skipped below {MIN_GEOMETRY_SCALES} scales "
                  "tagged with the norms' columns (warriner alone tags 3; "
                  "--norms=warriner,dal,brysbaert,lancaster tags 12).")
flags.DEFINE_integer("geometry_n_perm", _D.geometry_n_perm, "Mantel permutations of the geometry relation "
                     "per site.", lower_bound=1)
for _name in ("align_scales", "structure_scales", "norms", "templates", "n_words", "stats_sample", "centre",
              "whiten", "policy", "method", "metric", "min_coverage", "seed", "n_boot", "n_null",
              "n_pair_sets", "n_tag_perms", "batch_size", "geometry", "geometry_n_perm"):
  cli.shortcut(_name, f"layers.{_name}")
cli.define_out_dir_flag(_DEFAULT.out_dir, "Where summary.json, the figures and report.html are written.")
cli.define_overwrite_flag()
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  del argv
  config = cli.config()
  opts = experiment_config.options(layers.LayerOptions, config.layers)
  layers.check_options(opts)
  cli.check_model(config.load.model)
  cli.check_norms(opts.norms)
  cli.check_scales(opts.align_scales)
  cli.check_scales(opts.structure_scales)
  with cli.claim_out_dir("layers", config) as out:
    model = cli.load_model(config.load)
    result = layers.run_layers(model, opts)
    cli.report(lambda: layers_report.write(out, result, model, opts, config=config.to_dict()),
               layers_report.digest(result), result["seconds"])


if __name__ == "__main__":
  cli.run(main)
