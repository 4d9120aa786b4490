"""Meshes and placement for several devices.

Two layouts, both ``jax.jit`` over ``NamedSharding``:

- data parallelism (one model): ``data_mesh`` and ``train.make_step(...,
  mesh=mesh)``; the state is replicated, each batch split on the "data" axis.
- member parallelism (a sweep): ``member_mesh`` and ``shard_members``; the
  members of ``sweep.sweep_epoch`` split on the "members" axis, the data
  replicated (``replicate``). Members never communicate, so each device runs
  its share alone and every member computes what it computes on one device:
  bitwise on CPU when each device holds two or more members and the clip
  shortens no update (its norm may be summed in another order), to float32
  rounding otherwise.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
MEMBERS = "members"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh named "data" over ``devices`` (default: all local)."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA,))


def check_divisible(batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless ``batch_size`` splits evenly over ``mesh``."""
  if batch_size % mesh.size:
    raise ValueError(
        f"batch size {batch_size} does not divide evenly over {mesh.size} "
        f"devices; use a multiple of {mesh.size}")


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
