"""XLA options for the library's jitted programs (RESULTS.md, "Speed").

All three concern XLA:GPU; other backends ignore them (the CPU program is
unchanged), but every backend checks that XLA knows them, so a rename in a
future XLA fails loudly, on CPU too.

- ``xla_gpu_experimental_force_split_k = 1``: by default XLA compiles each
  product of this network as padding, partial products over slices of the
  contraction and a reduction. Off, SAL's step launches 47 kernels instead
  of 58 and its scanned epoch took 21.4 ms instead of 23.3 on an H200
  (backprop's 13.5 instead of 14.3; a sweep of 64 unchanged).
- ``xla_gpu_dot_merger_threshold_mb = 0``: XLA merges products that share an
  operand into one product over a concatenated copy of the others. In a
  vmapped sweep those copies are 13% of the step's memory traffic (XLA:GPU's
  compile for an H100: 2.33 GB per step of 64 SAL members with merging, 2.04
  GB without, 43 kernels either way; 2.17 and 1.88 GB when the members share
  one batch); not timed on a GPU on its own.
- ``xla_gpu_command_buffer_scheduling_mode = CONCURRENT``: XLA:GPU replays
  runs of kernels as CUDA graphs; this mode lets the graph run kernels that do
  not depend on each other at the same time (XLA's default, LHS, overlaps
  only what its latency-hiding schedule overlaps: collectives with
  computation). A step of this small MLP is many small kernels that each
  leave most of the GPU idle, so on an H200 (GPU run 5) SAL's scanned epoch
  took 17.5 ms instead of 20.6, backprop's 12.4 instead of 14.1, a sweep of
  16 SAL models 56.5 instead of 85.6 and one of 64 170.5 instead of 190.3
  (peak memory 906 MiB instead of 791: buffers in use at the same time cannot
  share memory; a sweep's scratch grows from about 0.8 to 1.2 times its
  state, in XLA's compile for an H100). It trains bitwise the weights LHS
  trains (GPU run 6: one model and a sweep of 16, backprop and SAL). Its
  sibling CONCURRENT_REGIONS failed to compile these programs (jax 0.11.2).

``MULTI_DEVICE_OPTIONS``, for the data-parallel programs of ``parallel``
(their steps reduce across devices), leaves the scheduling mode at XLA's
default, which is built to overlap such collectives with computation; the
concurrent mode has not been timed there. (A sweep whose members are split
over devices runs each device's members independently, with ``OPTIONS``.)
Pass either to ``jax.jit`` as ``compiler_options``; ``{}`` gives XLA's
defaults.

Both are read once, at import: the environment variable
``SAL_JAX_XLA_OPTIONS``, whitespace-separated ``NAME=VALUE`` entries, sets
options on top of them, e.g. ``xla_gpu_command_buffer_scheduling_mode=LHS``
for XLA's own schedule, should the concurrent one misbehave on your GPU.
(XLA_FLAGS cannot do that: a program's compiler options override it; seen on
CPU with ``xla_dump_to``.)
``matmul_precision`` checks a float32 matrix-product precision up front.
"""

from __future__ import annotations

import os

import jax

ENVIRONMENT_VARIABLE = "SAL_JAX_XLA_OPTIONS"


def parse_option(text: str) -> tuple[str, bool | int | float | str]:
  """``"name=value"`` as ``(name, value)``, the value typed for XLA
  (true/false: booleans; numbers: numbers; the rest: strings)."""
  name, sep, value = text.partition("=")
  if not sep or not name or not value:
    raise ValueError(f"{text!r}: expected NAME=VALUE")
  if value.lower() in ("true", "false"):
    return name, value.lower() == "true"
  for parse in (int, float):
    try:
      return name, parse(value)
    except ValueError:
      pass
  return name, value


def from_environment(environ=os.environ) -> dict:
  """The options ``SAL_JAX_XLA_OPTIONS`` sets in ``environ`` (none when it is
  unset)."""
  try:
    return dict(parse_option(entry)
                for entry in environ.get(ENVIRONMENT_VARIABLE, "").split())
  except ValueError as e:
    raise ValueError(f"{ENVIRONMENT_VARIABLE}: {e}") from None


_PRODUCTS = {
    "xla_gpu_experimental_force_split_k": 1,
    "xla_gpu_dot_merger_threshold_mb": 0,
}
ENVIRONMENT_OPTIONS = from_environment()  # as read at import
MULTI_DEVICE_OPTIONS = {**_PRODUCTS, **ENVIRONMENT_OPTIONS}
OPTIONS = {**_PRODUCTS,
           "xla_gpu_command_buffer_scheduling_mode": "CONCURRENT",
           **ENVIRONMENT_OPTIONS}


def matmul_precision(value: str | None):
  """``jax.default_matmul_precision(value)``, with ``value`` checked now.

  None or "" is the backend's default (TF32 on recent NVIDIA GPUs); e.g.
  "highest" is full float32, and "BF16_BF16_F32" rounds the operands to
  bfloat16 and sums in float32, faster on a GPU (on an H200, SAL's sweep of
  64 about 10% faster, SAL's Table 1 cell within its spread: RESULTS.md,
  "Speed"). XLA:CPU computes the library's float32 products in float32
  whatever is asked (a SAL step under "BF16_BF16_F32" came out bitwise the
  same), and rejects that algorithm for a product with a 1 x 1 result.
  Raises ValueError naming a value JAX rejects, before anything is traced.
  """
  value = value or None
  try:
    with jax.default_matmul_precision(value):
      pass
  except ValueError as e:
    raise ValueError(f"{value!r}: {e}") from None
  return jax.default_matmul_precision(value)
