r"""Kernels and memory traffic of a training step compiled for a GPU, without one.

    pip install "jax-cuda12-plugin==$JAX_VERSION" "jax-cuda12-pjrt==$JAX_VERSION"
    python -m experiments.gpu_program [--methods=backprop,sal] [--models=1,4,16,64]
        [--sweep_order=own|shared] [--batched=auto|on|off]
        [--xla_options=library|xla]
        [--xla_option=NAME=VALUE ...]
        [--update_dtype=float32|bfloat16] [--momentum_dtype=float32|bfloat16]
        [--target=FILE] [--list_kernels=N] [--json=FILE]

XLA:GPU compiles the step of the reference MLP (784-200-200-200-10, batch 256)
for the GPU that ``--target`` describes (default: an H100,
``experiments/gpu_targets/h100.txtpb``) through JAX's CUDA plugin, which needs
no GPU, driver or CUDA libraries. ``--models=1`` is one model as
``make_step`` compiles it; N > 1 is a vmapped sweep of N, as ``loop.sweep_epoch``
runs it: each member a batch of its own (seeds), or with
``--sweep_order=shared`` one batch for all (a grid on one seed). Each row
gives the compiled step's kernels (launches) and the bytes they read and
write (``hlo_kernels``), per step and per model, and its longest
chain of kernels each waiting for the one before, with the bytes those move:
kernels that may run at the same time (the library's command-buffer
schedule, ``sal_jax.xla_options``) still take at least that chain's time.
Each step gathers its batch from uint8 images on the device, as in a scanned
epoch, from a dataset of just the examples it reads (so the gather is
charged its real traffic). It also gives the device memory XLA assigned: the
state the step reads (updated in place; with those examples) and its scratch
buffers; a scanned epoch's peak is about their sum plus the dataset.

A measurement of the program, not of its speed: what a GPU step of this small
MLP costs is mostly its launches (one model) or its memory traffic (many).
Without a GPU XLA cannot autotune, so it tiles products by its defaults.
Checked against the H200 (RESULTS.md, "Speed"): compiled here for the H100
with the options the H200 ran (``--batched=on --xla_options=xla``), backprop's
step has the 35 kernels and SAL's the 58 (47 with split-K off) that the H200
compiled.
"""

from __future__ import annotations

import dataclasses
import pathlib

from absl import app
from absl import flags
import jax
from jax.experimental import topologies
import jax.numpy as jnp
import optax

from experiments import files
from experiments import hlo_kernels
from experiments import reference_mlp
from experiments import speed_flags
import sal_jax as sj
from sal_jax import loop

_TARGETS = pathlib.Path(__file__).parent / "gpu_targets"

_METHODS = flags.DEFINE_list(
    "methods", ["backprop", "sal"],
    f"Rows to compile: any of {list(reference_mlp.CIRCUITS)}.")
_MODELS = flags.DEFINE_list(
    "models", ["1", "4", "16", "64"],
    "Models per program: 1 is one model, N > 1 a vmapped sweep of N.")
_TARGET = flags.DEFINE_string(
    "target", str(_TARGETS / "h100.txtpb"),
    "The GPU, as an XLA GpuTargetConfigProto text file.")
_LIST_KERNELS = flags.DEFINE_integer(
    "list_kernels", 0, "Also print each row's N kernels that move the most "
    "bytes.", lower_bound=0)
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this file.")


def target_device(target_file: pathlib.Path):
  """A compile-only device for the GPU described in ``target_file``."""
  try:
    topology = topologies.get_topology_desc(
        platform="cuda", topology="1x1x1",
        target_config=target_file.read_text())
  except (RuntimeError, NotImplementedError) as e:
    raise app.UsageError(
        f"cannot compile for a GPU here ({type(e).__name__}: "
        f"{str(e).splitlines()[0]}); install JAX's CUDA compiler plugin: "
        f'pip install "jax-cuda12-plugin=={jax.__version__}" '
        f'"jax-cuda12-pjrt=={jax.__version__}"') from e
  return topology.devices[0]


def gpu_circuit(circuit: sj.Circuit, models: int) -> sj.Circuit:
  """The circuit a program of ``models`` models runs on a GPU."""
  circuit = loop.sweep_circuit(circuit, models)
  if circuit.batched_products is None:  # as on an accelerator
    circuit = dataclasses.replace(circuit, batched_products=True)
  return circuit


def compile_step(device, name: str, circuit: sj.Circuit, models: int,
                 compiler_options: dict):
  """The row's step, compiled as ``compile_program`` compiles a step."""
  optimizer = speed_flags.optimizer(circuit)
  return compile_program(device, reference_mlp.step_fn(name, circuit,
                                                       optimizer),
                         circuit, optimizer, models, compiler_options)


