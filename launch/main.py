"""The main job: each model loaded, reported, asked to continue a prompt, then its semantic
structure measured (alignment with human norms, E/P/A structure, the axes' geometry against
human inter-scale correlations, the layer curve) and its judgements steered
(off-target effects vs direction cosines; plain, orthogonalised and fitted steering compared
on held-out words).

    .venv/bin/python -m launch.main                                          # quick: the default model
    .venv/bin/python -m launch.main --config=configs/experiments/paper.py    # both models, paper scale

The sizes come from the config (``configs/experiments/quick.py`` by default; any field can
be overridden with ``--config.<section>.<field>=value``). Writes
``out_dir/<model>/summary.json`` (what was loaded, with provenance, and the continuations),
``out_dir/<model>/align/``, ``structure/``, ``geometry/``, ``layers/`` and ``steer/`` (each a
summary.json with provenance and PNG figures), and prints a short digest.
"""

import os
import time

from absl import flags

import jaxsem
from jaxsem import cli
from jaxsem import distributed
from jaxsem import experiment_config
from jaxsem.analyses import experiments
from jaxsem.analyses import geometry
from jaxsem.analyses import layers
from jaxsem.analyses import steer
from jaxsem.io import assets
from jaxsem.report import geometry_report
from jaxsem.report import html
from jaxsem.report import layers_report
from jaxsem.report import summary
from jaxsem.report import writers

_DEFAULT = cli.define_config("quick")
flags.DEFINE_list("models", list(_DEFAULT.models), "Models to run, in order.")
cli.shortcut("models", "models")
cli.define_model_flags(_DEFAULT.load)
flags.DEFINE_multi_string("prompt", list(_DEFAULT.generate.prompts), "Prompts to continue greedily.")
flags.DEFINE_integer("max_new_tokens", _DEFAULT.generate.max_new_tokens, "Tokens to generate.", lower_bound=1)
flags.DEFINE_bool("analyses", _DEFAULT.analyses, "Also run the alignment, structure and steering analyses.")
flags.DEFINE_integer("steer_words", _DEFAULT.steer.n_words, "Warriner words steered (the first "
                     "config.steer.grid_words run the off-target grid; all of them the methods comparison).",
                     lower_bound=8)
cli.shortcut("prompt", "generate.prompts")
cli.shortcut("max_new_tokens", "generate.max_new_tokens")
cli.shortcut("analyses", "analyses")
cli.shortcut("steer_words", "steer.n_words")
cli.define_out_dir_flag(_DEFAULT.out_dir, "Where the outputs are written.")
cli.define_overwrite_flag()
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  del argv
  config = cli.config()
  if not config.models:
    raise jaxsem.InputError("--models is empty; give one or more of "
                            f"{', '.join(assets.MODEL_NAMES)} (comma-separated).")
  for name in config.models:
    cli.check_model(name, flag="--models")
  options = _options(config)
  with cli.claim_out_dir("main", config) as out_dir:
    for name in config.models:
      _run_model(name, out_dir, config, options)
    if distributed.is_main():
      page = html.write_report(out_dir, title="jaxsem main job")
      print(f"wrote {config.out_dir}/ (open {page})")


def _options(config) -> dict:
  """The three analyses' options, checked before any model loads."""
  align = experiment_config.options(experiments.Options, config.align)
  structure = experiment_config.options(experiments.Options, config.structure)
  geo = experiment_config.options(geometry.GeometryOptions, config.geometry)
  layer = experiment_config.options(layers.LayerOptions, config.layers)
  steering = experiment_config.options(steer.SteerOptions, config.steer)
  for opts in (align, structure):
    cli.check_norms(opts.norms)
    cli.check_scales(opts.scales)
  geometry.check_options(geo)
  layers.check_options(layer)
  cli.check_norms(layer.norms)
  for name in (layer.align_scales, layer.structure_scales):
    cli.check_scales(name)
  steer.check_options(steering)
  return {"align": align, "structure": structure, "geometry": geo, "layers": layer, "steer": steering}


def _run_model(name: str, out_dir: str | os.PathLike, config, options: dict) -> None:
  """Loads one model, writes its continuations and (with analyses) its three analyses."""
  model = cli.load_model(config.load, name)
  out = os.path.join(out_dir, model.provenance["name"])
  resolved = config.to_dict()
  print(f"== {model.summary()}\n   loaded in {model.provenance['load_seconds']:.2f} s")
  prompts = list(config.generate.prompts)
  continuations = model.generate(prompts, config.generate.max_new_tokens)
  for prompt, text in zip(prompts, continuations):
    print(f"   {prompt!r} -> {text!r}")
  summary.write(out, {"job": "main", "generations": [
      {"prompt": p, "continuation": c, "max_new_tokens": config.generate.max_new_tokens}
      for p, c in zip(prompts, continuations)]}, model=model, config=resolved)
  if not config.analyses:
    return
  stages = (("align", experiments.run_align, writers.write_align, writers.align_digest,
             "alignment (centred input embedding, warriner norms)"),
            ("structure", experiments.run_structure, writers.write_structure, writers.structure_digest,
             "structure (osgood28 scales over warriner words)"),
            ("geometry", geometry.run_geometry, geometry_report.write, geometry_report.digest,
             "axis geometry (norm-tagged scales: axis cosines against human inter-scale r)"),
            ("layers", layers.run_layers, layers_report.write, layers_report.digest,
             "layers (alignment and structure at every site of the residual stream)"),
            ("steer", steer.run_steer, writers.write_steer, writers.steer_digest,
             "steering (osgood28, token embedding, pole log-odds readout)"))
  for key, run, write, digest, title in stages:
    start = time.perf_counter()
    print(f"   {title}:", flush=True)
    result = run(model, options[key])
    write(os.path.join(out, key), result, model, options[key], config=resolved)
    lines = digest(result, top=4) if key == "align" else digest(result)
    print("\n".join("     " + line for line in lines))
    print(f"     ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
  cli.run(main)
