"""The main job: load the embedded default model, report it, decode a prompt.

    .venv/bin/python -m launch.main [--model=smollm2-135m-instruct] [--out_dir=out/main]

Writes ``out_dir/summary.json`` (what was loaded, with provenance, and the
continuations). Later analyses (alignment, structure, steering) join this job.
"""

from absl import flags

import jaxsem
from jaxsem import cli
from jaxsem.report import summary

cli.define_model_flags()
_PROMPTS = flags.DEFINE_multi_string(
    "prompt", ["The capital of France is", "The opposite of good is"], "Prompts to continue greedily.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 8, "Tokens to generate.", lower_bound=1)
_OUT_DIR = flags.DEFINE_string("out_dir", "out/main", "Where summary.json is written.")


def main(argv):
  del argv
  model = jaxsem.load(flags.FLAGS.model, mesh=flags.FLAGS.mesh, dtype=flags.FLAGS.dtype)
  print(model.summary())
  print(f"loaded in {model.provenance['load_seconds']:.2f} s")
  continuations = model.generate(_PROMPTS.value, _MAX_NEW.value)
  for prompt, text in zip(_PROMPTS.value, continuations):
    print(f"  {prompt!r} -> {text!r}")
  path = summary.write(_OUT_DIR.value, {
      "job": "main",
      "generations": [{"prompt": p, "continuation": c, "max_new_tokens": _MAX_NEW.value}
                      for p, c in zip(_PROMPTS.value, continuations)],
  }, model=model)
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
