"""Human alignment: scale directions vs human word ratings, with nulls and a probe ceiling.

    .venv/bin/python -m launch.align --model=gemma3-270m --scales=norms --norms=warriner,dal \
        --space=input_embedding --centre --out_dir=out/align

Writes ``out_dir/summary.json`` (``results``: one row per scale x norm column, with
provenance) and ``out_dir/align_<norms>.png``.
"""

from absl import flags

from jaxsem import cli
from jaxsem.analyses import experiments
from jaxsem.report import writers

_DEFAULT = cli.define_config("align")
cli.define_model_flags(_DEFAULT.load)
cli.define_analysis_flags(_DEFAULT)
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  del argv
  cli.run_analysis("align", experiments.run_align, writers.write_align, writers.align_digest)


if __name__ == "__main__":
  cli.run(main)
