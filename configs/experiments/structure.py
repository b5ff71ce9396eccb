"""``launch.structure``: osgood28's principal components and E/P/A structure, with their nulls."""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.load = base.load()
  config.analysis = base.analysis(scales="osgood28")
  config.out_dir = "out/structure"
  return config
