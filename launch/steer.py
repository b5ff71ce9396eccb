"""Steered forward passes: off-target effects vs direction cosines, and steering that avoids them.

    .venv/bin/python -m launch.steer --model=gemma3-270m --scales=osgood28 --site=embed \
        --alphas=-1,-0.5,0.5,1 --readout=logodds --method=plain,orthogonal,fitted --out_dir=out/steer

Writes ``out_dir/summary.json`` (``offtarget`` on the direction words' log-odds and
``offtarget_disjoint`` on the scales' readout words, disjoint from them, each with its
``direct_path`` control; ``disjoint_readout``; ``controls`` with 64 random directions by
default; ``readout_validation``; ``methods`` on the shared and disjoint readouts and on
``--heldout_template``; ``scales_file``, provenance) and ``offtarget.png``,
``offtarget_matrix.png``, ``dose_response.png``. Finished batches of every evaluation are
kept in ``out_dir/checkpoint/``: after ``kill -9`` the same command resumes from them.
A run with other flags that decide the numbers (model, scales, words, strengths, ...;
not --mesh, --batch_size or --params_cache) is another run: its directory is refused
unless ``--overwrite`` is given (see jaxsem/io/out_dir.py).
"""

from absl import flags

from jaxsem import cli
from jaxsem.analyses import readouts, steer
from jaxsem.errors import InputError
from jaxsem.io import assets
from jaxsem.report import writers

cli.define_model_flags()
flags.DEFINE_string("scales", "osgood28", "Readout scales: osgood28, norms, or a JSON/TSV file.")
flags.DEFINE_list("steer", [], "Scales to steer along (default: every readout scale).")
flags.DEFINE_list("words", ["warriner"], "A norm table to sample words from, or the words themselves.")
flags.DEFINE_integer("n_words", 256, "Words sampled from a norm table (random order).", lower_bound=4)
flags.DEFINE_integer("grid_words", 96, "The first N words run the off-target grid (0: all); all words take"
                     " part in the methods comparison.", lower_bound=0)
flags.DEFINE_enum("site", "embed", ["embed", "resid_pre", "resid_post"], "Where the vector is added.")
flags.DEFINE_integer("layer", None, "Block of a resid_pre/resid_post site.")
flags.DEFINE_list("alphas", ["-1", "-0.5", "0.5", "1"], "Strengths, in units of the site's median norm.")
flags.DEFINE_enum("readout", "logodds", list(readouts.READOUTS), "How the judgement is read.")
flags.DEFINE_integer("read_layer", None, "Representation readout layer (-1: final norm; default: the site).")
flags.DEFINE_list("method", list(steer.METHODS), "Steering methods compared on held-out words.")
flags.DEFINE_enum("orth_basis", "others", list(steer.ORTH_BASES),
                  "What orthogonal steering projects out: the other scales' directions or their top-3 axes.")
flags.DEFINE_float("compare_alpha", 0.5, "Strength of the methods comparison (site-norm units).")
flags.DEFINE_string("template", readouts.DEFAULT_TEMPLATE, "Completion template with one {word} slot.")
flags.DEFINE_string("heldout_template", readouts.HELDOUT_TEMPLATE, "A second template, used in no fit, the"
                    " steering methods are also compared on (empty: skip).")
flags.DEFINE_integer("n_random", 64, "Random directions in the control.", lower_bound=0)
flags.DEFINE_float("fit_share", 0.75, "Share of words the fitted vector is trained on.", lower_bound=0.05,
                   upper_bound=0.95)
flags.DEFINE_integer("fit_steps", 500, "optax steps of the fitted vector.", lower_bound=1)
flags.DEFINE_float("off_weight", 3.0, "Weight of the off-target term in the fit.", lower_bound=0.0)
flags.DEFINE_float("fit_ridge", 0.01, "Pull of the fitted vector towards the plain one.", lower_bound=0.0)
flags.DEFINE_integer("refine", 2, "Refinements of the fitted vector against the real model.", lower_bound=0)
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples over words.", lower_bound=1)
flags.DEFINE_integer("n_perm", 1000, "Shuffled-label permutations.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of word sampling, splits, random directions and bootstraps.")
flags.DEFINE_integer("batch_size", 256, "Prompts per compiled call.", lower_bound=1)
flags.DEFINE_string("out_dir", "out/steer", "Where summary.json and the figures are written. Finished "
                    "batches are kept in out_dir/checkpoint: the same command resumes a killed run.")
cli.define_overwrite_flag("Replace the outputs and checkpoint of another run (other flags that decide the "
                          "numbers) found in --out_dir; without it such a directory is refused.")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def _alphas(values):
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise InputError(f"--alphas={','.join(values)}: give comma-separated numbers, e.g. -1,-0.5,0.5,1.") from None


def _check(opts: steer.SteerOptions) -> None:
  """What can be checked without a model: the model name, words, scales, steered scales, methods."""
  cli.check_model(flags.FLAGS.model)
  cli.check_words(opts.words)
  names = [s.name for s in cli.check_scales(opts.scales)]
  for name in opts.steer:
    if name not in names:
      raise InputError(f"--steer: {name!r} is not a scale of --scales={opts.scales}"
                       f"{assets.did_you_mean(name, names)}; use one of its names.")
  for method in opts.methods:
    if method not in steer.METHODS:
      raise InputError(f"--method={method!r} is not known; use any of {', '.join(steer.METHODS)}.")


def main(argv):
  del argv
  f = flags.FLAGS
  opts = steer.SteerOptions(
      scales=f.scales, steer=tuple(f.steer), words=tuple(f.words), n_words=f.n_words, site=f.site,
      layer=f.layer, grid_words=f.grid_words, alphas=_alphas(f.alphas), readout=f.readout,
      read_layer=f.read_layer,
      methods=tuple(f.method), compare_alpha=f.compare_alpha, orth_basis=f.orth_basis, template=f.template,
      heldout_template=f.heldout_template, n_random=f.n_random, fit_share=f.fit_share, fit_steps=f.fit_steps,
      refine=f.refine, off_weight=f.off_weight, fit_ridge=f.fit_ridge, n_boot=f.n_boot,
      n_perm=f.n_perm, seed=f.seed, batch_size=f.batch_size)
  _check(opts)
  with cli.claim_out_dir("steer", resumable=True) as out:
    model = cli.load_model()
    result = steer.run_steer(model, opts, checkpoint_dir=out / "checkpoint")
    cli.report(lambda: writers.write_steer(out, result, model, opts), writers.steer_digest(result),
               result["seconds"])


if __name__ == "__main__":
  cli.run(main)
