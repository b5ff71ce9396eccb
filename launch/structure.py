"""Structure: PCA of the words x scales projections, E/P/A congruence, whitening control.

    .venv/bin/python -m launch.structure --model=gemma3-270m --scales=osgood28 --norms=warriner \
        --out_dir=out/structure

Writes ``out_dir/summary.json`` (``pca``, ``cosine``, ``control``, provenance) and
``cosine.png``, ``scree.png``, ``loadings.png``.
"""

from absl import flags

from jaxsem import cli
from jaxsem.analyses import experiments
from jaxsem.report import writers

_DEFAULT = cli.define_config("structure")
cli.define_model_flags(_DEFAULT.load)
cli.define_analysis_flags(_DEFAULT)
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too


def main(argv):
  del argv
  cli.run_analysis("structure", experiments.run_structure, writers.write_structure, writers.structure_digest)


if __name__ == "__main__":
  cli.run(main)
