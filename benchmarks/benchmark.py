r"""Throughput of one epoch of the reference MLP (784-200-200-200-10, batch 256).

    python -m experiments.benchmark [--quick] [--json=FILE] [--data_dir=DIR]

Rows: backprop by ``jax.grad`` + the reference optax chain (the yardstick),
and the circuit's sgd, fa, kp and sal (downstream width ratio 1, √5, √8), each
run four ways: a Python loop over the jitted step fed from host memory by
``datasets.iterate`` (the usual per-step loop), the same loop fed batches
already on the device (dispatch cost only), one scanned epoch, and a vmapped
sweep of 16 models (each shuffling the data its own way, or with
``--sweep_order=shared`` all in one order, as ``loop.sweep_epoch`` does given
one key). Times are medians over repeats after a warm-up; "compile s" is how
long the scanned epoch and the sweep took to compile, what each new shape
(widths, ratio, depth: a sweep's outer loop) costs before it trains. "ops/step"
counts the top-level operations of the compiled step (fusions, matrix-product
library calls, copies): on a GPU each is a kernel launch, which is what a step
of this small MLP costs; ``--list_ops`` prints them. "GFLOP/step" and
"MB/step" are XLA's own cost estimate of one compiled step (floating-point
operations, bytes its operations read and write), per model. A benchmark, not
a test: timings on shared machines are noisy, so compare ratios within one run.
"""

from __future__ import annotations

import pathlib
import platform
import statistics
import time
from typing import Callable, NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import files
from experiments import hlo_kernels
from experiments import reference_mlp
from experiments import speed_flags
from experiments.reference_mlp import BATCH, CIRCUITS, WIDTHS
import sal_jax as sj
from sal_jax import datasets
from sal_jax import loop
from sal_jax import xla_options

_QUICK = flags.DEFINE_bool("quick", False, "A few batches, one repeat.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Directory with MNIST in a format datasets.load reads "
    "locally; random data of MNIST's shape when absent (with a warning if "
    "the flag was given).")
_SWEEP = flags.DEFINE_integer("sweep", 16, "Models in the vmapped sweep.",
                              lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per mode (median).",
                                lower_bound=1)
_UNROLL = flags.DEFINE_integer("unroll", 1, "Steps per iteration of the "
                               "scanned loop (lax.scan's unroll).",
                               lower_bound=1)
_LIST_OPS = flags.DEFINE_bool(
    "list_ops", False, "Print each row's compiled step, one line per "
    "top-level operation, instead of timing it.")
_PRECISION = flags.DEFINE_string(
    "precision", "", "jax.default_matmul_precision for the whole run, e.g. "
    "highest (full float32), tensorfloat32 or BF16_BF16_F32 (bfloat16 "
    "operands, float32 sums); empty: the backend's default.")
_METHODS = flags.DEFINE_list(
    "methods", None, "Rows to run (default all): backprop, sgd, fa, kp, sal, "
    "sal_sqrt5, sal_sqrt8.")

def _jit(fn):
  """``fn`` jitted with its first argument (the state) donated, compiled
  with ``--xla_options`` and ``--xla_option``."""
  return jax.jit(fn, donate_argnums=0,
                 compiler_options=speed_flags.compiler_options())


def _jit_step(name, circuit, optimizer):
  """The row's step function, jitted."""
  return _jit(reference_mlp.step_fn(name, circuit, optimizer))


def epoch_fn(name, circuit, optimizer, unroll):
  """A scanned epoch built on the row's own step function."""
  step = reference_mlp.step_fn(name, circuit, optimizer)
  return loop.scan_epoch(step, BATCH, unroll=unroll)


def step_ops(compiled) -> list[str]:
  """A compiled step's kernels (``hlo_kernels``), one line each: opcode,
  result shape and the JAX operation it came from."""
  return [f"{k.opcode:12s} {k.shape[:48]:48s} {k.source}"
          for k in hlo_kernels.kernels(compiled.as_text())]


def step_cost(compiled) -> tuple[float, float]:
  """XLA's estimate of a compiled step's (GFLOP, MB read and written)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0]
  return cost.get("flops", 0.0) / 1e9, cost.get("bytes accessed", 0.0) / 1e6


def compile_step(step, circuit, optimizer):
  """A row's jitted ``step``, compiled for a batch of MNIST's shape (calling
  ``step`` on such a batch then reuses this compilation)."""
  state = sj.init_state(jax.random.key(0), circuit, optimizer)
  batch = (jnp.zeros((BATCH, WIDTHS[0])), jnp.zeros((BATCH,), jnp.int32))
  return step.lower(state, batch).compile()


def list_ops(name, circuit):
  """``step_ops`` of one row's step."""
  optimizer = speed_flags.optimizer(circuit)
  return step_ops(compile_step(_jit_step(name, circuit, optimizer), circuit,
                               optimizer))


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _median_time(fn, repeats) -> float:
  fn()  # warm-up (compiles what is not compiled yet)
  return statistics.median(_timed(fn) for _ in range(repeats))


