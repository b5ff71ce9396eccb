"""``launch.plan``: per-device memory of jaxsem's programs for an architecture and a mesh."""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.model_config = config_dict.placeholder(str)  # an architecture name or a config.json (required)
  config.mesh = config_dict.placeholder(str)  # the mesh to plan for, e.g. data:8,model:8 (required)
  config.plan = base.plan()
  config.out = config_dict.placeholder(str)  # optional JSON file for the plan
  return config
