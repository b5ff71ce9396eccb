"""The defaults of every option, written once; each experiment config starts from these.

Each function returns one section of an experiment config (an ``ml_collections``
``ConfigDict``). The library's option classes (``experiments.Options``,
``steer.SteerOptions``, ``sweep.SweepOptions``, ``layers.LayerOptions``,
``geometry.GeometryOptions``, ``planning.PlanOptions``) take their defaults from here too
(``jaxsem.experiment_config.config_defaults``), so a value changed here changes the
library, every launcher and every config built on it.
"""

from ml_collections import config_dict

from jaxsem.analyses import readouts
from jaxsem.analyses import spaces

DEFAULT_MODEL = "gemma3-270m"


def load(with_model: bool = True) -> config_dict.ConfigDict:
  """Which model, and how it is loaded (the main job names its models in ``models`` instead)."""
  section = config_dict.ConfigDict({
      "mesh": config_dict.placeholder(str),  # e.g. "data:2,model:4"; None: one device
      "dtype": "float32",  # float32 or bfloat16
      "params_cache": True,  # keep the loaded params in the jaxsem cache
  })
  if with_model:
    section.model = DEFAULT_MODEL  # embedded name, .gguf file or Hugging Face snapshot directory
  return section


def analysis(scales: str = "osgood28") -> config_dict.ConfigDict:
  """Alignment and structure (``jaxsem.analyses.experiments.Options``)."""
  return config_dict.ConfigDict({
      "scales": scales,  # osgood28, norms, wordnet, or a JSON/TSV file
      "norms": ("warriner",),  # human norm tables: warriner, anew, dal
      "space": "input_embedding",  # input_embedding, unembedding or hidden
      "layer": config_dict.placeholder(int),  # hidden space: block index (-1: after the final norm)
      "centre": True,  # subtract the vocabulary mean
      "whiten": False,  # whiten with the vocabulary covariance (causal inner product)
      "policy": "single",  # word -> token policy: single, mean, first
      "method": "pole_mean",  # direction construction: pole_mean, pair_mean, semaxis
      "metric": "cosine",  # projection metric: cosine or dot
      "min_coverage": 0.5,  # least share of a norm table's words the policy must cover
      "seed": 0,  # bootstraps, nulls, probe folds, random baselines
      "n_boot": 1000,  # bootstrap resamples
      "n_null": 1000,  # random directions in the null
      "n_null_pairs": 300,  # random WordNet antonym pairs in the second null (0: skip)
      "n_pair_sets": 200,  # structure: random sets of WordNet pairs in the pair null (0: skip)
      "n_tag_perms": 1000,  # structure: E/P/A tag permutations in the shuffled-tag null (0: skip)
      "template": spaces.DEFAULT_TEMPLATE,  # hidden space: template with one {word} slot
  })


def layers() -> config_dict.ConfigDict:
  """Layer-resolved alignment and structure (``jaxsem.analyses.layers.LayerOptions``)."""
  return config_dict.ConfigDict({
      "align_scales": "norms",  # scales correlated with every norm column at every site
      "structure_scales": "osgood28",  # scales whose PCA and E/P/A structure is followed through the sites
      "norms": ("warriner",),  # human norm tables (the first one also carries the structure analysis)
      # At least 3 templates with one {word} slot each; states are averaged over them at the word's
      # last token (what follows the word cannot reach that token, so the templates end there).
      "templates": ("The word {word}", "A dictionary definition of the word {word}",
                    "Yesterday she told me a story about {word}"),
      "n_words": 2000,  # rated words per norm table, a seeded sample of the covered ones (0: all)
      "stats_sample": 1024,  # vocabulary tokens (seeded) whose states in the templates centre each site
      "centre": True,  # subtract each site's mean over the token sample
      "whiten": False,  # whiten each site with the token sample's covariance
      "policy": "single",  # word -> token policy: single, mean, first
      "method": "pole_mean",  # direction construction: pole_mean or pair_mean
      "metric": "cosine",  # projection metric: cosine or dot
      "min_coverage": 0.5,  # least share of a norm table's words the policy must cover
      "seed": 0,  # word and token samples, bootstraps, nulls, probe folds
      "n_boot": 200,  # bootstrap resamples per site
      "n_null": 200,  # random directions in the null per site
      "n_pair_sets": 0,  # random WordNet pair sets in the structure pair null per site (0: skip)
      "n_tag_perms": 200,  # E/P/A tag permutations per site (0: skip)
      "batch_size": 64,  # sequences per forward call
      # The geometry relation at every site (human inter-scale r against axis cosines and projection r),
      # where align_scales has >= 4 scales tagged with columns of the norms (warriner alone tags 3:
      # skipped; --norms=warriner,dal,brysbaert,lancaster tags 12); its bootstrap reuses n_boot.
      "geometry": True,
      "geometry_n_perm": 1000,  # Mantel permutations of the geometry relation per site
  })


