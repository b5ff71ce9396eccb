"""Per-device memory of jaxsem's programs for a model and mesh, before any weights exist.

    .venv/bin/python -m launch.plan --model_config=llama-3-70b --mesh=data:8,model:8 --out=plan.json

Defaults: configs/experiments/plan.py (``--config``, ``--config.plan.batch=128``, ``--config_print``).

Compiles the sweep's projection and moments, one steering batch and one block of the hidden-state
sweep (``launch.sweep --space=hidden --layers=all``) on fake CPU devices
(as many as --mesh names; set JAX_PLATFORMS to plan on real chips) and prints their
per-device memory; see jaxsem/planning.py for what each number means.
"""

import json
import math
import os
import re
import sys


def _mesh_spec(argv: list[str]) -> str:
  """The mesh named on the command line (``--mesh`` or ``--config.mesh``), or ""."""
  spec = ""
  for i, arg in enumerate(argv):
    for flag in ("--mesh", "--config.mesh"):
      if arg.startswith(flag + "="):
        spec = arg.split("=", 1)[1]
      elif arg == flag and i + 1 < len(argv):
        spec = argv[i + 1]
  return spec


def _ask_for_host_devices(spec: str) -> None:
  """Asks XLA for as many CPU devices as ``spec`` names; must run before JAX starts its backends."""
  sizes = [int(s) for s in re.findall(r":\s*(-?\d+)", spec or "")]
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if not sizes or min(sizes) < 1:
    return  # no mesh, or -1: plan on the devices there are
  want, xla = math.prod(sizes), os.environ.get("XLA_FLAGS", "")
  have = re.search(r"--xla_force_host_platform_device_count=(\d+)", xla)
  if not have or int(have.group(1)) < want:
    xla = re.sub(r"--xla_force_host_platform_device_count=\d+", "", xla)
    os.environ["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={want}".strip()


_ask_for_host_devices(_mesh_spec(sys.argv))

from absl import flags  # noqa: E402

from jaxsem import cli, experiment_config, planning  # noqa: E402
from jaxsem.errors import InputError  # noqa: E402
from jaxsem.io.cache import atomic_write_text  # noqa: E402

_DEFAULT = cli.define_config("plan")
_D = _DEFAULT.plan
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
for _name in ("model_config", "mesh", "out"):
  cli.shortcut(_name, _name)
for _name in ("dtype", "directions", "chunk_rows", "batch", "prefix_len", "suffix_len", "site",
              "device_memory_gib"):
  cli.shortcut(_name, f"plan.{_name}")
flags.adopt_module_key_flags(cli)  # --help lists --config too


def main(argv):
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {argv[1:]}; every option is a --flag.")
  config = cli.config()
  if not config.model_config or not config.mesh:
    raise InputError("pass --model_config and --mesh, e.g. --model_config=llama-3-70b --mesh=data:8,model:8.")
  _ask_for_host_devices(config.mesh)  # a mesh from a --config file (JAX has not started its backends yet)
  model_config, source = planning.load_model_config(config.model_config)
  opts = experiment_config.options(planning.PlanOptions, config.plan)
  plan = planning.make_plan(model_config, planning.plan_mesh(config.mesh), opts, source)
  print(planning.table(plan))
  if config.out:
    try:
      atomic_write_text(config.out, json.dumps(plan.to_json(), indent=2) + "\n")
    except OSError as e:
      raise InputError(f"--out={config.out}: cannot write it ({e.strerror}); choose a writable path.") from None
    print(f"wrote {config.out}")

if __name__ == "__main__":
  cli.run(main)
