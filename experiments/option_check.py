r"""Whether XLA options change what the training programs compute.

    python -m experiments.option_check --xla_option=NAME=VALUE [...]
        [--data_dir=DIR] [--methods=backprop,sal] [--sweep=16] [--quick]

Trains each row one scanned epoch, as one model and as a vmapped sweep, twice
from the same states and data order: compiled with the library's options
(``sal_jax.xla_options.OPTIONS``) and with ``--xla_options`` and
``--xla_option`` instead (the benchmark's flags, which it takes, with
``--methods``, ``--sweep``, ``--sweep_order``, ``--unroll``, ``--batched``,
``--quick`` and ``--json``). Prints the largest difference between the two
runs' weights. An option that only changes when kernels run, such as the
command-buffer scheduling mode, must leave the weights identical; one that
changes how products are tiled changes float rounding, by the amount shown.
Meant for a GPU: a backend ignores options that are not its own.
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax
import numpy as np

from experiments import benchmark
from experiments import speed_flags
from sal_jax import xla_options

FLAGS = flags.FLAGS


def trained_weights(name, circuit, images, labels, members, options):
  """Weights after one scanned epoch of the row (``members`` vmapped models
  when more than one) from the benchmark's initial states and key, compiled
  with ``options``."""
  epoch, state, keys = benchmark.epoch_program(
      name, circuit, None if members == 1 else members, FLAGS.unroll,
      speed_flags.shared_order())
  state, _ = jax.jit(epoch, compiler_options=options)(state, keys, images,
                                                      labels)
  return jax.device_get(state.weights)


def difference(reference, other) -> dict:
  """Largest absolute difference between two weight trees and largest weight
  (both ignoring NaNs: a member that diverged), and whether the trees are
  identical (NaNs in the same places)."""
  pairs = list(zip(jax.tree.leaves(reference), jax.tree.leaves(other)))
  return {
      "max_abs_difference": max(float(np.nanmax(np.abs(a - b), initial=0.0))
                                for a, b in pairs),
      "max_abs_weight": max(float(np.nanmax(np.abs(a), initial=0.0))
                            for a, _ in pairs),
      "identical": all(np.array_equal(a, b, equal_nan=True)
                       for a, b in pairs)}


def main(argv):
  del argv
  circuits = benchmark.row_circuits(FLAGS.methods or ["backprop", "sal"])
  speed_flags.check_json(FLAGS.json)
  speed_flags.check_compiler_options()
  options = speed_flags.compiler_options()
  images, labels, data = benchmark.load_images(FLAGS.quick)
  images, labels = jax.device_put(images), jax.device_put(labels)
  sweep = 2 if FLAGS.quick else FLAGS.sweep
  print(f"{benchmark.header(data)}; library options {xla_options.OPTIONS} "
        f"against {options}")
  print("| method | models | largest weight difference | largest weight | "
        "identical |")
  print("|---|---|---|---|---|")
  rows = []
  with benchmark.matmul_precision():
    for name, circuit in circuits.items():
      for members in (1, sweep):
        row = {"method": name, "models": members, **difference(
            trained_weights(name, circuit, images, labels, members,
                            xla_options.OPTIONS),
            trained_weights(name, circuit, images, labels, members, options))}
        rows.append(row)
        print(f"| {name} | {members} | {row['max_abs_difference']:.3g} | "
              f"{row['max_abs_weight']:.3g} | "
              f"{'yes' if row['identical'] else 'no'} |", flush=True)
  if FLAGS.json:
    benchmark.write_json(FLAGS.json, data, rows,
                         library_options=xla_options.OPTIONS, options=options)


if __name__ == "__main__":
  app.run(main)