def geometry() -> config_dict.ConfigDict:
  """Axis geometry against human inter-scale correlations (``jaxsem.analyses.geometry.GeometryOptions``)."""
  return config_dict.ConfigDict({
      "scales": "norms",  # scale set whose norm-tagged scales are compared pair by pair
      "also_scales": ("osgood28",),  # further scale sets compared the same way where their scales carry tags
      "norms": (),  # human norm tables whose tagged columns enter (empty: every table a tag names)
      "space": "input_embedding",  # input_embedding, unembedding or hidden
      "layer": config_dict.placeholder(int),  # hidden space: block index (-1: after the final norm)
      "centre": True,  # subtract the vocabulary mean
      "whiten": False,  # whiten with the vocabulary covariance (causal inner product)
      "policy": "single",  # word -> token policy: single, mean, first
      "method": "pole_mean",  # direction construction: pole_mean, pair_mean, semaxis
      "metric": "cosine",  # projection metric of the words on the axes: cosine or dot
      # Least share of a table's rated words the policy must cover; only the projection correlations
      # need the model's words (the human correlations use every rated word), so it is set low.
      "min_coverage": 0.1,
      "seed": 0,  # bootstrap draws and Mantel permutations
      "n_boot": 1000,  # joint bootstrap draws (words; pole words for the cosines)
      "n_perm": 10000,  # Mantel permutations of the scale labels
      "template": spaces.DEFAULT_TEMPLATE,  # hidden space: template with one {word} slot
  })


def plan() -> config_dict.ConfigDict:
  """Sizes of the programs ``launch.plan`` compiles (``jaxsem.planning.PlanOptions``)."""
  return config_dict.ConfigDict({
      "dtype": "bfloat16",  # params and activations: bfloat16 or float32
      "directions": 3627,  # directions of the sweep's projection (WordNet's antonym pairs)
      "chunk_rows": 8192,  # vocabulary rows per projection block (the sweep's chunk_rows)
      "metric": "cosine",  # projection metric: cosine or dot
      "batch": 64,  # steering rows per call (rounded up to the data axis)
      "prefix_len": 16,  # tokens of the cached prompt prefix shared by every steering row
      "suffix_len": 8,  # tokens of each steering row after the prefix
      "readout_scales": 28,  # scales whose pole log-odds the steering readout returns
      "pole_tokens": 4,  # tokens per pole of the readout
      "site": "embed",  # steering site: embed, resid_pre.L or resid_post.L
      "device_memory_gib": 16.0,  # memory of one device (a TPU v5e chip); larger peaks are flagged
  })


