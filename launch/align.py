"""Human alignment: scale directions vs human word ratings, with nulls and a probe ceiling.

    .venv/bin/python -m launch.align --model=gemma3-270m --scales=norms --norms=warriner,dal \
        --space=input_embedding --centre --out_dir=out/align

Writes ``out_dir/summary.json`` (``results``: one row per scale x norm column, with
provenance) and ``out_dir/align_<norms>.png``.
"""

from absl import flags

import jaxsem
from jaxsem import cli
from jaxsem.analyses import experiments
from jaxsem.report import writers

cli.define_model_flags()
cli.define_analysis_flags(scales="norms", out_dir="out/align")


def main(argv):
  del argv
  model = jaxsem.load(flags.FLAGS.model, mesh=flags.FLAGS.mesh, dtype=flags.FLAGS.dtype)
  opts = cli.analysis_options()
  result = experiments.run_align(model, opts)
  path = writers.write_align(flags.FLAGS.out_dir, result, model, opts)
  print("\n".join(writers.align_digest(result)))
  print(f"wrote {path} ({result['seconds']:.1f} s)")


if __name__ == "__main__":
  cli.run(main)
