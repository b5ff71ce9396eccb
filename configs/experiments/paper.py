"""``launch.main --config=configs/experiments/paper.py``: the paper-scale run.

Both embedded models, 256 steered words (96 in the off-target grid), 64 random directions
in the steering control, 500 bootstrap resamples and null draws in the alignment, and
the full nulls of the structure. About 16 minutes on a 2-core machine (docs/benchmarks.md).
"""

from ml_collections import config_dict

from configs.experiments import base
from configs.experiments import quick


def get_config() -> config_dict.ConfigDict:
  config = quick.get_config()
  config.models = ("gemma3-270m", "smollm2-135m-instruct")
  config.align = base.analysis(scales="norms")
  config.align.n_boot = 500
  config.align.n_null = 500
  config.align.n_null_pairs = 200
  config.structure = base.analysis(scales="osgood28")
  config.structure.n_null_pairs = 200
  config.geometry = base.geometry()
  config.layers = base.layers()
  config.steer = base.steer()
  config.steer.n_boot = 500
  config.steer.n_perm = 500
  return config
