"""Flags the speed tools share: how each row's program is built and compiled.

``benchmark`` (timings) and ``gpu_program`` (a GPU step's kernels and bytes)
read the same settings, so that their tables can be compared.
"""

from __future__ import annotations

import dataclasses
import pathlib

from absl import app
from absl import flags
import jax
import optax

import sal_jax as sj
from sal_jax import xla_options

BATCHED = flags.DEFINE_enum(
    "batched", "auto", ["auto", "on", "off"], "The rules' equal-shaped "
    "products as batched products (Circuit.batched_products); auto: on "
    "accelerators, except in sweeps (loop.sweep_circuit).")
XLA_OPTIONS = flags.DEFINE_enum(
    "xla_options", "library", ["library", "xla"], "Compiler options of every "
    "jitted program: the library's (sal_jax.xla_options) or XLA's defaults.")
SWEEP_ORDER = flags.DEFINE_enum(
    "sweep_order", "own", ["own", "shared"], "A sweep's data order: each "
    "member its own shuffle (seeds), or one shared by all (a grid over "
    "hyperparameters on one seed).")
UPDATE_DTYPE = flags.DEFINE_enum(
    "update_dtype", "float32", list(sj.UPDATE_DTYPES), "The dtype the "
    "circuit's rules write their updates G in (Circuit.update_dtype; the "
    "backprop row's gradients are rounded to it too).")
MOMENTUM_DTYPE = flags.DEFINE_enum(
    "momentum_dtype", "float32", list(sj.UPDATE_DTYPES), "The dtype the "
    "optimizer stores its momentum in (optim.reference's momentum_dtype).")
XLA_OPTION = flags.DEFINE_multi_string(
    "xla_option", [], "NAME=VALUE: one more XLA compiler option on top of "
    "--xla_options (repeatable), e.g. "
    "xla_gpu_experimental_gemm_fusion_v2=true (true/false: booleans; "
    "numbers: numbers).")


def row_circuit(circuit: sj.Circuit) -> sj.Circuit:
  """A row's circuit with ``--batched`` and ``--update_dtype`` applied."""
  return dataclasses.replace(
      circuit,
      batched_products={"auto": None, "on": True, "off": False}[BATCHED.value],
      update_dtype=UPDATE_DTYPE.value)


def optimizer(circuit: sj.Circuit) -> optax.GradientTransformation:
  """The reference chain, its momentum stored in ``--momentum_dtype``."""
  return sj.reference_optimizer(circuit, momentum_dtype=MOMENTUM_DTYPE.value)


def shared_order() -> bool:
  """Whether ``--sweep_order`` gives a sweep's members one data order."""
  return SWEEP_ORDER.value == "shared"


def compiler_options() -> dict:
  """``--xla_options`` and ``--xla_option`` as ``jax.jit``'s
  ``compiler_options``."""
  options = (dict(xla_options.OPTIONS) if XLA_OPTIONS.value == "library"
             else {})
  try:
    options.update(xla_options.parse_option(text)
                   for text in XLA_OPTION.value)
  except ValueError as e:
    raise app.UsageError(f"--xla_option {e}") from None
  return options


def check_json(path: str | None) -> None:
  """Raises UsageError, before anything runs, if ``--json`` names a file in a
  directory that does not exist."""
  if path and not pathlib.Path(path).parent.is_dir():
    raise app.UsageError(f"--json {path}: its directory does not exist")


def check_compiler_options() -> None:
  """Raises UsageError, before anything runs, if XLA rejects an option."""
  try:
    jax.jit(lambda x: x, compiler_options=compiler_options()).lower(
        0.0).compile()
  except jax.errors.JaxRuntimeError as e:
    raise app.UsageError(
        f"--xla_option: {str(e).splitlines()[0]}") from None


def settings() -> dict:
  """The settings, as the tools print them and write them to JSON (with
  the library's options that ``SAL_JAX_XLA_OPTIONS`` changed, if any)."""
  settings = {"sweep_order": SWEEP_ORDER.value, "batched": BATCHED.value,
              "update_dtype": UPDATE_DTYPE.value,
              "momentum_dtype": MOMENTUM_DTYPE.value,
              "xla_options": XLA_OPTIONS.value,
              "xla_option": list(XLA_OPTION.value)}
  if xla_options.ENVIRONMENT_OPTIONS:
    settings[xla_options.ENVIRONMENT_VARIABLE] = xla_options.ENVIRONMENT_OPTIONS
  return settings
