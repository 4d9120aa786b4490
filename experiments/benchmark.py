r"""Throughput of one epoch of the reference MLP (784-200-200-200-10, batch 256).

    python -m experiments.benchmark [--quick] [--json=FILE] [--data_dir=DIR]

Rows: backprop by ``jax.grad`` + the reference optax chain (the yardstick),
and the circuit's sgd, fa, kp and sal (downstream width ratio 1, √5, √8), each
run three ways: a Python loop over a jitted step, one scanned epoch, and a
vmapped sweep of 16 models. Times are medians over repeats after a warm-up.
A benchmark, not a test: timings on shared machines are noisy, so compare
ratios within one run.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

import sal_jax as sj
from sal_jax import datasets
from sal_jax import diagnostics
from sal_jax import loop
from sal_jax import train

_QUICK = flags.DEFINE_bool("quick", False, "A few batches, one repeat.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Directory with mnist.npz; random data of MNIST's shape "
    "when absent.")
_SWEEP = flags.DEFINE_integer("sweep", 16, "Models in the vmapped sweep.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per mode (median).")
_METHODS = flags.DEFINE_list(
    "methods", None, "Rows to run (default all): backprop, sgd, fa, kp, sal, "
    "sal_sqrt5, sal_sqrt8.")

WIDTHS = (784, 200, 200, 200, 10)
BATCH = 256


def backprop_step(optimizer, state, batch):
  """The yardstick: autodiff gradient through the same optax chain."""
  grads = diagnostics.loss_gradient(CIRCUITS["backprop"], state.weights.w,
                                    batch)
  return train.apply_gradients(optimizer, state,
                               state.weights._replace(w=grads)), {}


CIRCUITS = {
    "backprop": sj.Circuit(WIDTHS, method="sgd"),
    "sgd": sj.Circuit(WIDTHS, method="sgd"),
    "fa": sj.Circuit(WIDTHS, method="fa"),
    "kp": sj.Circuit(WIDTHS, method="kp"),
    "sal": sj.Circuit(WIDTHS, method="sal"),
    "sal_sqrt5": sj.Circuit(WIDTHS, method="sal", ratio=math.sqrt(5)),
    "sal_sqrt8": sj.Circuit(WIDTHS, method="sal", ratio=math.sqrt(8)),
}


def _step_fn(name, circuit, optimizer):
  if name == "backprop":
    return functools.partial(backprop_step, optimizer)
  return functools.partial(train.train_step, circuit, optimizer)


def _epoch_fn(name, circuit, optimizer):
  """A scanned epoch built on the row's own step function."""
  return loop.scan_epoch(_step_fn(name, circuit, optimizer), BATCH)


def _median_time(fn, repeats):
  fn()  # warm-up (compilation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _peak_memory():
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def bench_row(name, circuit, images, labels, repeats, sweep):
  optimizer = sj.reference_optimizer(circuit)
  n = images.shape[0]
  steps = n // BATCH
  key = jax.random.key(0)
  idx = np.asarray(datasets.epoch_indices(key, n, BATCH))
  batches = [datasets.preprocess(images[i], labels[i]) for i in idx]
  step = jax.jit(_step_fn(name, circuit, optimizer), donate_argnums=0)
  epoch = jax.jit(_epoch_fn(name, circuit, optimizer), donate_argnums=0)
  sweep_epoch = jax.jit(jax.vmap(_epoch_fn(name, circuit, optimizer),
                                 in_axes=(0, 0, None, None)),
                        donate_argnums=0)
  holder = {"state": sj.init_state(key, circuit, optimizer),
            "states": loop.init_sweep(jax.random.split(key, sweep), circuit,
                                      optimizer)}
  sweep_keys = jax.random.split(key, sweep)

  def run_loop():
    state = holder["state"]
    for b in batches:
      state, _ = step(state, b)
    holder["state"] = jax.block_until_ready(state)

  def run_scan():
    holder["state"] = jax.block_until_ready(
        epoch(holder["state"], key, images, labels)[0])

  def run_sweep():
    holder["states"] = jax.block_until_ready(
        sweep_epoch(holder["states"], sweep_keys, images, labels)[0])

  t_loop = _median_time(run_loop, repeats)
  t_scan = _median_time(run_scan, repeats)
  t_sweep = _median_time(run_sweep, repeats)
  examples = steps * BATCH
  return {"method": name, "steps": steps,
          "loop_ms": 1e3 * t_loop, "scan_ms": 1e3 * t_scan,
          "sweep_ms": 1e3 * t_sweep, "sweep_size": sweep,
          "scan_examples_per_s": examples / t_scan,
          "sweep_examples_per_s": sweep * examples / t_sweep,
          "loop_over_scan": t_loop / t_scan,
          "sweep_gain": sweep * t_scan / t_sweep,
          "peak_bytes": _peak_memory()}


def _ratio(value):
  return "" if value is None else f"{value:.2f}x"


def main(argv):
  del argv
  quick = _QUICK.value
  try:
    ds = datasets.load("mnist", _DATA_DIR.value, source="local")
    images, labels, data = ds.x_train, ds.y_train, "MNIST"
  except (datasets.DatasetNotFoundError, ValueError):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 60000).astype(np.int32)
    data = "random data of MNIST's shape"
  if quick:
    images, labels = images[:8 * BATCH], labels[:8 * BATCH]
  images, labels = jax.device_put(images), jax.device_put(labels)
  sweep = 2 if quick else _SWEEP.value
  repeats = 1 if quick else _REPEATS.value
  device = jax.local_devices()[0]
  print(f"# {device.platform}: {device.device_kind}, jax {jax.__version__}, "
        f"{platform.node()}; {data}, {images.shape[0] // BATCH} steps/epoch")
  names = _METHODS.value or list(CIRCUITS)
  unknown = sorted(set(names) - set(CIRCUITS))
  if unknown:
    raise app.UsageError(f"unknown --methods {unknown}; expected {list(CIRCUITS)}")
  rows = []
  header = ("| method | loop ms/epoch | scan ms/epoch | sweep of "
            f"{sweep} ms/epoch | scan ex/s | loop/scan | sweep gain "
            "| scan vs backprop | peak MiB |")
  print(header)
  print("|" + "---|" * 9)
  for name in names:
    row = bench_row(name, CIRCUITS[name], images, labels, repeats, sweep)
    reference = [r["scan_ms"] for r in rows if r["method"] == "backprop"]
    row["scan_vs_backprop"] = (row["scan_ms"] / reference[0] if reference
                               else None)
    rows.append(row)
    peak = (f"{row['peak_bytes'] / 2**20:.0f}" if row["peak_bytes"] else "")
    print(f"| {name} | {row['loop_ms']:.1f} | {row['scan_ms']:.1f} | "
          f"{row['sweep_ms']:.1f} | {row['scan_examples_per_s']:.0f} | "
          f"{_ratio(row['loop_over_scan'])} | {_ratio(row['sweep_gain'])} | "
          f"{_ratio(row['scan_vs_backprop'])} | {peak} |", flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"device": f"{device.platform}:{device.device_kind}",
                 "jax": jax.__version__, "data": data, "rows": rows}, f,
                indent=1)


if __name__ == "__main__":
  app.run(main)
