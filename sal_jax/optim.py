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

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from sal_jax import circuit as circuit_lib

Weights = circuit_lib.Weights

REFERENCE_MULTIPLIERS = (1.0, 0.2, 1.0, 4.0)  # W : W̄ : V : V̄


def scale_by_family(w, w_bar, v, v_bar) -> optax.GradientTransformation:
  """Multiplies every update of a family by that family's multiplier."""

  def update_fn(updates: Weights, state, params=None):
    del params
    scaled = Weights(*(
        jax.tree.map(lambda g, m=m: g * m, family)
        for family, m in zip(updates, (w, w_bar, v, v_bar))))
    return scaled, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


class ClipState(NamedTuple):
  """What the clip has seen: the last update's global norm before clipping,
  and how many updates it has shortened so far."""
  update_norm: jax.Array
  clipped_steps: jax.Array


def clip_by_global_norm(max_norm) -> optax.GradientTransformation:
  """``optax.clip_by_global_norm`` with the norm taken in one reduction.

  optax reduces every matrix on its own (two kernels each on a GPU, 26 for
  SAL's 13 matrices); here the updates are raveled into one vector, which XLA
  fuses into a single reduction. Same result up to float summation order.
  Whether the clip binds is part of a rule's dynamics, so the state counts
  the updates it shortened (``ClipState``; read it with ``clip_statistics``).
  Counting costs one small kernel per step of one model on a GPU, none in a
  sweep of 64 (XLA:GPU's compile for an H100, RESULTS.md "Speed").
  """

  def init_fn(params):
    del params
    return ClipState(update_norm=jnp.zeros((), jnp.float32),
                     clipped_steps=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    flat = jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(updates)])
    norm = jnp.sqrt(jnp.sum(flat * flat))
    keep = norm < max_norm
    clipped = jax.tree.map(
        lambda g: jax.lax.select(keep, g, (g / norm.astype(g.dtype)) * max_norm),
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


def reference(circuit: circuit_lib.Circuit,
              learning_rate: float = 5e-3,
              momentum: float = 0.9,
              weight_decay: float = 1e-3,
              clip_norm: float | None = 50.0,
              multipliers: Sequence[float] = REFERENCE_MULTIPLIERS,
              flatten: bool = False,
              ) -> optax.GradientTransformation:
  """The reference chain: multipliers, clip, decay, SGD with momentum.

  Args:
    circuit: decides which families get weight decay (the plastic ones).
    learning_rate: SGD step size (η, shared by all families before the
      multipliers).
    momentum: heavy-ball momentum; 0 gives plain SGD.
    weight_decay: γ, applied to plastic families after the multipliers.
    clip_norm: global-norm bound of the scaled updates; None disables it.
    multipliers: per-family multipliers (W, W̄, V, V̄).
    flatten: run clipping, decay and momentum on all matrices concatenated
      into one vector (``optax.flatten``): the same arithmetic in fewer, larger
      kernels, which can be faster on accelerators for a small network.

  Returns:
    An ``optax.inject_hyperparams`` transformation whose state carries
    ``learning_rate``, ``momentum``, ``weight_decay``, ``clip_norm`` and
    ``m_w``, ``m_w_bar``, ``m_v``, ``m_v_bar`` as arrays.
  """
  if learning_rate < 0:
    raise ValueError(f"learning_rate must be non-negative, got {learning_rate}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
  if not 0 <= momentum < 1:
    raise ValueError(f"momentum must be in [0, 1), got {momentum}")
  if clip_norm is not None and clip_norm <= 0:
    raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
  if len(multipliers) != 4 or any(m < 0 for m in multipliers):
    raise ValueError(
        f"multipliers must be four non-negative numbers (W, W̄, V, V̄), got "
        f"{tuple(multipliers)}")
  mask = _plastic_mask(circuit.plastic_families)

  def chain(learning_rate, momentum, weight_decay, m_w, m_w_bar, m_v, m_v_bar,
            clip_norm=None):
    plastic_chain = optax.chain(
        (clip_by_global_norm(clip_norm) if clip_norm is not None
         else optax.identity()),
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum),
    )
    if flatten:
      plastic_chain = optax.flatten(plastic_chain)
    return optax.chain(scale_by_family(m_w, m_w_bar, m_v, m_v_bar),
                       optax.masked(plastic_chain, mask))

  m_w, m_w_bar, m_v, m_v_bar = (float(m) for m in multipliers)
  kwargs = dict(learning_rate=learning_rate, momentum=momentum,
                weight_decay=weight_decay, m_w=m_w, m_w_bar=m_w_bar, m_v=m_v,
                m_v_bar=m_v_bar)
  if clip_norm is not None:
    kwargs["clip_norm"] = clip_norm
  return optax.inject_hyperparams(chain)(**kwargs)


def with_hyperparams(opt_state, **values):
  """A copy of an ``inject_hyperparams`` state with some hyperparameters set.

  Works under ``vmap``, so each member of a sweep can carry its own values.
  """
  unknown = set(values) - set(opt_state.hyperparams)
  if unknown:
    raise ValueError(f"unknown hyperparameters {sorted(unknown)}; the "
                     f"optimizer has {sorted(opt_state.hyperparams)}")
  hyperparams = dict(opt_state.hyperparams)
  for name, value in values.items():
    hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
  return opt_state._replace(hyperparams=hyperparams)
