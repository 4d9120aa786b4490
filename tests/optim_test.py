"""The optax chain the rules feed: order, masks, hyperparameters, clip."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sal_jax as sj
from sal_jax import optim
from tests.conftest import random_batch


def test_reference_chain_is_multiplier_clip_decay_then_momentum_sgd():
  circuit = sj.Circuit(widths=(3, 4, 2), method="sal")
  lr, mom, wd, clip = 0.1, 0.9, 0.01, 0.5
  mult = (1.0, 0.2, 1.0, 4.0)
  opt = sj.reference_optimizer(circuit, learning_rate=lr, momentum=mom,
                               weight_decay=wd, clip_norm=clip,
                               multipliers=mult)
  params = sj.init_weights(jax.random.key(0), circuit)
  grads = jax.tree.map(jnp.ones_like, params)
  state = opt.init(params)
  buf = jax.tree.map(jnp.zeros_like, params)
  p_ref = params
  for _ in range(3):
    updates, state = opt.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    scaled = sj.Weights(*(jax.tree.map(lambda g, m=m: g * m, fam)
                          for fam, m in zip(grads, mult)))
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(scaled)))
    clipped = jax.tree.map(lambda g: g * jnp.minimum(1.0, clip / norm), scaled)
    decayed = jax.tree.map(lambda g, p: g + wd * p, clipped, p_ref)
    buf = jax.tree.map(lambda b, g: mom * b + g, buf, decayed)
    p_ref = jax.tree.map(lambda p, b: p - lr * b, p_ref, buf)
  chex.assert_trees_all_close(params, p_ref, rtol=1e-5, atol=1e-7)
  clip_state = optim.clip_statistics(state)  # found inside the chain
  np.testing.assert_allclose(clip_state.update_norm, norm, rtol=1e-6)
  assert int(clip_state.clipped_steps) == 3  # norm > clip at every step

def test_frozen_families_get_neither_updates_nor_weight_decay(rng):
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method="sal", plastic=("v",))
  opt = sj.reference_optimizer(circuit, learning_rate=0.1, weight_decay=0.5)
  state = sj.init_state(jax.random.key(0), circuit, opt)
  before = jax.tree.map(np.array, state.weights)
  step = sj.make_step(circuit, opt)
  for _ in range(3):
    state, _ = step(state, random_batch(rng, 8, 6, 4))
  chex.assert_trees_all_equal(state.weights.w_bar, before.w_bar)
  chex.assert_trees_all_equal(state.weights.v_bar, before.v_bar)
  assert not np.allclose(state.weights.v[0], before.v[0])

def test_learning_rate_lives_in_the_optimizer_state_and_can_be_changed(rng):
  circuit = sj.Circuit(widths=(6, 8, 4), method="sal")
  opt = sj.reference_optimizer(circuit)
  state = sj.init_state(jax.random.key(0), circuit, opt)
  state.opt_state.hyperparams["learning_rate"] = jnp.asarray(0.0)
  before = jax.tree.map(np.array, state.weights)
  state, _ = sj.make_step(circuit, opt)(state, random_batch(rng, 4, 6, 4))
  chex.assert_trees_all_equal(state.weights, before)

def test_family_multipliers_are_one_hyperparameter_of_four_entries(rng):
  circuit = sj.Circuit(widths=(6, 8, 8, 4), method="sal")
  opt = sj.reference_optimizer(circuit)
  state = sj.init_state(jax.random.key(0), circuit, opt)
  chex.assert_trees_all_equal(state.opt_state.hyperparams["multipliers"],
                              jnp.asarray(optim.REFERENCE_MULTIPLIERS))
  # V̄'s entry at zero (and no decay): V̄ stays, the other families move.
  state = state.replace(opt_state=optim.with_hyperparams(
      state.opt_state, multipliers=(1.0, 0.2, 1.0, 0.0), weight_decay=0.0))
  before = jax.tree.map(np.array, state.weights)
  state, _ = sj.make_step(circuit, opt)(state, random_batch(rng, 4, 6, 4))
  chex.assert_trees_all_equal(state.weights.v_bar, before.v_bar)
  for family in ("w", "w_bar", "v"):
    assert not np.allclose(getattr(state.weights, family)[0],
                           getattr(before, family)[0]), family
  with pytest.raises(ValueError, match=r"multipliers has shape \(4,\)"):
    optim.with_hyperparams(state.opt_state, multipliers=4.0)

def test_hyperparameter_ranges_are_checked_per_member_and_skipped_when_traced():
  optim.check_hyperparams(learning_rate=[0.1, 0.0], momentum=0.0,
                          clip_norm=np.array([1.0, 50.0]))
  with pytest.raises(ValueError, match=r"clip_norm must be positive .*\[1.0, 0.0\]"):
    optim.check_hyperparams(clip_norm=np.array([1.0, 0.0]))
  # Under jit the numbers are unknown: nothing to check, nothing raised.
  jax.jit(lambda lr: optim.check_hyperparams(learning_rate=lr))(-1.0)

def test_a_donated_state_leaves_the_optimizer_able_to_init_again(rng):
  circuit = sj.Circuit(widths=(6, 8, 4), method="sal")
  opt = sj.reference_optimizer(circuit)
  step = sj.make_step(circuit, opt)
  step(sj.init_state(jax.random.key(0), circuit, opt),
       random_batch(rng, 4, 6, 4))  # donates that state's arrays
  state, metrics = step(sj.init_state(jax.random.key(1), circuit, opt),
                        random_batch(rng, 4, 6, 4))
  chex.assert_tree_all_finite((state.weights, metrics))

def test_any_optax_transformation_can_replace_the_reference_chain(rng):
  circuit = sj.Circuit(widths=(6, 8, 4), method="sal")
  opt = optax.adam(1e-3)
  state = sj.init_state(jax.random.key(0), circuit, opt)
  state, metrics = sj.make_step(circuit, opt)(state, random_batch(rng, 4, 6, 4))
  chex.assert_tree_all_finite((state.weights, metrics))

_CLIP_CIRCUIT = sj.Circuit(widths=(6, 8, 9, 4), method="sal")


def _random_updates(rng):
  """Updates shaped like the weights of ``_CLIP_CIRCUIT``, and their norm."""
  updates = jax.tree.map(
      lambda m: jnp.asarray(rng.standard_normal(m.shape), jnp.float32),
      sj.init_weights(jax.random.key(0), _CLIP_CIRCUIT))
  return updates, float(optax.tree.norm(updates))

def test_one_reduction_clip_equals_optax_clip_by_global_norm(rng):
  updates, norm = _random_updates(rng)
  for max_norm in (0.5 * norm, 2.0 * norm):  # clipped, then untouched
    clip = optim.clip_by_global_norm(max_norm)
    ours, _ = clip.update(updates, clip.init(updates))
    theirs, _ = optax.clip_by_global_norm(max_norm).update(updates, None)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6)

def test_clip_state_keeps_the_norm_and_counts_the_updates_it_shortened(rng):
  updates, norm = _random_updates(rng)
  clip = optim.clip_by_global_norm(1.5 * norm)
  state = clip.init(updates)
  for scale in (1.0, 2.0, 0.5, 3.0):  # kept, shortened, kept, shortened
    _, state = clip.update(jax.tree.map(lambda g, s=scale: s * g, updates),
                           state)
    np.testing.assert_allclose(state.update_norm, scale * norm, rtol=1e-5)
  assert int(state.clipped_steps) == 2
  assert isinstance(optim.clip_statistics(
      sj.reference_optimizer(_CLIP_CIRCUIT).init(updates)), optim.ClipState)
  assert optim.clip_statistics(sj.reference_optimizer(
      _CLIP_CIRCUIT, clip_norm=None).init(updates)) is None
