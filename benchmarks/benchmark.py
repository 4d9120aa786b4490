r"""Time one epoch of the reference MLP (784-200-200-200-10, batch 256).

    python benchmarks/benchmark.py [--quick] [--data_dir=DIR] [--json=FILE]

Rows: backprop by ``jax.grad`` through the reference optax chain (the
yardstick), and the circuit's methods (``sal_sqrt5`` / ``sal_sqrt8``: SAL
with downstream width ratio √5 / √8). Columns, in ms per epoch of MNIST's
60,000 images: a Python loop over the jitted step on device batches, one
scanned epoch (``sweep.make_epoch``), and a vmapped sweep of ``--sweep``
models (each its own data order, or one shared order with
``--sweep_order=shared``), per model. Times are medians over ``--repeats``
after a warm-up. A benchmark, not a test: compare ratios within one run, on
one machine.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import sal_jax as sj

_QUICK = flags.DEFINE_bool("quick", False, "A few batches, one repeat.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "A folder with MNIST "
                                "(datasets.load); random images otherwise.")
_SWEEP = flags.DEFINE_integer("sweep", 16, "Models in the vmapped sweep.",
                              lower_bound=1)
_SWEEP_ORDER = flags.DEFINE_enum("sweep_order", "own", ["own", "shared"],
                                 "Each member's own data order, or one.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per mode.",
                                lower_bound=1)
_METHODS = flags.DEFINE_list("methods", ["backprop", "sgd", "fa", "kp", "sal"],
                             "Rows: backprop, sgd, fa, wm, kp, sal, "
                             "sal_sqrt5, sal_sqrt8.")
_PRECISION = flags.DEFINE_string("precision", None, "Compute.matmul_precision"
                                 ", e.g. highest or BF16_BF16_F32.")
_UPDATE_DTYPE = flags.DEFINE_string("update_dtype", None,
                                    "Compute.update_dtype (bfloat16).")
_MOMENTUM_DTYPE = flags.DEFINE_string("momentum_dtype", None,
                                      "Compute.momentum_dtype (bfloat16).")
_BATCHED = flags.DEFINE_enum("batched", "auto", ["auto", "on", "off"],
                             "Compute.batched_products.")
_XLA_OPTIONS = flags.DEFINE_string("xla_options", "", "Compute.xla_options, "
                                   "NAME=VALUE entries.")

BATCH = 256
HIDDEN = (200, 200, 200)
RATIOS = {"sal_sqrt5": math.sqrt(5), "sal_sqrt8": math.sqrt(8)}


def compute_from_flags() -> sj.Compute:
  """The ``Compute`` the flags describe (ValueError names a bad one)."""
  return sj.Compute(
      batched_products={"auto": None, "on": True, "off": False}[
          _BATCHED.value],
      update_dtype=_UPDATE_DTYPE.value, momentum_dtype=_MOMENTUM_DTYPE.value,
      matmul_precision=_PRECISION.value,
      xla_options=sj.compute.parse_options(_XLA_OPTIONS.value))


def circuit_for(name: str) -> sj.Circuit:
  method = "sgd" if name == "backprop" else name.split("_")[0]
  return sj.Circuit((784, *HIDDEN, 10), method=method,
                    ratio=RATIOS.get(name, 1.0))


def backprop_step(circuit, optimizer, compute, state, batch):
  """The yardstick: ``jax.grad`` of the loss through the same chain."""
  x, y = sj.train.as_features(batch)

  def loss(weights):
    logits = sj.upstream(weights.w, x).output
    return jnp.mean(sj.LOSSES[circuit.loss].value(logits, y))

  value, grads = jax.value_and_grad(loss)(state.weights)
  grads = jax.tree.map(lambda g: g.astype(compute.update_dtype or g.dtype),
                       grads)
  return sj.train.apply_gradients(optimizer, state, grads), {"loss": value}


def step_for(name, circuit, optimizer, compute):
  if name == "backprop":
    return functools.partial(backprop_step, circuit, optimizer, compute)
  return functools.partial(sj.train_step, circuit, optimizer, compute=compute)


def _median_ms(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # warm-up: compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def time_row(name, images, labels, compute, repeats, members):
  """One row's times, in ms per epoch (the sweep's per model)."""
  circuit = circuit_for(name)
  optimizer = sj.reference_optimizer(circuit, compute=compute)
  key = jax.random.key(0)
  step = step_for(name, circuit, optimizer, compute)
  jitted = compute.jit(step, donate_argnums=0)
  idx = np.asarray(sj.datasets.epoch_indices(key, len(images), BATCH))
  batches = [(images[i], labels[i]) for i in idx]
  state = [sj.init_state(key, circuit, optimizer)]

  def python_loop():
    for batch in batches:
      state[0], metrics = jitted(state[0], batch)
    return metrics

  epoch = compute.jit(sj.sweep.scan_epoch(step, BATCH, unroll=compute.unroll),
                      donate_argnums=0)

  def scanned():
    state[0], metrics = epoch(state[0], key, images, labels)
    return metrics

  swept_compute = compute.for_members(members)
  swept_step = step_for(name, circuit, optimizer, swept_compute)
  shared = _SWEEP_ORDER.value == "shared"
  sweep = swept_compute.jit(jax.vmap(
      sj.sweep.scan_epoch(swept_step, BATCH, unroll=compute.unroll),
      in_axes=(0, None if shared else 0, None, None)), donate_argnums=0)
  keys = jax.random.split(key, members)
  states = [sj.sweep.init_sweep(keys, circuit, optimizer)]

  def swept():
    states[0], metrics = sweep(states[0], key if shared else keys, images,
                               labels)
    return metrics

  row = dict(name=name, loop_ms=_median_ms(python_loop, repeats),
             scan_ms=_median_ms(scanned, repeats))
  row["sweep_ms_per_model"] = _median_ms(swept, repeats) / members
  return row


def table(rows, scale: float) -> str:
  """The rows as Markdown, scaled to a full MNIST epoch."""
  base = next((r for r in rows if r["name"] == "backprop"), rows[0])
  lines = ["| row | loop ms | scan ms | sweep ms/model | scan / backprop "
           "scan | loop / scan | sweep gain |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['name']} | {scale * r['loop_ms']:.1f} | "
        f"{scale * r['scan_ms']:.1f} | {scale * r['sweep_ms_per_model']:.1f} "
        f"| {r['scan_ms'] / base['scan_ms']:.2f}x | "
        f"{r['loop_ms'] / r['scan_ms']:.1f}x | "
        f"{r['scan_ms'] / r['sweep_ms_per_model']:.2f}x |")
  return "\n".join(lines)


def load_images(data_dir):
  """MNIST's uint8 training images and labels, or random ones of its shape."""
  if data_dir:
    try:
      ds = sj.datasets.load("mnist", data_dir)
      return ds.x_train, ds.y_train, ds.source
    except sj.datasets.DatasetNotFoundError as e:
      print(f"warning: {e}; timing random images instead", file=sys.stderr)
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
          rng.integers(0, 10, 60000).astype(np.int32), "random")


def main(argv):
  del argv
  unknown = set(_METHODS.value) - {"backprop", *sj.METHODS, *RATIOS}
  if unknown or "linear" in _METHODS.value:
    raise app.UsageError(f"--methods: unknown rows {sorted(unknown)}")
  try:
    compute = compute_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  images, labels, source = load_images(_DATA_DIR.value)
  if _QUICK.value:
    images, labels = images[:4 * BATCH], labels[:4 * BATCH]
  repeats = 1 if _QUICK.value else _REPEATS.value
  images, labels = jax.device_put(images), jax.device_put(labels)
  rows = [time_row(name, images, labels, compute, repeats, _SWEEP.value)
          for name in _METHODS.value]
  scale = 60000 // BATCH / (len(images) // BATCH)
  cpu = platform.processor() or platform.machine()
  header = (f"{jax.devices()[0].device_kind} ({cpu}), jax {jax.__version__}, "
            f"data {source}, sweep of {_SWEEP.value} ({_SWEEP_ORDER.value} "
            f"order), {compute}")
  print(header + "\n\n" + table(rows, scale))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(dict(header=header, scale=scale, rows=rows), f, indent=1)


if __name__ == "__main__":
  app.run(main)
