"""Forward throughput: 16 prompts of ~24 tokens, last-position logits.

    .venv/bin/python -m benchmarks.bench_forward [--models=...] [--repeats=5]

jaxsem (jit, float32, one device) and transformers + PyTorch (float32, eager,
``logits_to_keep=1`` so it too skips the vocabulary projection at other positions) on
the same GGUF file and the same token ids; prints prompts/s for each and the ratio, and
checks both give the same next-token argmax.
"""

from absl import app
from absl import flags

from benchmarks import common

_MODELS = flags.DEFINE_list("models", ["gemma3-270m", "smollm2-135m-instruct"], "Embedded models.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (after one warm-up).")
_BATCH = flags.DEFINE_integer("batch", 16, "Prompts per batch.")

_WORDS = ("the quick brown fox jumps over a lazy dog while seven kind wizards quietly "
          "brew strong coffee near the old harbour at dawn and sing").split()


def prompts(n: int) -> list[str]:
  """``n`` distinct ~24-token English prompts (deterministic)."""
  out = []
  for i in range(n):
    words = _WORDS[i % 5:] + _WORDS[:i % 5]
    out.append(" ".join(words[:20 + i % 3]).capitalize() + ",")
  return out


_JAXSEM = """
import jax, numpy as np
import jaxsem
m = jaxsem.load({name!r})
ids, mask = m.encode({prompts!r})
jax.block_until_ready(m.forward(ids, mask, logits_at="last").logits)  # compile
times = []
for _ in range({repeats}):
  t0 = time.perf_counter()
  logits = m.forward(ids, mask, logits_at="last").logits
  jax.block_until_ready(logits)
  times.append(time.perf_counter() - t0)
_report(seconds=float(np.median(times)), argmax=np.asarray(logits)[:{n}].argmax(-1).tolist(),
        tokens=int(mask.sum()), shape=list(ids.shape))
"""

_REFERENCE = """
import numpy as np, torch
torch.set_num_threads(os.cpu_count())
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({dir!r}, gguf_file={file!r})
m = AutoModelForCausalLM.from_pretrained({dir!r}, gguf_file={file!r}, dtype=torch.float32).eval()
tok.padding_side = "left"
if tok.pad_token is None:
  tok.pad_token = tok.eos_token
enc = tok({prompts!r}, return_tensors="pt", padding=True)
with torch.inference_mode():
  m(**enc, logits_to_keep=1)
  times = []
  for _ in range({repeats}):
    t0 = time.perf_counter()
    logits = m(**enc, logits_to_keep=1).logits[:, -1]
    times.append(time.perf_counter() - t0)
_report(seconds=float(np.median(times)), argmax=logits.argmax(-1).tolist(),
        tokens=int(enc["attention_mask"].sum()), shape=list(enc["input_ids"].shape))
"""


def main(argv):
  del argv
  import os

  print(f"machine: {common.machine()}")
  ps = prompts(_BATCH.value)
  print(f"{'model':24s} {'tokens':>7s} {'jaxsem p/s':>11s} {'ref p/s':>9s} {'speedup':>8s} {'argmax agree':>13s}")
  for name in _MODELS.value:
    path = common.gguf_path(name)
    kw = dict(prompts=ps, repeats=_REPEATS.value, n=len(ps))
    ours = common.run_snippet(_JAXSEM.format(name=name, **kw))
    ref = common.run_snippet(_REFERENCE.format(dir=os.path.dirname(path), file=os.path.basename(path), **kw))
    ours_ps, ref_ps = len(ps) / ours["seconds"], len(ps) / ref["seconds"]
    agree = sum(a == b for a, b in zip(ours["argmax"], ref["argmax"]))
    print(f"{name:24s} {ours['tokens']:7d} {ours_ps:11.1f} {ref_ps:9.1f} {ours_ps / ref_ps:7.2f}x "
          f"{agree:>6d}/{len(ps)}")
    print(f"{'':24s} (padded shapes: jaxsem {ours['shape']}, reference {ref['shape']})")


if __name__ == "__main__":
  app.run(main)
