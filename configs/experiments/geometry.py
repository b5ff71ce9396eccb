"""``launch.geometry``: axis cosines against human inter-scale correlations."""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.load = base.load()
  config.geometry = base.geometry()
  config.out_dir = "out/geometry"
  return config