def compile_program(device, step, circuit: sj.Circuit,
                    optimizer: optax.GradientTransformation, models: int,
                    compiler_options: dict):
  """``step(state, batch)`` of the reference MLP (vmapped over ``models`` if
  more than one, its states from ``circuit`` and ``optimizer``) as a scanned
  epoch runs it (``loop.gathered_step``): its batch gathered from uint8
  images on the device and preprocessed, then the step; compiled."""
  gathered_step = loop.gathered_step(step)
  key = jax.random.key(0)
  own_batches = models > 1 and not speed_flags.shared_order()
  batches = models if own_batches else 1
  # Only the examples the step reads, so that the gather's traffic is exact.
  data = (jnp.zeros((batches * reference_mlp.BATCH, reference_mlp.WIDTHS[0]),
                    jnp.uint8),
          jnp.zeros((batches * reference_mlp.BATCH,), jnp.int32),
          jnp.zeros(((models,) if own_batches else ()) + (reference_mlp.BATCH,),
                    jnp.int32))
  with jax.default_device(jax.devices("cpu")[0]):  # shapes only
    if models == 1:
      state = sj.init_state(key, circuit, optimizer)
    else:
      state = loop.init_sweep(jax.random.split(key, models), circuit,
                              optimizer)
      gathered_step = jax.vmap(
          gathered_step, in_axes=(0, None, None, 0 if own_batches else None))
  sharding = jax.sharding.SingleDeviceSharding(device)
  shapes = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      (state, *data))
  jitted = jax.jit(gathered_step, donate_argnums=0,
                   compiler_options=compiler_options)
  return jitted.trace(*shapes).lower(lowering_platforms=("cuda",)).compile()


def program_row(device, name: str, models: int) -> dict:
  """One row: the compiled step's kernels and traffic, or why it failed."""
  circuit = gpu_circuit(
      speed_flags.row_circuit(reference_mlp.CIRCUITS[name]), models)
  row = {"method": name, "models": models,
         "batched_products": circuit.batched_products}
  try:
    compiled = compile_step(device, name, circuit, models,
                            speed_flags.compiler_options())
  except jax.errors.JaxRuntimeError as e:  # XLA:GPU without autotuning
    return {**row, "error": str(e).splitlines()[0][:160]}
  kernels = hlo_kernels.kernels(compiled.as_text())
  traffic = sum(k.bytes for k in kernels)
  chain = hlo_kernels.longest_chain(kernels)
  memory = compiled.memory_analysis()
  return {**row, "kernels_per_step": len(kernels),
          "longest_chain": len(chain),
          "longest_chain_mb": sum(k.bytes for k in chain) / 1e6,
          "mb_per_step": traffic / 1e6, "mb_per_step_per_model":
          traffic / 1e6 / models,
          "state_mb": memory.argument_size_in_bytes / 1e6,
          "scratch_mb": memory.temp_size_in_bytes / 1e6,
          "heaviest": [dataclasses.asdict(k) for k in
                       sorted(kernels, key=lambda k: -k.bytes)
                       [:_LIST_KERNELS.value]]}


def _models():
  try:
    models = [int(m) for m in _MODELS.value]
  except ValueError:
    models = [0]
  if any(m < 1 for m in models):
    raise app.UsageError(
        f"--models must be positive integers, got {_MODELS.value}")
  return models


def main(argv):
  del argv
  # Run on the CPU: the GPU is only compiled for (the CUDA plugin registers
  # its compiler only when it is not asked to drive a GPU that is absent).
  jax.config.update("jax_platforms", "cpu")
  unknown = sorted(set(_METHODS.value) - set(reference_mlp.CIRCUITS))
  if unknown:
    raise app.UsageError(
        f"unknown --methods {unknown}; expected {list(reference_mlp.CIRCUITS)}")
  models = _models()
  target = pathlib.Path(_TARGET.value)
  if not target.is_file():
    raise app.UsageError(f"--target {target}: no such file")
  speed_flags.check_json(_JSON.value)
  speed_flags.check_compiler_options()
  device = target_device(target)
  settings = {"target": target.name, "device": device.device_kind,
              "jax": jax.__version__, **speed_flags.settings()}
  print("# " + ", ".join(f"{k} {v}" for k, v in settings.items()))
  print("| method | models | rule products | kernels/step | longest chain | "
        "MB/step | MB on the chain | MB/step per model | state MB | "
        "scratch MB |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  rows = []
  for name in _METHODS.value:
    for m in models:
      row = program_row(device, name, m)
      rows.append(row)
      products = ("" if name == "backprop"  # no rules
                  else "batched" if row["batched_products"] else "per matrix")
      cells = (("compile failed: " + row["error"][:60],) + ("",) * 6
               if "error" in row else
               (row["kernels_per_step"], row["longest_chain"],
                f"{row['mb_per_step']:.1f}",
                f"{row['longest_chain_mb']:.1f}",
                f"{row['mb_per_step_per_model']:.1f}",
                f"{row['state_mb']:.0f}", f"{row['scratch_mb']:.0f}"))
      print(f"| {name} | {m} | {products} | "
            + " | ".join(str(c) for c in cells) + " |", flush=True)
      for k in row.get("heaviest", []):
        print(f"    {(k['bytes_in'] + k['bytes_out']) / 1e6:9.1f} MB  "
              f"{k['opcode']:8s} {k['shape'][:44]:44s} {k['source'][-48:]}")
  if _JSON.value:
    files.write_json_atomically(pathlib.Path(_JSON.value),
                                {**settings, "rows": rows})


if __name__ == "__main__":
  app.run(main)
