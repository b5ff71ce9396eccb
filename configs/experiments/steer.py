"""``launch.steer``: the off-target grid, its controls and the steering methods compared."""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.load = base.load()
  config.steer = base.steer()
  config.out_dir = "out/steer"
  return config
