"""Experiment configs: every default written once (base.py), every shipped config loads."""

import dataclasses

import pytest

from jaxsem import experiment_config
from jaxsem import planning
from jaxsem.analyses import experiments, layers, steer, sweep
from jaxsem.errors import InputError


@pytest.mark.parametrize("cls,section", [(experiments.Options, "analysis"), (steer.SteerOptions, "steer"),
                                         (sweep.SweepOptions, "sweep"), (layers.LayerOptions, "layers"),
                                         (planning.PlanOptions, "plan")])
def test_option_defaults_are_the_base_config(cls, section):
  from configs.experiments import base

  values = getattr(base, section)().to_dict()
  defaults = {f.name: f.default for f in dataclasses.fields(cls)}
  assert defaults == {k: experiment_config.plain(v) for k, v in values.items()}


def test_a_field_on_one_side_only_fails_at_definition():
  with pytest.raises(TypeError, match="fields without a default \\['extra_field'\\]"):
    @dataclasses.dataclass(frozen=True)
    @experiment_config.config_defaults("sweep")
    class _Options:  # every sweep field plus one the config lacks
      extra_field: int
      scales: str
  with pytest.raises(TypeError, match="defaults without a field"):
    @dataclasses.dataclass(frozen=True)
    @experiment_config.config_defaults("sweep")
    class _Fewer:
      scales: str


@pytest.mark.parametrize("name", experiment_config.names())
def test_every_shipped_config_loads_and_builds_its_options(name):
  config = experiment_config.get_config(name)
  for key, cls in (("analysis", experiments.Options), ("align", experiments.Options),
                   ("structure", experiments.Options), ("steer", steer.SteerOptions),
                   ("sweep", sweep.SweepOptions), ("layers", layers.LayerOptions),
                   ("plan", planning.PlanOptions)):
    if key in config:
      assert isinstance(experiment_config.options(cls, config[key]), cls)


def test_quick_is_smaller_than_paper_and_paper_is_the_documented_scale():
  quick, paper = experiment_config.get_config("quick"), experiment_config.get_config("paper")
  assert list(quick.models) == ["gemma3-270m"]
  assert list(paper.models) == ["gemma3-270m", "smollm2-135m-instruct"]
  assert paper.steer.n_words == 256 and paper.align.n_boot == 500 and paper.align.n_null == 500
  assert quick.steer.n_words < paper.steer.n_words and quick.align.n_boot < paper.align.n_boot


def test_unknown_option_and_unknown_config_are_one_line():
  with pytest.raises(InputError, match="has no option 'n_wrods'"):
    experiment_config.options(steer.SteerOptions, {"n_wrods": 3})
  with pytest.raises(InputError, match="no experiment config 'papr'"):
    experiment_config.path_of("papr")
