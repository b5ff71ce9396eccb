"""Greedy continuation of a prompt.

    python -m launch.generate --model=gemma3-270m --prompt="The capital of France is" --max_new_tokens=8
"""

from absl import flags

import jaxsem
from jaxsem import cli

_DEFAULT = cli.define_config("generate")
cli.define_model_flags(_DEFAULT.load)
flags.DEFINE_multi_string("prompt", list(_DEFAULT.generate.prompts), "Prompt(s) to continue.")
flags.DEFINE_integer("max_new_tokens", _DEFAULT.generate.max_new_tokens, "Tokens to generate.", lower_bound=1,
                     upper_bound=4096)
cli.shortcut("prompt", "generate.prompts")
cli.shortcut("max_new_tokens", "generate.max_new_tokens")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  if len(argv) > 1:
    raise jaxsem.InputError(f"unexpected arguments {argv[1:]}; pass prompts with --prompt.")
  config = cli.config()
  cli.check_model(config.load.model)
  model = cli.load_model(config.load)
  print(model.summary())
  prompts = list(config.generate.prompts)
  for prompt, continuation in zip(prompts, model.generate(prompts, config.generate.max_new_tokens)):
    print(f"{prompt!r} -> {continuation!r}")


if __name__ == "__main__":
  cli.run(main)