def _compile_seconds(jitted, *args) -> float:
  """Seconds ``jitted`` takes to compile for ``args`` (not consumed); calls
  with such arguments then reuse the executable."""
  return _timed(lambda: jitted.lower(*args).compile())


def _peak_memory():
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def epoch_program(name, circuit, members, unroll, shared_order):
  """``(epoch, state, key)``: the row's scanned epoch, not jitted, with the
  initial state and key it starts from. ``members``: None for one model, N
  for a vmapped sweep of N (states and keys then stacked; one key for all if
  ``shared_order``)."""
  optimizer = speed_flags.optimizer(circuit)
  key = jax.random.key(0)
  if members is None:
    return (epoch_fn(name, circuit, optimizer, unroll),
            sj.init_state(key, circuit, optimizer), key)
  epoch = jax.vmap(
      epoch_fn(name, loop.sweep_circuit(circuit, members), optimizer, unroll),
      in_axes=(0, None if shared_order else 0, None, None))
  states = loop.init_sweep(jax.random.split(key, members), circuit, optimizer)
  return epoch, states, key if shared_order else jax.random.split(key, members)


class EpochRuns(NamedTuple):
  """Runs of one scanned epoch, of one model and of a sweep: each call trains
  on from the last and waits for it. ``compile_s``: seconds each program took
  to compile (before the first call)."""
  scan: Callable[[], None]
  sweep: Callable[[], None]
  compile_s: tuple[float, float]


def epoch_runs(name, circuit, images, labels, sweep, unroll,
               shared_order) -> EpochRuns:
  """One model's scanned epoch and a vmapped sweep of ``sweep`` models' (one
  data order for all if ``shared_order``), on ``images`` and ``labels``
  already on the device, compiled."""
  epoch, state, key = epoch_program(name, circuit, None, unroll, shared_order)
  sweep_epoch, states, sweep_keys = epoch_program(name, circuit, sweep, unroll,
                                                  shared_order)
  epoch, sweep_epoch = _jit(epoch), _jit(sweep_epoch)
  compile_s = (_compile_seconds(epoch, state, key, images, labels),
               _compile_seconds(sweep_epoch, states, sweep_keys, images,
                                labels))
  holder = {"state": state, "states": states}

  def run_scan():
    holder["state"] = jax.block_until_ready(
        epoch(holder["state"], key, images, labels)[0])

  def run_sweep():
    holder["states"] = jax.block_until_ready(
        sweep_epoch(holder["states"], sweep_keys, images, labels)[0])

  return EpochRuns(run_scan, run_sweep, compile_s)


def bench_row(name, circuit, host_data, repeats, sweep, unroll):
  optimizer = speed_flags.optimizer(circuit)
  host_images, host_labels = host_data
  images, labels = jax.device_put(host_images), jax.device_put(host_labels)
  n = images.shape[0]
  steps = n // BATCH
  key = jax.random.key(0)
  idx = np.asarray(datasets.epoch_indices(key, n, BATCH))
  batches = [datasets.preprocess(images[i], labels[i]) for i in idx]
  step = _jit_step(name, circuit, optimizer)
  runs = epoch_runs(name, circuit, images, labels, sweep, unroll,
                    speed_flags.shared_order())
  holder = {"state": sj.init_state(key, circuit, optimizer)}
  compiled = compile_step(step, circuit, optimizer)
  gflop, megabytes = step_cost(compiled)

  def run_host_loop():
    state = holder["state"]
    for b in datasets.iterate(host_images, host_labels, BATCH, key):
      state, _ = step(state, b)
    holder["state"] = jax.block_until_ready(state)

  def run_loop():
    state = holder["state"]
    for b in batches:
      state, _ = step(state, b)
    holder["state"] = jax.block_until_ready(state)

  t_host_loop = _median_time(run_host_loop, repeats)
  t_loop = _median_time(run_loop, repeats)
  t_scan = _median_time(runs.scan, repeats)
  t_sweep = _median_time(runs.sweep, repeats)
  examples = steps * BATCH
  return {"method": name, "steps": steps,
          "ops_per_step": len(step_ops(compiled)),
          "gflop_per_step": gflop, "mb_per_step": megabytes,
          "unroll": unroll,
          "host_loop_ms": 1e3 * t_host_loop,
          "loop_ms": 1e3 * t_loop, "scan_ms": 1e3 * t_scan,
          "sweep_ms": 1e3 * t_sweep, "sweep_size": sweep,
          "scan_compile_s": runs.compile_s[0],
          "sweep_compile_s": runs.compile_s[1],
          "scan_examples_per_s": examples / t_scan,
          "sweep_examples_per_s": sweep * examples / t_sweep,
          "host_loop_over_scan": t_host_loop / t_scan,
          "loop_over_scan": t_loop / t_scan,
          "sweep_gain": sweep * t_scan / t_sweep,
          "peak_bytes": _peak_memory()}


