"""The optax chain the plasticity rules feed (the authors' reference setup).

G (the rule's update, signed as a gradient) is multiplied by its family's
multiplier, clipped by global norm, given weight decay γM, and applied by SGD
with momentum. The numeric hyperparameters live in the optimizer state
(``optax.inject_hyperparams``), so one compiled step serves any learning
rate, and a sweep can ``vmap`` over states that differ only in them.

Only plastic families pass through the chain (``optax.masked``): a frozen
matrix gets G = 0 from the rules and no weight decay, so it stays put.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sal_jax import circuit as circuit_lib
from sal_jax import compute as compute_lib

Weights = circuit_lib.Weights

REFERENCE_MULTIPLIERS = (1.0, 0.2, 1.0, 4.0)  # W : W̄ : V : V̄


def scale_by_family(multipliers) -> optax.GradientTransformation:
  """Multiplies every update of a family by that family's multiplier.

  ``multipliers`` is one [4] array (W, W̄, V, V̄), so a sweep can vmap over
  it as one hyperparameter.
  """

  def update_fn(updates: Weights, state, params=None):
    del params
    scaled = Weights(*(
        jax.tree.map(lambda g, i=i: g * multipliers[i], family)
        for i, family in enumerate(updates)))
    return scaled, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


class ClipState(NamedTuple):
  """What the clip has seen: the last update's global norm before clipping,
  and how many updates it has shortened so far."""
  update_norm: jax.Array
  clipped_steps: jax.Array


def clip_by_global_norm(max_norm,
                        smooth: bool = False) -> optax.GradientTransformation:
  """``optax.clip_by_global_norm``, the norm taken in one reduction.

  The updates are raveled into one vector and summed in float32 (or wider)
  whatever their dtype: the result equals optax's up to float summation
  order. Whether the clip binds is part of a rule's dynamics, so the state
  counts the updates it shortened (``ClipState``; read it with
  ``clip_statistics``).

  ``smooth=True`` scales every update by 1 / sqrt(1 + (n / max_norm)²)
  instead of min(1, max_norm / n) (n: the global norm): the same limits far
  below and far above the bound, but differentiable in n and max_norm, so an
  objective unrolled through many clipped steps is smooth in the
  hyperparameters (a hard clip makes it piecewise). It shortens every
  update, by 1 / sqrt(2) at n = max_norm; ``clipped_steps`` then counts the
  updates with n > max_norm.
  """

  def init_fn(params):
    del params
    return ClipState(update_norm=jnp.zeros((), jnp.float32),
                     clipped_steps=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    flat = jnp.concatenate([
        jnp.ravel(g).astype(jnp.promote_types(g.dtype, jnp.float32))
        for g in jax.tree.leaves(updates)])
    norm = jnp.sqrt(jnp.sum(flat * flat))
    keep = norm < max_norm
    if smooth:
      scale = jax.lax.rsqrt(1 + jnp.square(norm / max_norm))
      clipped = jax.tree.map(lambda g: g * scale.astype(g.dtype), updates)
    else:
      clipped = jax.tree.map(
          lambda g: jax.lax.select(keep, g,
                                   (g / norm.astype(g.dtype)) * max_norm),
          updates)
    return clipped, ClipState(
        update_norm=norm.astype(jnp.float32),
        clipped_steps=state.clipped_steps + (~keep).astype(jnp.int32))

  return optax.GradientTransformation(init_fn, update_fn)


def clip_statistics(opt_state) -> ClipState | None:
  """The ``ClipState`` inside an optimizer state, or None if it has no clip.

  Norms are of G after the family multipliers, before clipping, weight decay,
  momentum and the learning rate.
  """
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "ClipState")
  return found[0][1] if found else None


def _plastic_mask(plastic: Sequence[str]):
  """True for the matrices that learn: W and the plastic families."""

  def mask_fn(params: Weights) -> Weights:
    return Weights(*(
        jax.tree.map(lambda _, on=(name == "w" or name in plastic): on, family)
        for name, family in zip(circuit_lib.FAMILIES, params)))

  return mask_fn


# What each of ``reference``'s hyperparameters must be: a test, in words.
_VALID = {
    "learning_rate": (lambda v: (v >= 0) & (v < np.inf), "finite and non-negative"),
    "weight_decay": (lambda v: (v >= 0) & (v < np.inf), "finite and non-negative"),
    "momentum": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
    "clip_norm": (lambda v: v > 0,
                  "positive (None or inf: no clip)"),
    "multipliers": (lambda v: (v >= 0) & (v < np.inf), "finite and non-negative"),
}


def check_hyperparams(**values) -> None:
  """Raises ValueError naming a hyperparameter with a value out of range.

  A value may be a number or an array (the members of a sweep); traced
  values, whose numbers are unknown, and names other than ``reference``'s
  are not checked.
  """
  for name, value in values.items():
    if name not in _VALID:
      continue
    try:
      value = np.asarray(value)
    except jax.errors.TracerArrayConversionError:
      continue
    if not np.issubdtype(value.dtype, np.number):
      raise ValueError(f"{name} must be a number, got {value.tolist()!r}")
    valid, what = _VALID[name]
    if not np.all(valid(value)):
      raise ValueError(f"{name} must be {what}, got {value.tolist()}")


def reference(circuit: circuit_lib.Circuit,
              learning_rate: float = 5e-3,
              momentum: float = 0.9,
              weight_decay: float = 1e-3,
              clip_norm: float | None = 50.0,
              multipliers: Sequence[float] = REFERENCE_MULTIPLIERS,
              compute: compute_lib.Compute | None = None,
              smooth_clip: bool = False,
              ) -> optax.GradientTransformation:
  """The reference chain: multipliers, clip, decay, SGD with momentum.

  docs/algorithm.md, "Reference training setup". Every number may be a
  traced value (under ``jit``, ``grad``, ``vmap``); only concrete ones are
  range-checked.

  Args:
    circuit: decides which families get weight decay (the plastic ones).
    learning_rate: SGD step size (η, shared by all families before the
      multipliers).
    momentum: heavy-ball momentum; 0 gives plain SGD.
    weight_decay: γ, applied to plastic families after the multipliers.
    clip_norm: global-norm bound of the scaled updates; None disables it.
    multipliers: per-family multipliers (W, W̄, V, V̄).
    compute: its ``momentum_dtype`` is the dtype the momentum is stored in.
    smooth_clip: clip smoothly (``clip_by_global_norm(smooth=True)``), for
      objectives differentiated through training.

  Returns:
    An ``optax.inject_hyperparams`` transformation whose state carries, as
    arrays, ``learning_rate``, ``momentum``, ``weight_decay`` and
    ``clip_norm`` (scalars) and ``multipliers`` ([4]: W, W̄, V, V̄).
  """
  multipliers = tuple(multipliers)
  if len(multipliers) != 4:
    raise ValueError(
        f"multipliers must be four numbers (W, W̄, V, V̄), got {multipliers}")
  check_hyperparams(learning_rate=learning_rate, momentum=momentum,
                    weight_decay=weight_decay, multipliers=multipliers,
                    **({} if clip_norm is None else {"clip_norm": clip_norm}))
  args = (circuit, learning_rate, momentum, weight_decay, clip_norm,
          multipliers, compute or compute_lib.DEFAULT, smooth_clip)
  try:
    return _cached_reference(*args)
  except TypeError:  # an unhashable (traced) value
    return _reference(*args)


@functools.lru_cache(maxsize=256)
def _cached_reference(*args):
  """One transformation per setting: programs built from the same settings
  then hit jit's cache, which compares optimizers by identity."""
  return _reference(*args)


