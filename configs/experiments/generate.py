"""``launch.generate``: greedy continuations of prompts."""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.load = base.load()
  config.generate = base.generate()
  config.generate.prompts = ("The capital of France is",)
  return config