def _ratio(value):
  return "" if value is None else f"{value:.2f}x"


def row_circuits(names):
  """The rows' circuits, with ``--batched`` and ``--update_dtype`` applied;
  UsageError for a name that is not a row."""
  unknown = sorted(set(names) - set(CIRCUITS))
  if unknown:
    raise app.UsageError(f"unknown --methods {unknown}; expected {list(CIRCUITS)}")
  return {name: speed_flags.row_circuit(CIRCUITS[name]) for name in names}


def matmul_precision():
  """``--precision`` as a context manager; UsageError if jax rejects it."""
  try:
    return xla_options.matmul_precision(_PRECISION.value)
  except ValueError as e:
    raise app.UsageError(f"bad --precision {e}") from None


def settings() -> dict:
  """The run's settings, as the speed tools print them and write them to
  JSON."""
  return {"unroll": _UNROLL.value,
          **speed_flags.settings(),
          "precision": _PRECISION.value or "default"}


def write_json(path, data, rows, **extra):
  """Writes ``rows`` to ``path`` with the device, JAX version, data, ``extra``
  and the run's ``settings``, atomically."""
  device = jax.local_devices()[0]
  files.write_json_atomically(
      pathlib.Path(path),
      {"device": f"{device.platform}:{device.device_kind}",
       "jax": jax.__version__, "data": data, **extra, **settings(),
       "rows": rows})


def header(data: str) -> str:
  """The first line of a speed tool's output: device, JAX, machine, data."""
  device = jax.local_devices()[0]
  return (f"# {device.platform}: {device.device_kind}, jax {jax.__version__}, "
          f"{platform.node()}; {data}")


def load_images(quick):
  """``--data_dir``'s MNIST training images and labels (random ones of its
  shape when absent; 8 batches if ``quick``), and which of the two."""
  try:
    ds = datasets.load("mnist", _DATA_DIR.value, source="local")
    images, labels, data = ds.x_train, ds.y_train, "MNIST"
  except (datasets.DatasetNotFoundError, ValueError) as e:
    if _DATA_DIR.value is not None:  # asked for, so say why it is not used
      logging.warning("timing random data of MNIST's shape: %s", e)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 60000).astype(np.int32)
    data = "random data of MNIST's shape"
  if quick:
    images, labels = images[:8 * BATCH], labels[:8 * BATCH]
  return images, labels, data


def main(argv):
  del argv
  circuits = row_circuits(_METHODS.value or list(CIRCUITS))
  speed_flags.check_json(_JSON.value)
  speed_flags.check_compiler_options()
  with matmul_precision():
    if _LIST_OPS.value:
      for name, circuit in circuits.items():
        ops = list_ops(name, circuit)
        print(f"## {name}: {len(ops)} operations per step")
        print("\n".join(ops))
      return
    run_table(circuits)


def run_table(circuits):
  """Times every row, prints the table, writes ``--json``."""
  quick = _QUICK.value
  images, labels, data = load_images(quick)
  sweep = 2 if quick else _SWEEP.value
  repeats = 1 if quick else _REPEATS.value
  print(f"{header(data)}, {images.shape[0] // BATCH} steps/epoch; "
        + ", ".join(f"{k} {v}" for k, v in settings().items()))
  rows = []
  columns = ("| method | ops/step | GFLOP/step | MB/step | host loop ms | "
            f"device loop ms | scan ms | sweep of {sweep} ms | scan ex/s | "
            "host loop/scan | device loop/scan | sweep gain | "
            "scan vs backprop | scan / sweep compile s | peak MiB |")
  print(columns)
  print("|" + "---|" * (columns.count("|") - 1))
  for name, circuit in circuits.items():
    row = bench_row(name, circuit, (images, labels), repeats, sweep,
                    _UNROLL.value)
    reference = [r["scan_ms"] for r in rows if r["method"] == "backprop"]
    row["scan_vs_backprop"] = (row["scan_ms"] / reference[0] if reference
                               else None)
    rows.append(row)
    peak = (f"{row['peak_bytes'] / 2**20:.0f}" if row["peak_bytes"] else "")
    print(f"| {name} | {row['ops_per_step']} | {row['gflop_per_step']:.3f} | "
          f"{row['mb_per_step']:.1f} | {row['host_loop_ms']:.1f} | "
          f"{row['loop_ms']:.1f} | {row['scan_ms']:.1f} | "
          f"{row['sweep_ms']:.1f} | {row['scan_examples_per_s']:.0f} | "
          f"{_ratio(row['host_loop_over_scan'])} | "
          f"{_ratio(row['loop_over_scan'])} | {_ratio(row['sweep_gain'])} | "
          f"{_ratio(row['scan_vs_backprop'])} | "
          f"{row['scan_compile_s']:.1f} / {row['sweep_compile_s']:.1f} | "
          f"{peak} |", flush=True)
  if _JSON.value:
    write_json(_JSON.value, data, rows)


if __name__ == "__main__":
  app.run(main)