def steer() -> config_dict.ConfigDict:
  """Steered forward passes (``jaxsem.analyses.steer.SteerOptions``)."""
  return config_dict.ConfigDict({
      "scales": "osgood28",  # readout scales (and directions)
      "steer": (),  # scales steered along (empty: every readout scale)
      "words": ("warriner",),  # a norm table to sample words from, or the words themselves
      "n_words": 256,  # words sampled from a norm table (random order)
      "grid_words": 96,  # the first N words run the off-target grid (0: all)
      "site": "embed",  # embed, resid_pre or resid_post
      "layer": config_dict.placeholder(int),  # block of a resid_pre/resid_post site
      "layers": "",  # the off-target grid at each of these blocks: all or a list (empty: --layer alone)
      "compare_layers": "",  # blocks of the methods comparison with --layers (empty: the first asked)
      "alphas": (-1.0, -0.5, 0.5, 1.0),  # strengths, in units of the site's median norm
      "readout": "logodds",  # logodds or representation
      "read_layer": config_dict.placeholder(int),  # representation readout layer (-1: final norm)
      "methods": ("plain", "orthogonal", "fitted"),  # steering methods compared on held-out words
      "compare_alpha": 0.5,  # strength of the methods comparison
      "orth_basis": "others",  # what orthogonal steering projects out: others or top3
      "template": readouts.DEFAULT_TEMPLATE,  # completion template with one {word} slot
      "heldout_template": readouts.HELDOUT_TEMPLATE,  # second template, in no fit (empty: skip)
      "n_random": 64,  # random directions in the control
      "fit_share": 0.75,  # share of words the fitted vector is trained on
      "fit_steps": 500,  # optax steps of the fitted vector
      "off_weight": 3.0,  # weight of the off-target term in the fit
      "fit_ridge": 0.01,  # pull of the fitted vector towards the plain one
      "refine": 2,  # refinements of the fitted vector against the real model
      "n_boot": 1000,  # bootstrap resamples over words
      "n_perm": 1000,  # shuffled-label permutations
      "seed": 0,  # word sampling, splits, random directions, bootstraps
      "batch_size": 256,  # prompts per compiled call
      "rating_check": True,  # also validate the rating-prompt readout
  })


def sweep() -> config_dict.ConfigDict:
  """The whole-vocabulary sweep (``jaxsem.analyses.sweep.SweepOptions``)."""
  return config_dict.ConfigDict({
      "scales": "wordnet",  # scale set name or file
      "space": "input_embedding",  # input_embedding or unembedding
      "centre": True,  # subtract the vocabulary mean
      "whiten": False,  # whiten with the vocabulary covariance
      "policy": "mean",  # pole-word policy (mean keeps every WordNet pair)
      "method": "pole_mean",  # direction construction
      "metric": "cosine",  # cosine or dot
      "standardize": True,  # PCA of the standardized projections
      "chunk_rows": 8192,  # vocabulary rows per block and zarr chunk
      "baselines": ("gaussian", "token_pairs"),  # random direction sets to compare with
      "norms": ("warriner",),  # norm tables whose rated words give the rated-words comparison
      "min_coverage": 0.2,  # least share of scales with usable poles
      "seed": 0,  # seed of the random baselines
      "write_zarr": True,  # stream the projection matrix to out_dir/projections.zarr
      "whitening_control": True,  # also the spectra in the whitened space
      "overwrite": False,  # replace a projection matrix made from other inputs
      # --space=hidden only: the sites (all = embed and every block's output; or e.g. "0,6,final"), the
      # fixed context every token sits in (one {token} slot; "{token}" = right after <bos>), the zarr
      # dtype (auto: float32 for the static sweep, float16 for hidden), tokens per block and zarr chunk,
      # and the least seconds between two saves of the resumable moments.
      "layers": "all",
      "context": "{token}",
      "store_dtype": "auto",
      "hidden_chunk_rows": 1024,
      "checkpoint_seconds": 60.0,
      # --space=hidden only: tokens (a seeded uniform sample of the ids swept) whose states' mean and
      # covariance centre (and whiten) each site; 0 = every token swept (exact, one more full pass).
      "hidden_stats_sample": 16384,
  })


def generate() -> config_dict.ConfigDict:
  """The main job's greedy continuations (the model loaded and talking)."""
  return config_dict.ConfigDict({
      "prompts": ("The capital of France is", "The opposite of good is"),
      "max_new_tokens": 8,
  })
