"""Greedy continuation of a prompt.

    python -m launch.generate --model=gemma3-270m --prompt="The capital of France is" --max_new_tokens=8
"""

from absl import flags

import jaxsem
from jaxsem import cli

cli.define_model_flags()
_PROMPT = flags.DEFINE_multi_string("prompt", ["The capital of France is"], "Prompt(s) to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 8, "Tokens to generate.", lower_bound=1, upper_bound=4096)
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  if len(argv) > 1:
    raise jaxsem.InputError(f"unexpected arguments {argv[1:]}; pass prompts with --prompt.")
  model = cli.load_model()
  print(model.summary())
  for prompt, continuation in zip(_PROMPT.value, model.generate(_PROMPT.value, _MAX_NEW.value)):
    print(f"{prompt!r} -> {continuation!r}")


if __name__ == "__main__":
  cli.run(main)
