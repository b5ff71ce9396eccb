"""Steered forward passes: off-target effects vs direction cosines, and steering that avoids them.

    .venv/bin/python -m launch.steer --model=gemma3-270m --scales=osgood28 --site=embed \
        --alphas=-1,-0.5,0.5,1 --readout=logodds --method=plain,orthogonal,fitted --out_dir=out/steer

Writes ``out_dir/summary.json`` (``offtarget`` on the direction words' log-odds and
``offtarget_disjoint`` on the scales' readout words, disjoint from them, each with its
``direct_path`` control; ``disjoint_readout``; ``controls`` with 64 random directions by
default; ``readout_validation``; ``methods`` on the shared and disjoint readouts and on
``--heldout_template``; ``scales_file``, provenance) and ``offtarget.png``,
``offtarget_matrix.png``, ``dose_response.png``. With ``--site=resid_post --layers=all`` (or a
list) the off-target grid runs at every block in one compiled program, directions in each block's
space; ``layers`` in summary.json and ``steer_layers.png`` give the off-target r and slope and the
on-target change per unit strength against depth, the rest at ``--compare_layers``. Finished
batches of every evaluation are kept in ``out_dir/checkpoint/``: after ``kill -9`` the same command resumes from them.
A run with other flags that decide the numbers (model, scales, words, strengths, ...;
not --mesh, --batch_size or --params_cache) is another run: its directory is refused
unless ``--overwrite`` is given (see jaxsem/io/out_dir.py).
"""

from absl import flags

from jaxsem import cli
from jaxsem import experiment_config
from jaxsem.analyses import readouts, steer, steer_layers, steering_methods
from jaxsem.errors import InputError
from jaxsem.models import model_configs
from jaxsem.report import writers

_DEFAULT = cli.define_config("steer")
_D = _DEFAULT.steer
cli.define_model_flags(_DEFAULT.load)
flags.DEFINE_string("scales", _D.scales, "Readout scales: osgood28, norms, or a JSON/TSV file.")
flags.DEFINE_list("steer", list(_D.steer), "Scales to steer along (default: every readout scale).")
flags.DEFINE_list("words", list(_D.words), "A norm table to sample words from, or the words themselves.")
flags.DEFINE_integer("n_words", _D.n_words, "Words sampled from a norm table (random order).", lower_bound=4)
flags.DEFINE_integer("grid_words", _D.grid_words, "The first N words run the off-target grid (0: all); all "
                     "words take part in the methods comparison.", lower_bound=0)
flags.DEFINE_enum("site", _D.site, ["embed", "resid_pre", "resid_post"], "Where the vector is added.")
flags.DEFINE_integer("layer", _D.layer, "Block of a resid_pre/resid_post site.")
flags.DEFINE_string("layers", _D.layers, "The off-target grid at each of these blocks, in one compiled "
                    "program: all or a list, e.g. 0,4,8 (empty: --layer alone).")
flags.DEFINE_string("compare_layers", _D.compare_layers, "With --layers: blocks of the controls and the "
                    "methods comparison, all or a list among --layers (empty: the first).")
flags.DEFINE_list("alphas", [str(a) for a in _D.alphas], "Strengths, in units of the site's median norm.")
flags.DEFINE_enum("readout", _D.readout, list(readouts.READOUTS), "How the judgement is read.")
flags.DEFINE_integer("read_layer", _D.read_layer, "Representation readout layer (-1: final norm; default: "
                     "the site).")
flags.DEFINE_list("method", list(_D.methods), "Steering methods compared on held-out words.")
flags.DEFINE_enum("orth_basis", _D.orth_basis, list(steering_methods.ORTH_BASES),
                  "What orthogonal steering projects out: the other scales' directions or their top-3 axes.")
flags.DEFINE_float("compare_alpha", _D.compare_alpha, "Strength of the methods comparison (site-norm units).")
flags.DEFINE_string("template", _D.template, "Completion template with one {word} slot.")
flags.DEFINE_string("heldout_template", _D.heldout_template, "A second template, used in no fit, the steering"
                    " methods are also compared on (empty: skip).")
flags.DEFINE_integer("n_random", _D.n_random, "Random directions in the control.", lower_bound=0)
flags.DEFINE_float("fit_share", _D.fit_share, "Share of words the fitted vector is trained on.",
                   lower_bound=0.05, upper_bound=0.95)
flags.DEFINE_integer("fit_steps", _D.fit_steps, "optax steps of the fitted vector.", lower_bound=1)
flags.DEFINE_float("off_weight", _D.off_weight, "Weight of the off-target term in the fit.", lower_bound=0.0)
flags.DEFINE_float("fit_ridge", _D.fit_ridge, "Pull of the fitted vector towards the plain one.",
                   lower_bound=0.0)
flags.DEFINE_integer("refine", _D.refine, "Refinements of the fitted vector against the real model.",
                     lower_bound=0)
flags.DEFINE_integer("n_boot", _D.n_boot, "Bootstrap resamples over words.", lower_bound=1)
flags.DEFINE_integer("n_perm", _D.n_perm, "Shuffled-label permutations.", lower_bound=1)
flags.DEFINE_integer("seed", _D.seed, "Seed of word sampling, splits, random directions and bootstraps.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Prompts per compiled call.", lower_bound=1)
for _name in ("scales", "steer", "words", "n_words", "grid_words", "site", "layer", "layers",
              "compare_layers", "readout", "read_layer", "orth_basis", "compare_alpha", "template", "heldout_template", "n_random", "fit_share",
              "fit_steps", "off_weight", "fit_ridge", "refine", "n_boot", "n_perm", "seed", "batch_size"):
  cli.shortcut(_name, f"steer.{_name}")
cli.shortcut("method", "steer.methods")
cli.define_out_dir_flag(_DEFAULT.out_dir, "Where summary.json and the figures are written. Finished batches "
                        "are kept in out_dir/checkpoint: the same command resumes a killed run.")
cli.define_overwrite_flag("Replace the outputs and checkpoint of another run (other flags that decide the "
                          "numbers) found in --out_dir; without it such a directory is refused.")


def _alphas(values):
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise InputError(f"--alphas={','.join(values)}: give comma-separated numbers, e.g. "
                     "-1,-0.5,0.5,1.") from None


cli.shortcut("alphas", "steer.alphas", _alphas)
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  del argv
  config = cli.config()
  opts = experiment_config.options(steer.SteerOptions, config.steer)
  cli.check_model(config.load.model)
  steer.check_options(opts)
  if opts.layers:  # block numbers against the architecture, before the weights load
    steer_layers.check_layers(opts, model_configs.load_model_config(config.load.model)[0].n_layers)
  with cli.claim_out_dir("steer", config, resumable=True) as out:
    model = cli.load_model(config.load)
    result = steer.run_steer(model, opts, checkpoint_dir=out / "checkpoint")
    cli.report(lambda: writers.write_steer(out, result, model, opts, config=config.to_dict()),
               writers.steer_digest(result), result["seconds"])


if __name__ == "__main__":
  cli.run(main)
