"""Flags the speed tools share: how each row's program is built and compiled.

``benchmark`` (timings) and ``gpu_program`` (a GPU step's kernels and bytes)
read the same three settings, so that their tables can be compared.
"""

from __future__ import annotations

from absl import flags

from sal_jax import xla_options

BATCHED = flags.DEFINE_enum(
    "batched", "auto", ["auto", "on", "off"], "The rules' equal-shaped "
    "products as batched products (Circuit.batched_products); auto: on "
    "accelerators, except in sweeps (loop.sweep_circuit).")
FLATTEN = flags.DEFINE_bool("flatten", False, "Run the optimizer on one "
                            "flattened vector (optim.reference's flatten).")
XLA_OPTIONS = flags.DEFINE_enum(
    "xla_options", "library", ["library", "xla"], "Compiler options of every "
    "jitted program: the library's (sal_jax.xla_options) or XLA's defaults.")


def batched_products() -> bool | None:
  """``--batched`` as ``Circuit.batched_products``."""
  return {"auto": None, "on": True, "off": False}[BATCHED.value]


def compiler_options() -> dict:
  """``--xla_options`` as ``jax.jit``'s ``compiler_options``."""
  return dict(xla_options.OPTIONS) if XLA_OPTIONS.value == "library" else {}


def settings() -> dict:
  """The three settings, as the tools print them and write them to JSON."""
  return {"batched": BATCHED.value, "flatten": FLATTEN.value,
          "xla_options": XLA_OPTIONS.value}
