"""Structure: PCA of the words x scales projections, E/P/A congruence, whitening control.

    .venv/bin/python -m launch.structure --model=gemma3-270m --scales=osgood28 --norms=warriner \
        --out_dir=out/structure

Writes ``out_dir/summary.json`` (``pca``, ``cosine``, ``control``, provenance) and
``cosine.png``, ``scree.png``, ``loadings.png``.
"""

from absl import flags

import jaxsem
from jaxsem import cli
from jaxsem.analyses import experiments
from jaxsem.report import writers

cli.define_model_flags()
cli.define_analysis_flags(scales="osgood28", out_dir="out/structure")


def main(argv):
  del argv
  model = jaxsem.load(flags.FLAGS.model, mesh=flags.FLAGS.mesh, dtype=flags.FLAGS.dtype)
  opts = cli.analysis_options()
  result = experiments.run_structure(model, opts)
  path = writers.write_structure(flags.FLAGS.out_dir, result, model, opts)
  print("\n".join(writers.structure_digest(result)))
  print(f"wrote {path} ({result['seconds']:.1f} s)")


if __name__ == "__main__":
  cli.run(main)
