"""The main job: each embedded model loaded, reported, asked to continue a prompt, then
its semantic structure measured (alignment with human norms, E/P/A structure) and its
judgements steered (off-target effects vs direction cosines; plain, orthogonalised and
fitted steering compared on held-out words).

    .venv/bin/python -m launch.main [--models=gemma3-270m,smollm2-135m-instruct] [--out_dir=out/main]

Writes ``out_dir/<model>/summary.json`` (what was loaded, with provenance, and the
continuations), ``out_dir/<model>/align/``, ``out_dir/<model>/structure/`` and
``out_dir/<model>/steer/`` (each a summary.json with provenance and PNG figures), and
prints a short digest.
"""

import os

from absl import flags

import jaxsem
from jaxsem import cli
from jaxsem.analyses import experiments
from jaxsem.analyses import steer
from jaxsem.io import assets
from jaxsem.report import summary
from jaxsem.report import writers

_MODELS = flags.DEFINE_list("models", ["gemma3-270m", "smollm2-135m-instruct"], "Models to run, in order.")
_MESH = flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:2,model:4 (default: one device; model:-1 "
                            "takes every device).")
_PROMPTS = flags.DEFINE_multi_string(
    "prompt", ["The capital of France is", "The opposite of good is"], "Prompts to continue greedily.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 8, "Tokens to generate.", lower_bound=1)
_ANALYSES = flags.DEFINE_bool("analyses", True, "Also run the alignment, structure and steering analyses.")
_STEER_WORDS = flags.DEFINE_integer("steer_words", 256, "Warriner words steered (the first 96 run the"
                                   " off-target grid; all of them the methods comparison).", lower_bound=8)
_OUT_DIR = flags.DEFINE_string("out_dir", "out/main", "Where the outputs are written.")
cli.define_overwrite_flag()


def main(argv):
  del argv
  if not _MODELS.value:
    raise jaxsem.InputError("--models is empty; give one or more of "
                            f"{', '.join(assets.MODEL_NAMES)} (comma-separated).")
  for name in _MODELS.value:
    cli.check_model(name, flag="--models")
  with cli.claim_out_dir("main") as out_dir:
    for name in _MODELS.value:
      _run_model(name, out_dir)
  print(f"wrote {_OUT_DIR.value}/")


def _run_model(name: str, out_dir: str | os.PathLike) -> None:
  """Loads one model, writes its continuations and (with --analyses) its three analyses."""
  model = jaxsem.load(name, mesh=_MESH.value, progress=True)
  out = os.path.join(out_dir, model.provenance["name"])
  print(f"== {model.summary()}\n   loaded in {model.provenance['load_seconds']:.2f} s")
  continuations = model.generate(_PROMPTS.value, _MAX_NEW.value)
  for prompt, text in zip(_PROMPTS.value, continuations):
    print(f"   {prompt!r} -> {text!r}")
  summary.write(out, {"job": "main", "generations": [
      {"prompt": p, "continuation": c, "max_new_tokens": _MAX_NEW.value}
      for p, c in zip(_PROMPTS.value, continuations)]}, model=model)
  if not _ANALYSES.value:
    return
  opts = experiments.Options(scales="norms", n_boot=500, n_null=500, n_null_pairs=200)
  result = experiments.run_align(model, opts)
  writers.write_align(os.path.join(out, "align"), result, model, opts)
  print("   alignment (centred input embedding, warriner norms):")
  print("\n".join("     " + line for line in writers.align_digest(result, top=4)))
  opts = experiments.Options(scales="osgood28", n_null_pairs=200)
  result = experiments.run_structure(model, opts)
  writers.write_structure(os.path.join(out, "structure"), result, model, opts)
  print("   structure (osgood28 scales over warriner words):")
  print("\n".join("     " + line for line in writers.structure_digest(result)))
  opts = steer.SteerOptions(n_words=_STEER_WORDS.value, n_boot=500, n_perm=500)
  result = steer.run_steer(model, opts)
  writers.write_steer(os.path.join(out, "steer"), result, model, opts)
  print("   steering (osgood28, token embedding, pole log-odds readout):")
  print("\n".join("     " + line for line in writers.steer_digest(result)))


if __name__ == "__main__":
  cli.run(main)
