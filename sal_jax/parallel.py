"""Two ways to use several devices, both ``jax.jit`` with ``NamedSharding``.

Data parallelism (one model): weights replicated, each batch split on a
"data" axis; the rules' batch means become cross-device reductions that XLA
inserts itself, so the sharded step computes the same update as the
single-device one.

Member parallelism (a sweep): the members of a vmapped sweep split on a
"members" axis, the data replicated. Members never communicate, so each
device runs its share of ``loop.sweep_epoch`` on its own (the compiled
program has no collectives) and every member computes what it computes on
one device: on CPU bitwise when each device holds two or more members and
the gradient clip shortens no update (the clip's norm may be summed in
another order), to float32 rounding otherwise, and with one member per
device (XLA then drops the member axis from the products).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sal_jax import checks
from sal_jax import circuit as circuit_lib
from sal_jax import loop
from sal_jax import train
from sal_jax import xla_options

AXIS = "data"
MEMBERS = "members"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh named "data" over ``devices`` (default: all local)."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def _check_divisible(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.size:
    raise ValueError(
        f"batch size {batch_size} does not divide evenly over {mesh.size} "
        f"devices; use a multiple of {mesh.size}")


def make_parallel_step(circuit: circuit_lib.Circuit,
                       optimizer: optax.GradientTransformation, mesh: Mesh, *,
                       diagnostics: bool = False):
  """``step(state, batch)`` on every device of ``mesh``, state replicated.

  Each call blocks until its result is ready: on CPU, dispatching a
  multi-device program before the previous one finished can deadlock the
  collective rendezvous (seen with jax 0.10).
  """
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  jitted = jax.jit(
      functools.partial(train.train_step, circuit, optimizer,
                        diagnostics=diagnostics),
      in_shardings=(replicated, split), out_shardings=replicated,
      donate_argnums=0, compiler_options=xla_options.MULTI_DEVICE_OPTIONS)

  def step(state, batch):
    checks.check_batch(circuit, batch)
    _check_divisible(np.shape(batch[0])[0], mesh)
    return jax.block_until_ready(jitted(state, batch))

  return step


def make_parallel_epoch(circuit: circuit_lib.Circuit,
                        optimizer: optax.GradientTransformation,
                        batch_size: int, mesh: Mesh, *,
                        diagnostics: bool = False):
  """``epoch(state, key, images, labels)`` with each batch split over ``mesh``."""
  _check_divisible(batch_size, mesh)
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  epoch = loop.make_epoch(circuit, optimizer, batch_size,
                          diagnostics=diagnostics, batch_sharding=split)
  jitted = jax.jit(epoch, in_shardings=replicated, out_shardings=replicated,
                   donate_argnums=0,
                   compiler_options=xla_options.MULTI_DEVICE_OPTIONS)
  return lambda *args: jax.block_until_ready(jitted(*args))


def replicate(tree, mesh: Mesh):
  """Places every leaf of ``tree`` on all devices of ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def member_mesh(members: int,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A "members" mesh over as many of ``devices`` as split ``members`` evenly.

  The largest such count: 5 members on 8 devices use 5 of them, 64 use 8, and
  5 on 4 devices use one (members are not padded).
  """
  if members < 1:
    raise ValueError(f"a sweep needs at least one member, got {members}")
  devices = jax.local_devices() if devices is None else list(devices)
  count = max(d for d in range(1, len(devices) + 1) if members % d == 0)
  return Mesh(np.asarray(devices[:count]), (MEMBERS,))


def shard_members(tree, mesh: Mesh):
  """Splits the leading (member) axis of every leaf of ``tree`` over ``mesh``.

  For a sweep's states and PRNG keys; the data it trains on go to every
  device of the mesh with ``replicate``.
  """
  for leaf in jax.tree.leaves(tree):
    if np.ndim(leaf) == 0 or np.shape(leaf)[0] % mesh.size:
      raise ValueError(
          f"cannot split members over {mesh.size} devices: a leaf of shape "
          f"{np.shape(leaf)} has no leading member axis divisible by "
          f"{mesh.size}")
  return jax.device_put(tree, NamedSharding(mesh, P(MEMBERS)))
