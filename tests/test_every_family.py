"""Every model family through the analyses: one launcher per family on a tiny checkpoint of it.

Each family's checkpoint (``word_model.write(path, family=...)``) has the word model's vocabulary,
so the analyses find their rated, pole and readout words, and that family's distinguishing
features (soft-caps, windows, biases, q/k norms, fused tensors, post-norms only). The launchers
rotate over the families so that together they run alignment, structure, layers, steering and
sweep, most of them through the forward pass (``--space=hidden``, layers, steering). Numbers of
random weights mean nothing; what is checked is that each family gets through, says which it is,
and gives finite numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxsem.io import gguf_file
from jaxsem.models import families
from jaxsem.models import gguf_load
from tests import word_model as word_model_lib
from tests.test_launch import _run  # shared subprocess helper

# anew (about 1,000 rated words) and two scales keep the hidden states, probes and bootstraps small.
_ALIGN = ("--scales=TWO_SCALES", "--norms=anew", "--n_boot=5", "--n_null=5", "--n_null_pairs=5")
_STRUCTURE = ("--norms=anew", "--n_null_pairs=5", "--n_pair_sets=5", "--n_tag_perms=5")
_LAYERS = ("--n_words=64", "--stats_sample=16", "--n_boot=5", "--n_null=5", "--n_tag_perms=5")
_STEER = ("--n_words=8", "--grid_words=8", "--steer=good-bad", "--alphas=-0.5,0.5", "--n_boot=5",
          "--n_perm=5", "--method=plain", "--n_random=0")
_SWEEP = ("--scales=osgood28", "--baselines=gaussian")


def _align_numbers(doc):
  return [r["pearson"] for r in doc["results"]]


def _structure_numbers(doc):
  return list(doc["pca"]["explained_variance_ratio"])


def _layers_numbers(doc):
  return [r["pearson"] for p in doc["layers"] for r in p["alignment"]]


def _steer_numbers(doc):
  return list(np.ravel(doc["dose_response"]["on_target"]))


def _sweep_numbers(doc):
  return [v for site in doc["sites"] for rep in site["spectra"].values() for v in rep["cumulative"]]


# family -> (launcher, its arguments, the numbers of its summary.json that must be finite)
CASES = {
    "llama": ("launch.align", (*_ALIGN, "--space=hidden", "--layer=1"), _align_numbers),
    "mistral": ("launch.steer", _STEER, _steer_numbers),
    "gemma2": ("launch.layers", _LAYERS, _layers_numbers),
    "gemma3": ("launch.structure", (*_STRUCTURE, "--space=hidden", "--layer=0"), _structure_numbers),
    "qwen2": ("launch.sweep", (*_SWEEP, "--space=hidden", "--layers=0,final"), _sweep_numbers),
    "qwen3": ("launch.steer", _STEER, _steer_numbers),
    "phi3": ("launch.layers", _LAYERS, _layers_numbers),
    "olmo2": ("launch.align", (*_ALIGN, "--space=hidden", "--layer=1"), _align_numbers),
}
TWO_SCALES = {"name": "two", "scales": [
    {"name": "good-bad", "positive": ["good"], "negative": ["bad"]},
    {"name": "strong-weak", "positive": ["strong"], "negative": ["weak"]}]}


def test_every_family_and_analysis_is_covered():
  assert set(CASES) == set(word_model_lib.FAMILIES)
  launchers = {launcher for launcher, _, _ in CASES.values()}
  assert launchers == {"launch.align", "launch.structure", "launch.layers", "launch.steer", "launch.sweep"}


# The ModelConfig fields that set the families apart (and decide their leaves).
FEATURES = ("family", "vocab_size", "tie_embeddings", "qkv_bias", "qk_norm", "qk_norm_scope", "pre_norms",
            "post_norms", "sliding_window", "local_layers", "attn_softcap", "final_softcap", "activation")


def _write(family, tmp_path):
  name = "words" if family == "mistral" else "words.gguf"  # mistral: the one Hugging Face snapshot directory
  return word_model_lib.write(tmp_path / name, family=family)


@pytest.mark.parametrize("family", word_model_lib.FAMILIES)
def test_each_checkpoint_states_its_family_features(family, tmp_path):
  """What the loader reads from each file is the family's tiny config, features included."""
  path = _write(family, tmp_path)
  if family == "mistral":
    config = families.config_from_hf(json.loads((tmp_path / "words" / "config.json").read_text()), path)
  else:
    with gguf_file.GGUFFile(path) as f:
      config = gguf_load.read_config(f)
      assert gguf_load.gguf_provenance(f, config)["unused_tensors"] == []
  want = word_model_lib.family_config(family, config.vocab_size)
  assert config.vocab_size == len(word_model_lib.vocabulary(word_model_lib.words())[0])
  assert {k: getattr(config, k) for k in FEATURES} == {k: getattr(want, k) for k in FEATURES}
  assert families.leaves(config) == families.leaves(want)


@pytest.mark.slow  # whole analyses in launcher processes (the marker's definition)
@pytest.mark.parametrize("family", list(CASES))
def test_launcher_runs_on_family(family, tmp_path):
  model = _write(family, tmp_path)
  launcher, args, numbers = CASES[family]
  two_scales = tmp_path / "two_scales.json"
  two_scales.write_text(json.dumps(TWO_SCALES))
  args = [a.replace("TWO_SCALES", str(two_scales)) for a in args]
  out = tmp_path / "out"
  proc = _run(launcher, f"--model={model}", *args, f"--out_dir={out}")
  assert proc.returncode == 0, f"{launcher} on {family}: {proc.stderr[-3000:]}"
  doc = json.loads((out / "summary.json").read_text())
  model_prov = doc["provenance"]["model"]
  assert model_prov["family"] == ("llama" if family == "mistral" else family)  # Mistral runs as llama
  if family == "mistral":
    assert model_prov["format"] != "gguf" and model_prov["model_type"] == "mistral"
  else:
    assert model_prov["architecture"] == family
    assert model_prov["name_in_file"].startswith("word-model")
  values = numbers(doc)
  assert values and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), values
