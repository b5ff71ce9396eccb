"""``launch.layers``: alignment and structure at every site from the input to the output embedding."""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.load = base.load()
  config.layers = base.layers()
  config.out_dir = "out/layers"
  return config
