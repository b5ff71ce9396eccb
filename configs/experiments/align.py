"""``launch.align``: every norms scale against its human norm columns, with nulls and a probe."""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.load = base.load()
  config.analysis = base.analysis(scales="norms")
  config.out_dir = "out/align"
  return config
