r"""Where a scanned epoch's device time goes: one epoch under JAX's profiler.

    python -m experiments.gpu_profile --data_dir=DIR [--methods=backprop,sal]
        [--sweep=64] [--top=15] [benchmark flags]

For each row, one scanned epoch of one model and one of a vmapped sweep are
traced (after a warm-up) and the device's kernel events summed: "busy" is the
time at least one kernel ran, "gaps" the rest of the span from the first
kernel to the last (launch and scheduling), then the kernels that took most
time, per step. Takes the benchmark's flags (``--methods``, ``--sweep``,
``--sweep_order``, ``--unroll``, ``--batched``, ``--xla_option`` ...). Needs a
backend whose profiler records device kernels (CUDA); elsewhere it says there
were none.
"""

from __future__ import annotations

import collections
import pathlib
import tempfile
import time

from absl import app
from absl import flags
import jax

from experiments import benchmark
from experiments import speed_flags
from experiments.reference_mlp import BATCH

FLAGS = flags.FLAGS
_TOP = flags.DEFINE_integer("top", 15, "Kernels listed per program.",
                            lower_bound=1)


def device_kernels(xplane_file: pathlib.Path):
  """(name, start ns, duration ns) of every kernel a trace's device planes
  hold, from their stream lines (not the derived per-op lines, which would
  count each kernel twice), and the lines read, as "plane/line (events)"."""
  profile = jax.profiler.ProfileData.from_file(str(xplane_file))
  kernels, read = [], []
  for plane in profile.planes:
    if not plane.name.startswith("/device:"):
      continue
    lines = [line for line in plane.lines if line.name.startswith("Stream")]
    for line in lines or list(plane.lines):
      events = [(e.name, e.start_ns, e.duration_ns) for e in line.events]
      read.append(f"{plane.name}/{line.name} ({len(events)})")
      kernels += events
  return kernels, read


def busy_ns(kernels) -> float:
  """Length of the union of the kernels' intervals."""
  total, end = 0.0, float("-inf")
  for _, start, duration in sorted(kernels, key=lambda k: k[1]):
    stop = start + duration
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def trace(run):
  """Wall seconds of ``run()`` under the profiler, its device kernels and
  the trace lines they came from (``device_kernels``)."""
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      run()
      wall = time.perf_counter() - start
    found = sorted(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
    return (wall, *device_kernels(found[0])) if found else (wall, [], [])


def summary(label, wall, kernels, trace_lines, steps, top) -> str:
  """A program's trace as a few lines of Markdown."""
  if not kernels:
    return f"## {label}: {1e3 * wall:.1f} ms wall; no device kernels traced\n"
  span = (max(s + d for _, s, d in kernels) - min(s for _, s, _ in kernels))
  busy = busy_ns(kernels)
  out = [f"## {label}: {1e3 * wall:.1f} ms wall, {span / 1e6:.1f} ms from "
         f"first kernel to last, {busy / 1e6:.1f} ms busy, "
         f"{(span - busy) / 1e6:.1f} ms gaps; {len(kernels) / steps:.1f} "
         f"kernels/step, {busy / 1e3 / steps:.1f} us busy/step", "",
         "Trace lines read: " + ", ".join(trace_lines), "",
         "| kernel | per step | us/step | share of busy |",
         "|---|---|---|---|"]
  count, total = collections.Counter(), collections.Counter()
  for name, _, duration in kernels:
    count[name] += 1
    total[name] += duration
  for name, ns in total.most_common(top):
    out.append(f"| {name[:70]} | {count[name] / steps:.2f} | "
               f"{ns / 1e3 / steps:.2f} | {ns / busy:.1%} |")
  return "\n".join(out) + "\n"


def profile_row(name, circuit, images, labels, top):
  """Traces one scanned epoch of one model and of a sweep (``--sweep``)."""
  sweep = 2 if FLAGS.quick else FLAGS.sweep
  runs = benchmark.epoch_runs(
      name, circuit, jax.device_put(images), jax.device_put(labels), sweep,
      FLAGS.unroll, speed_flags.shared_order())
  steps = images.shape[0] // BATCH
  for label, run in ((f"{name}, one model", runs.scan),
                     (f"{name}, sweep of {sweep}", runs.sweep)):
    run()  # warm up (epoch_runs compiled both programs)
    run()
    print(summary(label, *trace(run), steps, top), flush=True)


def main(argv):
  del argv
  circuits = benchmark.row_circuits(FLAGS.methods or ["backprop", "sal"])
  speed_flags.check_compiler_options()
  images, labels, data = benchmark.load_images(FLAGS.quick)
  print(f"{benchmark.header(data)}; "
        + ", ".join(f"{k} {v}" for k, v in benchmark.settings().items()))
  with benchmark.matmul_precision():
    for name, circuit in circuits.items():
      profile_row(name, circuit, images, labels, _TOP.value)


if __name__ == "__main__":
  app.run(main)
