"""How a program is computed, apart from what it computes.

A ``Compute`` holds every setting that changes speed or float rounding but not
the model: whether the rules' equal-shaped products run batched, the dtypes G
and the momentum are stored in, the float32 matrix-product precision and
XLA's compiler options. Like the circuit it is static: it is bound where a
program is built (``train.make_step``, ``train.evaluate``,
``sweep.sweep_epoch``, ``optim.reference``). The defaults are those the
benchmark found fastest on each backend (RESULTS.md, "Speed"); on CPU they
leave every program as plain float32 XLA.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax

STORAGE_DTYPES = ("float32", "bfloat16")

# Options for single-device programs; XLA:GPU reads them, other backends only
# check that XLA knows them.
GPU_OPTIONS = (
    ("xla_gpu_command_buffer_scheduling_mode", "CONCURRENT"),
    ("xla_gpu_dot_merger_threshold_mb", 0),
    ("xla_gpu_experimental_force_split_k", 1),
)
# Programs that reduce across devices keep XLA's own scheduling, which is
# built to overlap collectives with computation.
MULTI_DEVICE_OPTIONS = tuple(
    (k, v) for k, v in GPU_OPTIONS
    if k != "xla_gpu_command_buffer_scheduling_mode")


def parse_option(text: str) -> tuple[str, bool | int | float | str]:
  """``"name=value"`` as ``(name, value)``, the value typed as XLA expects
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


def parse_options(text: str) -> tuple[tuple[str, Any], ...]:
  """Whitespace-separated ``NAME=VALUE`` entries, for ``xla_options``."""
  return tuple(parse_option(entry) for entry in text.split())


@dataclasses.dataclass(frozen=True)
class Compute:
  """Static compute settings of a program; hashable.

  Attributes:
    batched_products: form the rules' equal-shaped outer products as one
      batched product (the same values up to float rounding). None: on
      accelerators for one model, per matrix on CPU and in vmapped sweeps.
    update_dtype: the dtype the rules write G in, one of ``STORAGE_DTYPES``;
      None is the weights' (float32). The products sum in float32 first.
    momentum_dtype: the dtype ``optim.reference`` stores the momentum in
      (accumulated in float32); None is the weights'.
    matmul_precision: ``jax.default_matmul_precision`` for every product of
      the program, e.g. "highest" or "BF16_BF16_F32"; None: the backend's.
    xla_options: ``(name, value)`` pairs set on top of the library's
      ``GPU_OPTIONS`` (or ``MULTI_DEVICE_OPTIONS``), e.g. from
      ``parse_options("xla_gpu_command_buffer_scheduling_mode=LHS")``.
    unroll: steps per iteration of a scanned epoch (``lax.scan``'s).
  """
  batched_products: bool | None = None
  update_dtype: str | None = None
  momentum_dtype: str | None = None
  matmul_precision: str | None = None
  xla_options: tuple[tuple[str, Any], ...] = ()
  unroll: int = 1

  def __post_init__(self):
    if isinstance(self.xla_options, dict):
      object.__setattr__(self, "xla_options",
                         tuple(sorted(self.xla_options.items())))
    object.__setattr__(self, "xla_options", tuple(
        (str(k), v) for k, v in self.xla_options))
    if self.batched_products not in (None, True, False):
      raise ValueError("batched_products must be True, False or None (by "
                       f"backend), got {self.batched_products!r}")
    for name in ("update_dtype", "momentum_dtype"):
      value = getattr(self, name)
      if value is not None and value not in STORAGE_DTYPES:
        raise ValueError(f"unknown {name} {value!r}; expected one of "
                         f"{STORAGE_DTYPES} or None (the weights' dtype)")
    if (not isinstance(self.unroll, int) or isinstance(self.unroll, bool)
        or self.unroll < 1):
      raise ValueError(f"unroll must be a positive integer, got "
                       f"{self.unroll!r}")
    if self.matmul_precision is not None:
      try:
        with jax.default_matmul_precision(self.matmul_precision):
          pass
      except ValueError as e:
        raise ValueError(
            f"bad matmul_precision {self.matmul_precision!r}: {e}") from None

  def products_batched(self, members: int = 1) -> bool:
    """``batched_products`` resolved for the backend and ``members`` models
    trained together under ``vmap``."""
    if self.batched_products is None:
      return jax.default_backend() != "cpu" and members == 1
    return self.batched_products

  def for_members(self, members: int) -> Compute:
    """This compute with ``batched_products`` resolved for ``members``."""
    return dataclasses.replace(
        self, batched_products=self.products_batched(members))

  def compiler_options(self, multi_device: bool = False) -> dict[str, Any]:
    """The options passed to XLA: the library's, then ``xla_options``."""
    base = MULTI_DEVICE_OPTIONS if multi_device else GPU_OPTIONS
    return {**dict(base), **dict(self.xla_options)}

  def jit(self, fn: Callable, *, multi_device: bool = False,
          **jit_kwargs) -> Callable:
    """``jax.jit(fn)`` traced under ``matmul_precision``, compiled with
    ``compiler_options``; ``jit_kwargs`` go to ``jax.jit``."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
      with jax.default_matmul_precision(self.matmul_precision):
        return fn(*args, **kwargs)

    return jax.jit(traced, compiler_options=self.compiler_options(
        multi_device), **jit_kwargs)


DEFAULT = Compute()
