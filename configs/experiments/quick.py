"""``launch.main``'s default: the default model, every part of the analysis, at newcomer size.

Everything the paper-scale run (``paper.py``) shows is here: the model loaded and talking,
alignment with its hierarchical CI and nulls, structure with its baselines, the axes' geometry
against human inter-scale correlations with its Mantel null, the layer curve, the off-target
law with its controls, the steering methods compared on held-out words and a held-out
template. Fewer resamples, null draws and steered words make it finish in minutes; the
intervals are wider for it, and each summary.json records the sizes used.
"""

from ml_collections import config_dict

from configs.experiments import base


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.models = (base.DEFAULT_MODEL,)
  config.load = base.load(with_model=False)
  config.generate = base.generate()
  config.analyses = True  # False: load, report and continue the prompts only

  config.align = base.analysis(scales="norms")
  config.align.n_boot = 200
  config.align.n_null = 200
  config.align.n_null_pairs = 100

  config.structure = base.analysis(scales="osgood28")
  config.structure.n_null_pairs = 100
  config.structure.n_pair_sets = 100
  config.structure.n_tag_perms = 500

  config.geometry = base.geometry()
  config.geometry.n_boot = 200
  config.geometry.n_perm = 1000

  # The layer curve at newcomer size: fewer rated words, a smaller centring sample and fewer
  # resamples than launch.layers' defaults; no WordNet pair null or E/P/A tag null per site.
  config.layers = base.layers()
  config.layers.n_words = 150
  config.layers.stats_sample = 48
  config.layers.n_boot = 100
  config.layers.n_null = 100
  config.layers.n_tag_perms = 0
  config.layers.geometry = False  # warriner alone tags too few scales; the geometry stage covers it

  config.steer = base.steer()
  config.steer.n_words = 64
  config.steer.grid_words = 32
  config.steer.alphas = (-1.0, 1.0)
  config.steer.n_random = 16
  config.steer.fit_steps = 300
  config.steer.refine = 0  # the first fit only, not refitted against the real model (paper.py: 2)
  config.steer.n_boot = 200
  config.steer.n_perm = 200

  config.out_dir = "out/main"
  return config
