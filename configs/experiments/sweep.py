"""``launch.sweep``: every token x every WordNet direction to zarr, then its dimensionality."""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.load = base.load()
  config.sweep = base.sweep()
  config.out_dir = "out/sweep"
  return config
