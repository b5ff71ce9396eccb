"""Per-device memory of jaxsem's programs for a model and mesh, before any weights exist.

    .venv/bin/python -m launch.plan --model_config=llama-3-70b --mesh=data:8,model:8 --out=plan.json

Compiles the sweep's projection and moments and one steering batch on fake CPU devices
(as many as --mesh names; set JAX_PLATFORMS to plan on real chips) and prints their
per-device memory; see jaxsem/planning.py for what each number means.
"""

import json
import math
import os
import re
import sys


def _ask_for_host_devices(argv: list[str]) -> None:
  """Asks XLA for as many CPU devices as --mesh names; must run before jax is imported."""
  spec = ""
  for i, arg in enumerate(argv):
    if arg.startswith("--mesh="):
      spec = arg.split("=", 1)[1]
    elif arg == "--mesh" and i + 1 < len(argv):
      spec = argv[i + 1]
  sizes = [int(s) for s in re.findall(r":\s*(-?\d+)", spec)]
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if not sizes or min(sizes) < 1:
    return  # no mesh, or -1: plan on the devices there are
  want, xla = math.prod(sizes), os.environ.get("XLA_FLAGS", "")
  have = re.search(r"--xla_force_host_platform_device_count=(\d+)", xla)
  if not have or int(have.group(1)) < want:
    xla = re.sub(r"--xla_force_host_platform_device_count=\d+", "", xla)
    os.environ["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={want}".strip()


_ask_for_host_devices(sys.argv)

from absl import flags  # noqa: E402

from jaxsem import cli, planning  # noqa: E402
from jaxsem.errors import InputError  # noqa: E402
from jaxsem.io.cache import atomic_write_text  # noqa: E402

_D = planning.PlanOptions()
flags.DEFINE_string("model_config", None, f"Architecture: {', '.join(planning.model_config_names())}, an "
                    "embedded model name, or a path to a config.json (no weights are read).")
flags.DEFINE_string("mesh", None, "Device mesh to plan for, e.g. data:8,model:8.")
flags.DEFINE_enum("dtype", _D.dtype, sorted(planning.DTYPES), "Params and activation dtype.")
flags.DEFINE_integer("directions", _D.directions, "Directions of the sweep's projection.", lower_bound=1)
flags.DEFINE_integer("chunk_rows", _D.chunk_rows, "Vocabulary rows per projection block.", lower_bound=1)
flags.DEFINE_integer("batch", _D.batch, "Steering rows per call.", lower_bound=1)
flags.DEFINE_integer("prefix_len", _D.prefix_len, "Tokens of the cached prompt prefix.", lower_bound=1)
flags.DEFINE_integer("suffix_len", _D.suffix_len, "Tokens of a steering row after the prefix.", lower_bound=1)
flags.DEFINE_string("site", _D.site, "Steering site: embed, resid_pre.L or resid_post.L.")
flags.DEFINE_float("device_memory_gib", _D.device_memory_gib,
                   "Memory of one device in GiB (16: a TPU v5e chip); larger peaks are flagged.",
                   lower_bound=0.0)
flags.DEFINE_string("out", None, "Optional JSON file for the plan.")


def main(argv):
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {argv[1:]}; every option is a --flag.")
  f = flags.FLAGS
  if not f.model_config or not f.mesh:
    raise InputError("pass --model_config and --mesh, e.g. --model_config=llama-3-70b --mesh=data:8,model:8.")
  config, source = planning.load_model_config(f.model_config)
  opts = planning.PlanOptions(dtype=f.dtype, directions=f.directions, chunk_rows=f.chunk_rows, batch=f.batch,
                              prefix_len=f.prefix_len, suffix_len=f.suffix_len, site=f.site,
                              device_memory_gib=f.device_memory_gib)
  plan = planning.make_plan(config, planning.plan_mesh(f.mesh), opts, source)
  print(planning.table(plan))
  if f.out:
    try:
      atomic_write_text(f.out, json.dumps(plan.to_json(), indent=2) + "\n")
    except OSError as e:
      raise InputError(f"--out={f.out}: cannot write it ({e.strerror}); choose a writable path.") from None
    print(f"wrote {f.out}")


if __name__ == "__main__":
  cli.run(main)
