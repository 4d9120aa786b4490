"""Training as XLA programs: a scanned epoch and vmapped sweeps.

The data live on the device as uint8 arrays; each epoch's permutation comes
from a PRNG key inside jit (``datasets.epoch_indices``), every batch is
gathered inside the scan, and ``train.train_step`` runs unchanged. A sweep is
the same epoch under ``jax.vmap`` over states (seeds, and the
hyperparameters held in the optimizer state), so N configurations compile
once and run together.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sal_jax import circuit as circuit_lib
from sal_jax import compute as compute_lib
from sal_jax import datasets
from sal_jax import optim
from sal_jax import train

Array = jax.Array
Circuit = circuit_lib.Circuit
Compute = compute_lib.Compute


def scan_epoch(step: Callable, batch_size: int, *,
               unroll: int = 1) -> Callable:
  """Returns ``epoch(state, key, images, labels) -> (state, metrics)``.

  Runs ``step(state, batch) -> (state, metrics)`` over one shuffled epoch as a
  ``lax.scan``: the permutation comes from ``key``, each batch is gathered
  from ``images`` and ``labels`` inside the scan, and ``metrics`` holds one
  row per step. Not jitted: wrap it in ``jax.jit`` (or ``jax.vmap`` first,
  for a sweep), donating the state.

  Args:
    step: any step function, such as ``train.train_step`` bound to a circuit.
    batch_size: examples per step; the last partial batch is dropped.
    unroll: steps per iteration of the compiled loop (``lax.scan``'s).
  """

  def epoch(state, key: Array, images: Array, labels: Array):
    idx = datasets.epoch_indices(key, images.shape[0], batch_size)
    return jax.lax.scan(
        lambda s, idx_B: step(s, (images[idx_B], labels[idx_B])), state, idx,
        unroll=unroll)

  return epoch


def make_epoch(circuit: Circuit, optimizer: optax.GradientTransformation,
               batch_size: int, *, compute: Compute | None = None,
               diagnostics: bool = False) -> Callable:
  """``scan_epoch`` of the circuit's ``train.train_step`` (see there)."""
  compute = compute or compute_lib.DEFAULT
  step = functools.partial(train.train_step, circuit, optimizer,
                           compute=compute, diagnostics=diagnostics)
  return scan_epoch(step, batch_size, unroll=compute.unroll)


def init_sweep(keys: Array, circuit: Circuit,
               optimizer: optax.GradientTransformation,
               **hyperparams: Array) -> train.TrainState:
  """A batch of states, one per key, with per-member hyperparameters.

  Args:
    keys: [N] PRNG keys (the seeds).
    circuit: static configuration shared by all members.
    optimizer: an ``optax.inject_hyperparams`` transformation (such as
      ``optim.reference``) when hyperparameters are given.
    **hyperparams: [N] arrays, e.g. ``learning_rate=jnp.array([...])``;
      ValueError names one without a value per key, or with a value out of
      its range (``optim.check_hyperparams``).
  """
  keys = jnp.array(keys)
  for name, value in hyperparams.items():
    if np.ndim(value) == 0 or np.shape(value)[0] != keys.shape[0]:
      raise ValueError(
          f"init_sweep: {name} needs one value per member ({keys.shape[0]} "
          f"keys), got shape {np.shape(value)}")
  optim.check_hyperparams(**hyperparams)

  def member(key, hp):
    state = train.init_state(key, circuit, optimizer)
    if hp:
      state = state.replace(
          opt_state=optim.with_hyperparams(state.opt_state, **hp))
    return state

  # Copies: the states get donated, and must not alias the caller's arrays.
  return jax.vmap(member)(keys,
                          {k: jnp.array(v) for k, v in hyperparams.items()})


def _one_key(keys: Array) -> bool:
  """Whether ``keys`` is a single PRNG key (typed, or raw uint32[2])."""
  typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
  return keys.ndim == (0 if typed else 1)


@functools.lru_cache(maxsize=64)
def _sweep_program(circuit, optimizer, batch_size, compute, diagnostics,
                   members, shared_order):
  # Under vmap every product is batched over the members already.
  compute = compute.for_members(members)
  epoch = make_epoch(circuit, optimizer, batch_size, compute=compute,
                     diagnostics=diagnostics)
  swept = jax.vmap(epoch, in_axes=(0, None if shared_order else 0, None, None))
  return compute.jit(swept, donate_argnums=0)


def sweep_epoch(circuit: Circuit, optimizer: optax.GradientTransformation,
                batch_size: int, states: train.TrainState, keys: Array,
                images: Array, labels: Array, *,
                compute: Compute | None = None, diagnostics: bool = False):
  """One epoch of every member of a sweep, as one compiled program.

  ``keys`` shuffles the data: [N] keys give each member its own order (seeds),
  one key gives all members the same order (a grid of hyperparameters on one
  seed), which is faster, as the first layer's products then read one input
  for all members. ``states`` is donated: use the returned states. A member
  that diverges (non-finite loss) produces NaNs in its own rows only.
  ``circuit``, ``optimizer`` and ``compute`` are static (an optimizer is
  compared by identity): build the optimizer once and pass the same object
  every epoch, or each call compiles anew.
  """
  members = jax.tree.leaves(states)[0].shape[0]
  shared_order = _one_key(keys)
  if not shared_order and keys.shape[0] != members:
    raise ValueError(f"sweep_epoch: {keys.shape[0]} keys for {members} "
                     "members; pass one key per member, or one key for a "
                     "shared data order")
  program = _sweep_program(circuit, optimizer, batch_size,
                           compute or compute_lib.DEFAULT, diagnostics,
                           members, shared_order)
  return program(states, keys, images, labels)


def sweep_evaluate(circuit: Circuit, weights: circuit_lib.Weights,
                   images: Array, labels: Array, batch_size: int = 2000, *,
                   compute: Compute | None = None) -> dict[str, Array]:
  """``train.evaluate`` for every member of a sweep: [N] losses, accuracies."""
  return train.evaluate_members(circuit, weights, (images, labels),
                                batch_size, compute=compute)