def _reference(circuit, learning_rate, momentum, weight_decay, clip_norm,
               multipliers, compute, smooth_clip):
  momentum_dtype = compute.momentum_dtype
  mask = _plastic_mask(circuit.plastic_families)

  def chain(learning_rate, momentum, weight_decay, multipliers,
            clip_norm=None):
    plastic_chain = optax.chain(
        (clip_by_global_norm(clip_norm, smooth_clip) if clip_norm is not None
         else optax.identity()),
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum,
                  accumulator_dtype=momentum_dtype),
    )
    return optax.chain(scale_by_family(multipliers),
                       optax.masked(plastic_chain, mask))

  # A NumPy array: each init makes its own device copy, so no state shares
  # (and, once donated, deletes) an array the optimizer keeps. Traced
  # multipliers stay traced.
  try:
    multipliers = np.asarray(multipliers, np.float32)
  except jax.errors.TracerArrayConversionError:
    multipliers = jnp.stack([jnp.asarray(m, jnp.float32) for m in multipliers])
  kwargs = dict(learning_rate=learning_rate, momentum=momentum,
                weight_decay=weight_decay, multipliers=multipliers)
  if clip_norm is not None:
    kwargs["clip_norm"] = clip_norm
  return optax.inject_hyperparams(chain)(**kwargs)


def with_hyperparams(opt_state, **values):
  """A copy of an ``inject_hyperparams`` state with some hyperparameters set.

  Works under ``vmap``, so each member of a sweep can carry its own values.
  A value must have its hyperparameter's shape: ``multipliers`` takes all
  four families at once, e.g. ``multipliers=(1.0, 0.2, 1.0, 4.0)``.
  """
  unknown = set(values) - set(opt_state.hyperparams)
  if unknown:
    raise ValueError(f"unknown hyperparameters {sorted(unknown)}; the "
                     f"optimizer has {sorted(opt_state.hyperparams)}")
  hyperparams = dict(opt_state.hyperparams)
  for name, value in values.items():
    old = hyperparams[name]
    if np.shape(value) != old.shape:
      raise ValueError(f"hyperparameter {name} has shape {old.shape}, got a "
                       f"value of shape {np.shape(value)}")
    hyperparams[name] = jnp.asarray(value, old.dtype)
  return opt_state._replace(hyperparams=hyperparams)
