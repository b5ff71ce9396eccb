"""jaxsem against transformers/torch on one accelerator, with random weights: one table.

    python3 -m benchmarks.device_check [--out=DIR] [--budget_s=210] [--repeats=3] [--tiny]

Run by ``benchmarks/device_check.sh`` (which first runs the tiny-config parity tests on the
device). For each architecture (``configs/models/``: the embedded models' shapes
``smollm2-135m`` and ``gemma-3-270m``, and ``llama-3.2-1b``) it builds the transformers model
with random weights on the torch device and loads the same weights into jaxsem through its
Hugging Face snapshot loader, then times, in float32 and bfloat16:

* forward: last-position logits of a batch of random prompts (tokens/s);
* steering grid: ``analyses.grid.Grid`` at site ``embed`` over a words x directions x
  strengths grid of a synthetic template (rows/s), against the transformers peer that runs
  every full prompt (as ``benchmarks/bench_steer.py``), and against one that runs the shared
  prefix once and only the suffixes against a copy of its KV cache;
* vocabulary sweep: every embedding row projected on random directions plus the rows'
  mean and covariance (``kernels.projection``, ``kernels.spectrum``) against the same math in
  torch; and apart, the covariance's square root every spectrum of a sweep shares, taken once
  per sweep (jaxsem: float64 on the host; torch: float64 ``eigh`` on the device);

and the matmul peak of the device (``jnp.dot`` of two square matrices, precision highest,
against ``torch.matmul``), to which each row's achieved FLOP/s is compared
(``benchmarks/device_routes.py`` says how FLOPs are counted).

float32 is float32 on both sides: jax matmul precision highest, torch without TF32. Both
libraries share one process (jax does not preallocate GPU memory: the .sh sets
``XLA_PYTHON_CLIENT_PREALLOCATE=false``); each figure is the median of ``--repeats`` calls
after a warm-up call, synchronised (``block_until_ready``, ``torch.cuda.synchronize``). On a
CPU the shapes are toy-sized (``--tiny`` forces that anywhere) so the run checks the plumbing.
Each row is printed as soon as it is measured; a route that fails or that the time budget
skips becomes a row saying so. ``--out`` gets ``device_check.md`` (the table) and
``device_check.json`` (every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

SHAPES = ("smollm2-135m", "gemma-3-270m", "llama-3.2-1b")
DTYPES = ("float32", "bfloat16")  # float32 first: the torch model is converted in place after it
ROUTES = ("forward", "steering grid, naive peer", "steering grid, prefix-reusing peer", "vocabulary sweep",
          "sweep covariance root (once per sweep)")
HEADER = ("route", "model shape", "device", "dtype", "jaxsem", "peer", "ratio", "share of peak", "max abs diff")
# Full sizes (accelerator) and toy sizes (CPU).
SIZES = {
    "full": dict(fwd_batch=32, fwd_len=128, words=16, directions=16, scales=28, batch=256, peer_batch=64,
                 sweep_dirs=3627, peak=8192),
    "tiny": dict(fwd_batch=4, fwd_len=16, words=4, directions=2, scales=4, batch=16, peer_batch=16,
                 sweep_dirs=64, peak=1024),
}


def _fmt(x: float) -> str:
  return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


class Table:
  """Markdown rows, printed and flushed as they come; every figure kept for the JSON."""

  def __init__(self):
    self.rows: list[tuple[str, ...]] = []
    self.records: list[dict] = []
    print("| " + " | ".join(HEADER) + " |", flush=True)
    print("|" + "---|" * len(HEADER), flush=True)

  def add(self, cells: tuple[str, ...], record: dict) -> None:
    self.rows.append(cells)
    self.records.append(record)
    print("| " + " | ".join(cells) + " |", flush=True)

  def result(self, route, shape, device, dtype, r: dict, peak: float | None) -> None:
    share = "" if not peak else f"{r['flops'] / peak:.1%}"
    diff = "" if "diff" not in r else f"{r['diff']:.2e}" + ("" if r.get("scale") in (None, 1.0)
                                                             else f" (of {r['scale']:.3g})")
    cells = (route, shape, device, dtype, f"{_fmt(r['ours'])} {r['unit']}", f"{_fmt(r['peer'])} {r['unit']}",
             f"{r['ours'] / r['peer']:.2f}x", share, diff)
    self.add(cells, dict(route=route, shape=shape, device=device, dtype=dtype, status="ok", **r))

  def note(self, route, shape, device, dtype, status: str) -> None:
    self.add((route, shape, device, dtype, status, "", "", "", ""),
             dict(route=route, shape=shape, device=device, dtype=dtype, status=status))

  def markdown(self) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in self.rows]) + "\n"


def _reason(e: BaseException) -> str:
  text = f"{type(e).__name__}: {e}".splitlines()[0]
  return ("failed: " + text)[:160].replace("|", "/")


def _devices():
  """``(jax platform, jax device kind, torch device, torch device name)``."""
  import jax
  import torch

  d = jax.devices()[0]
  cuda = torch.cuda.is_available()
  tname = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
  return d.platform, getattr(d, "device_kind", d.platform), "cuda" if cuda else "cpu", tname


def _precision() -> None:
  import jax
  import torch

  jax.config.update("jax_default_matmul_precision", "highest")
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.set_float32_matmul_precision("highest")


def _config(name: str, tiny: bool) -> dict:
  from benchmarks import device_routes

  with open(os.path.join(REPO, "configs", "models", name + ".json")) as f:
    data = json.load(f)
  data.pop("_name_or_path", None)
  return device_routes.tiny(data) if tiny else data


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=None, help="Folder for device_check.md and device_check.json.")
  p.add_argument("--budget_s", type=float, default=210.0, help="Skip the routes left after this many seconds.")
  p.add_argument("--repeats", type=int, default=3, help="Timed calls per figure (after one warm-up).")
  p.add_argument("--tiny", action="store_true", help="Toy shapes even on an accelerator.")
  p.add_argument("--shapes", default=",".join(SHAPES), help="Comma-separated names from configs/models/.")
  p.add_argument("--no_prefix_peer", action="store_true", help="Skip the prefix-reusing transformers peer.")
  p.add_argument("--note", action="append", default=[], help="Extra line for the output (repeatable).")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse(argv)
  start = time.perf_counter()
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  warnings.filterwarnings("ignore", category=FutureWarning)  # transformers renaming keyword arguments
  import jax
  import torch
  import transformers

  from benchmarks import device_routes as R

  _precision()
  jplat, jkind, tdev, tname = _devices()
  accel = jplat != "cpu" and not args.tiny
  size = SIZES["full" if accel else "tiny"]
  repeats = max(1, args.repeats)
  if not accel:
    torch.set_num_threads(R.cpu_threads())
    print(f"{jplat} (jax) / {tdev} (torch): no accelerator in use, so toy shapes (smoke run, not a benchmark).",
          flush=True)
  device = "cpu" if jplat == tdev == "cpu" else jkind if tname in (jkind, "") else f"{jkind} (torch: {tname})"
  versions = (f"jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"python {platform.python_version()}")
  print(f"device: jax {jplat} {jkind}; torch {tdev} {tname}; {versions}; {R.cpu_threads()} CPU threads",
        flush=True)
  table = Table()
  over = lambda: time.perf_counter() - start > args.budget_s  # noqa: E731

  peaks = {}
  for dtype in DTYPES:
    try:
      r = R.matmul_peak(size["peak"], dtype, tdev, repeats=max(3, repeats))
      peaks[dtype] = r["flops"]
      r["peer_note"] = "torch.matmul"
      table.result(f"matmul peak {size['peak']}^3", "-", device, dtype, r, None)
    except Exception as e:  # noqa: BLE001 - a failed route becomes a row
      table.note(f"matmul peak {size['peak']}^3", "-", device, dtype, _reason(e))

  for shape in [s for s in args.shapes.split(",") if s]:
    label = shape + ("" if accel else " (tiny)")
    setup = grid = None
    if over():
      for dtype in DTYPES:
        for route in ROUTES[:-1]:
          table.note(route, label, device, dtype, "skipped: time budget")
      table.note(ROUTES[-1], label, device, "float64", "skipped: time budget")
      continue
    try:
      setup = R.build(shape, _config(shape, not accel), tdev)
      grid = R.grid_inputs(setup, size["words"], size["directions"], size["scales"])
      print(f"  {label}: random weights built and loaded in {setup.setup_s:.1f} s "
            f"({setup.config.n_params / 1e6:.0f}M params)", flush=True)
    except Exception as e:  # noqa: BLE001
      traceback.print_exc()
      for dtype in DTYPES:
        for route in ROUTES:
          table.note(route, label, device, dtype, _reason(e))
      continue
    for dtype in DTYPES:
      runs = {
          ROUTES[0]: lambda: R.forward(setup, dtype, size["fwd_batch"], size["fwd_len"], repeats),
          ROUTES[1]: lambda: R.steer(setup, dtype, grid, size["batch"], size["peer_batch"], repeats, False),
          ROUTES[2]: lambda: R.steer(setup, dtype, grid, size["batch"], size["peer_batch"], repeats, True),
          ROUTES[3]: lambda: R.sweep(setup, dtype, size["sweep_dirs"], repeats),
          ROUTES[4]: lambda: R.sweep_root(setup, repeats),
      }
      for route, run in runs.items():
        if route == ROUTES[4] and dtype != DTYPES[0]:
          continue  # float64 on both sides whatever the rows' dtype: once per shape
        if route == ROUTES[2] and args.no_prefix_peer:
          table.note(route, label, device, dtype, "skipped: --no_prefix_peer")
          continue
        if over():
          table.note(route, label, device, "float64" if route == ROUTES[4] else dtype, "skipped: time budget")
          continue
        try:
          r = run()
          # The sweep's matmuls run in float32 whatever the rows' dtype.
          peak = None if route == ROUTES[4] else peaks.get("float32" if route == ROUTES[3] else dtype)
          table.result(route, label, device, "float64" if route == ROUTES[4] else dtype, r, peak)
        except Exception as e:  # noqa: BLE001
          traceback.print_exc()
          table.note(route, label, device, dtype, _reason(e))
    setup = grid = None  # frees the device memory of this shape before the next
    if tdev == "cuda":
      torch.cuda.empty_cache()

  wall = time.perf_counter() - start
  notes = [
      f"device: jax {jplat} {jkind}; torch {tdev} {tname}; {versions}",
      "jaxsem and peer in one process; median of %d after one warm-up; float32 at full precision on both "
      "sides (jax matmul precision highest, torch TF32 off); ratio = jaxsem / peer throughput; share of peak "
      "= jaxsem's counted matmul FLOP/s over jnp.dot's peak of the dtype (float32 for the sweep, which "
      "computes in float32); max abs diff = largest |jaxsem - peer| output (forward: last-position logits, "
      "steering: pole log-odds, sweep: cosine scores); steering grid at site embed, prefix %d + suffix %d "
      "tokens; sweep without a zarr write" % (repeats, R.PREFIX, R.SUFFIX),
      f"sizes: {json.dumps(size)}; wall {wall:.0f} s",
  ] + list(args.note)
  for line in notes:
    print(line, flush=True)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "device_check.md"), "w") as f:
      f.write(table.markdown() + "\n" + "\n".join(f"- {line}" for line in notes) + "\n")
    with open(os.path.join(args.out, "device_check.json"), "w") as f:
      json.dump(dict(accelerator=accel, device=device, versions=versions, sizes=size, repeats=repeats,
                     wall_s=wall, peaks=peaks, notes=notes, rows=table.records), f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
