"""Training as XLA programs: a scanned epoch, in-jit evaluation, vmapped sweeps.

The data live on the device as uint8 arrays; each epoch's permutation comes
from a PRNG key inside jit, every batch is gathered and preprocessed inside the
scan, and ``train_step`` runs unchanged. A sweep is the same epoch under
``jax.vmap`` over states (seeds and the hyperparameters held in the optimizer
state), so N configurations compile once and run together.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sal_jax import checks
from sal_jax import circuit as circuit_lib
from sal_jax import datasets
from sal_jax import optim
from sal_jax import train
from sal_jax import xla_options

Array = jax.Array
Circuit = circuit_lib.Circuit


def gathered_step(step: Callable, batch_sharding=None) -> Callable:
  """Returns ``run(state, images, labels, idx_B) -> (state, metrics)``: one
  step of ``scan_epoch``, ``step`` on the batch gathered at ``idx_B`` from the
  uint8 ``images`` and ``labels`` and preprocessed (constrained to
  ``batch_sharding`` if given)."""

  def run(state, images: Array, labels: Array, idx_B: Array):
    batch = datasets.preprocess(images[idx_B], labels[idx_B])
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return step(state, batch)

  return run


def scan_epoch(step: Callable, batch_size: int, *,
               batch_sharding=None, unroll: int = 1) -> Callable:
  """Returns ``epoch(state, key, images, labels) -> (state, metrics)``.

  Runs ``step(state, batch) -> (state, metrics)`` over one shuffled epoch as a
  ``lax.scan``: the permutation comes from ``key``, each batch is gathered from
  the uint8 ``images`` and preprocessed inside the scan, and ``metrics`` holds
  one row per step. Not jitted: wrap it in ``jax.jit`` (or ``jax.vmap`` first,
  for a sweep), donating the state; ``compiler_options=xla_options.OPTIONS``
  compiles it as the library's own programs are.

  Args:
    step: any step function, such as ``train.train_step`` bound to a circuit.
    batch_size: examples per step; the last partial batch is dropped.
    batch_sharding: optional sharding each batch is constrained to (data
      parallelism, see ``parallel``).
    unroll: steps per iteration of the compiled loop (``lax.scan``'s
      ``unroll``); more means fewer loop-control round trips on a GPU and a
      longer compile.
  """

  one_step = gathered_step(step, batch_sharding)

  def epoch(state, key: Array, images: Array, labels: Array):
    idx = datasets.epoch_indices(key, images.shape[0], batch_size)
    return jax.lax.scan(lambda s, idx_B: one_step(s, images, labels, idx_B),
                        state, idx, unroll=unroll)

  return epoch


def make_epoch(circuit: Circuit, optimizer: optax.GradientTransformation,
               batch_size: int, *, diagnostics: bool = False,
               batch_sharding=None, unroll: int = 1) -> Callable:
  """``scan_epoch`` of the circuit's ``train_step`` (see there)."""
  step = functools.partial(train.train_step, circuit, optimizer,
                           diagnostics=diagnostics)
  return scan_epoch(step, batch_size, batch_sharding=batch_sharding,
                    unroll=unroll)


def evaluate_arrays(circuit: Circuit, weights: circuit_lib.Weights,
                    images: Array, labels: Array,
                    batch_size: int = 2000) -> dict[str, Array]:
  """Mean loss and accuracy over all examples (the partial batch included).

  Jit-friendly: full chunks run in a scan, the remainder once more.
  """
  checks.check_batch_size(batch_size)
  n = images.shape[0]

  def sums(imgs, lbls):
    return train.loss_and_correct_sums(circuit, weights,
                                       datasets.preprocess(imgs, lbls))

  full = (n // batch_size) * batch_size
  total = jnp.zeros(2)
  if full:
    chunks = (images[:full].reshape((-1, batch_size) + images.shape[1:]),
              labels[:full].reshape((-1, batch_size) + labels.shape[1:]))
    total += jax.lax.scan(lambda c, b: (c + sums(*b), None), total,
                          chunks)[0]
  if full < n:
    total += sums(images[full:], labels[full:])
  return {"loss": total[0] / n, "accuracy": total[1] / n}


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


def sweep_circuit(circuit: Circuit, members: int) -> Circuit:
  """The circuit a sweep of ``members`` models runs.

  Batching the rules' equal-shaped products saves launches for one model, but
  under ``vmap`` every product is batched over the members anyway, and
  stacking equal shapes on top only copies each member's activity. So a sweep
  of two or more forms them per matrix, unless the circuit fixes
  ``batched_products``. XLA:GPU's compile for an H100 (RESULTS.md, "Speed";
  each member its own batch): a SAL step of 2 members moves 88.2 MB batched
  and 63.8 MB per matrix (34 and 42 kernels); of 64 members, 2.82 and 2.04 GB
  (35 and 43 kernels), and a sweep that large is bound by its memory traffic.
  """
  if circuit.batched_products is None and members > 1:
    return dataclasses.replace(circuit, batched_products=False)
  return circuit


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4), donate_argnums=5,
                   compiler_options=xla_options.OPTIONS)
def _sweep_epoch(circuit, optimizer, batch_size, diagnostics, unroll, states,
                 keys, images, labels):
  members = jax.tree.leaves(states)[0].shape[0]
  epoch = make_epoch(sweep_circuit(circuit, members), optimizer, batch_size,
                     diagnostics=diagnostics, unroll=unroll)
  key_axis = None if _one_key(keys) else 0
  return jax.vmap(epoch, in_axes=(0, key_axis, None, None))(
      states, keys, images, labels)


def _one_key(keys: Array) -> bool:
  """Whether ``keys`` is a single PRNG key (typed, or raw uint32[2])."""
  typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
  return keys.ndim == (0 if typed else 1)


def sweep_epoch(circuit: Circuit, optimizer: optax.GradientTransformation,
                batch_size: int, states: train.TrainState, keys: Array,
                images: Array, labels: Array, *, diagnostics: bool = False,
                unroll: int = 1):
  """One epoch of every member of a sweep, as one compiled program.

  ``keys`` shuffles the data: [N] keys give each member its own order (seeds),
  one key gives all members the same order (a grid of hyperparameters on one
  seed), which is faster, as the first layer's products then read one input
  for all members (on an H200, 64 SAL members 5% faster, backprop's 15%).
  ``states`` is donated: use the returned states. A member that diverges
  (non-finite loss) produces NaNs in its own rows only. ``unroll`` is
  ``scan_epoch``'s; the rules' products are ``sweep_circuit``'s. ``circuit``
  and ``optimizer`` are static (compared by identity for an optimizer): build
  the optimizer once and pass the same object every epoch, or each call
  compiles anew.
  """
  members = jax.tree.leaves(states)[0].shape[0]
  if not _one_key(keys) and keys.shape[0] != members:
    raise ValueError(f"sweep_epoch: {keys.shape[0]} keys for {members} "
                     "members; pass one key per member, or one key for a "
                     "shared data order")
  return _sweep_epoch(circuit, optimizer, batch_size, diagnostics, unroll,
                      states, keys, images, labels)


@functools.partial(jax.jit, static_argnums=(0, 4),
                   compiler_options=xla_options.OPTIONS)
def sweep_evaluate(circuit: Circuit, weights: circuit_lib.Weights,
                   images: Array, labels: Array, batch_size: int = 2000):
  """``evaluate_arrays`` for every member of a sweep."""
  return jax.vmap(lambda w: evaluate_arrays(circuit, w, images, labels,
                                            batch_size))(weights)
