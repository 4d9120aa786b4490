"""Scanned epochs and vmapped sweeps compute what the per-step loop computes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sal_jax as sj
from sal_jax import datasets
from sal_jax import sweep


def _data(rng, n=50):
  images = rng.integers(0, 256, (n, 4, 3), dtype=np.uint8)
  labels = rng.integers(0, 5, n).astype(np.int32)
  return images, labels


def test_scanned_epoch_equals_the_per_step_loop_on_the_same_batches(rng):
  circuit = sj.Circuit(widths=(12, 16, 16, 5), method="sal")
  opt = sj.reference_optimizer(circuit, learning_rate=0.05)
  images, labels = _data(rng)
  key = jax.random.key(7)
  state = sj.init_state(jax.random.key(0), circuit, opt)
  looped = jax.tree.map(jnp.copy, state)
  scanned, metrics = jax.jit(sweep.make_epoch(circuit, opt, 8))(
      state, key, images, labels)
  step = sj.make_step(circuit, opt)
  losses = []
  for idx in np.asarray(datasets.epoch_indices(key, 50, 8)):
    looped, m = step(looped, (images[idx], labels[idx]))
    losses.append(m["loss"])
  assert metrics["loss"].shape == (6,)  # 50 // 8: last partial batch dropped
  chex.assert_trees_all_close(scanned.weights, looped.weights, rtol=1e-5,
                              atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)


def test_sweep_members_equal_separate_runs_with_their_own_hyperparams(rng):
  circuit = sj.Circuit(widths=(12, 16, 16, 5), method="sal")
  opt = sj.reference_optimizer(circuit)
  images, labels = _data(rng)
  keys = jax.random.split(jax.random.key(0), 3)
  lrs = jnp.array([0.01, 0.05, 0.0])
  m_v_bars = jnp.array([4.0, 1.0, 2.0])
  decays = jnp.array([1e-3, 0.0, 0.1])
  multipliers = jnp.array([(1.0, 0.2, 1.0, m) for m in m_v_bars])
  states = sweep.init_sweep(keys, circuit, opt, learning_rate=lrs,
                           multipliers=multipliers, weight_decay=decays)
  epoch_keys = jax.random.split(jax.random.key(1), 3)
  states, metrics = sweep.sweep_epoch(circuit, opt, 8, states, epoch_keys,
                                     images, labels)
  evals = sweep.sweep_evaluate(circuit, states.weights, images, labels)
  for i in range(3):
    alone = sj.reference_optimizer(circuit, learning_rate=float(lrs[i]),
                                   weight_decay=float(decays[i]),
                                   multipliers=(1.0, 0.2, 1.0,
                                                float(m_v_bars[i])))
    state = sj.init_state(keys[i], circuit, alone)
    state, m = jax.jit(sweep.make_epoch(circuit, alone, 8))(
        state, epoch_keys[i], images, labels)
    chex.assert_trees_all_close(jax.tree.map(lambda t: t[i], states.weights),
                                state.weights, rtol=1e-5, atol=1e-6)
    ev = sj.evaluate(circuit, state.weights, (images, labels))
    np.testing.assert_allclose(evals["accuracy"][i], ev["accuracy"])
  # A zero learning rate leaves the third member at its initialisation.
  init = sweep.init_sweep(keys, circuit, opt)
  chex.assert_trees_all_equal(jax.tree.map(lambda t: t[2], states.weights),
                              jax.tree.map(lambda t: t[2], init.weights))


def test_one_key_gives_every_member_the_same_data_order(rng):
  circuit = sj.Circuit(widths=(12, 16, 16, 5), method="sal")
  opt = sj.reference_optimizer(circuit)
  images, labels = _data(rng)
  keys = jax.random.split(jax.random.key(0), 2)
  lrs = jnp.array([0.01, 0.05])
  order = jax.random.key(3)
  shared, metrics = sweep.sweep_epoch(
      circuit, opt, 8, sweep.init_sweep(keys, circuit, opt, learning_rate=lrs),
      order, images, labels)
  assert metrics["loss"].shape == (2, 6)
  for i in range(2):
    alone = sj.reference_optimizer(circuit, learning_rate=float(lrs[i]))
    state, _ = jax.jit(sweep.make_epoch(circuit, alone, 8))(
        sj.init_state(keys[i], circuit, alone), order, images, labels)
    chex.assert_trees_all_close(jax.tree.map(lambda t: t[i], shared.weights),
                                state.weights, rtol=1e-5, atol=1e-6)


def test_a_sweep_refuses_a_key_count_that_is_not_its_member_count(rng):
  circuit = sj.Circuit(widths=(12, 16, 16, 5), method="sal")
  opt = sj.reference_optimizer(circuit)
  states = sweep.init_sweep(jax.random.split(jax.random.key(0), 3), circuit,
                           opt)
  with pytest.raises(ValueError, match="2 keys for 3 members"):
    sweep.sweep_epoch(circuit, opt, 8, states,
                     jax.random.split(jax.random.key(1), 2), *_data(rng))


@pytest.mark.parametrize("hyperparams, message", [
    (dict(learning_rate=jnp.array([0.1, 0.2])),
     r"learning_rate needs one value per member \(3 keys\), got shape \(2,\)"),
    (dict(weight_decay=1e-3), r"weight_decay needs one value per member"),
    (dict(learning_rate=jnp.array([0.1, -0.2, 0.3])),
     r"learning_rate must be finite and non-negative, got \[0.1.*-0.2"),
    (dict(momentum=jnp.array([0.9, 0.9, 1.0])), r"momentum must be in \[0, 1\)"),
    (dict(multipliers=jnp.array([(1.0, 0.2, 1.0, 4.0)] * 2 + [(1, 1, -1, 1)])),
     "multipliers must be finite and non-negative"),
])
def test_init_sweep_refuses_hyperparameters_not_one_valid_value_per_member(
    hyperparams, message):
  circuit = sj.Circuit(widths=(12, 16, 16, 5), method="sal")
  opt = sj.reference_optimizer(circuit)
  with pytest.raises(ValueError, match=message):
    sweep.init_sweep(jax.random.split(jax.random.key(0), 3), circuit, opt,
                    **hyperparams)


def test_a_diverging_member_does_not_touch_the_others(rng):
  circuit = sj.Circuit(widths=(12, 16, 16, 5), method="sal")
  opt = sj.reference_optimizer(circuit, clip_norm=None)
  images, labels = _data(rng)
  keys = jax.random.split(jax.random.key(0), 2)
  states = sweep.init_sweep(keys, circuit, opt,
                           learning_rate=jnp.array([1e5, 0.01]))
  states, metrics = sweep.sweep_epoch(circuit, opt, 8, states,
                                     jax.random.split(keys[0], 2), images,
                                     labels)
  assert not np.all(np.isfinite(metrics["loss"][0]))
  assert np.all(np.isfinite(metrics["loss"][1]))
  chex.assert_tree_all_finite(jax.tree.map(lambda t: t[1], states.weights))


def test_evaluation_counts_the_last_partial_batch(rng):
  circuit = sj.Circuit(widths=(12, 16, 5), method="sgd")
  images, labels = _data(rng, n=23)
  weights = sj.init_weights(jax.random.key(0), circuit)
  got = sj.evaluate(circuit, weights, (images, labels), batch_size=10)
  x, _ = datasets.preprocess(images, labels)
  logits = np.asarray(sj.upstream(weights.w, x).output, np.float64)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(got["accuracy"],
                             np.mean(logits.argmax(1) == labels), rtol=1e-6)
  np.testing.assert_allclose(got["loss"],
                             -np.mean(log_p[np.arange(23), labels]),
                             rtol=1e-5)


def test_speed_knobs_leave_a_sweep_unchanged(rng):
  # Scan unroll and batched rule products change how the sweep is compiled,
  # not what it computes.
  images, labels = _data(rng)
  keys = jax.random.split(jax.random.key(0), 2)
  epoch_keys = jax.random.split(jax.random.key(1), 2)
  lrs = jnp.array([0.01, 0.05])
  circuit = sj.Circuit(widths=(12, 16, 16, 5), method="sal")
  opt = sj.reference_optimizer(circuit)

  def run(**compute):
    states = sweep.init_sweep(keys, circuit, opt, learning_rate=lrs)
    return sweep.sweep_epoch(circuit, opt, 8, states, epoch_keys, images,
                             labels, compute=sj.Compute(**compute))[0].weights

  plain = run()
  chex.assert_trees_all_close(run(unroll=3), plain, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(run(batched_products=True), plain, rtol=1e-5,
                              atol=1e-6)


def test_sweeps_form_the_rules_products_per_matrix():
  # Under vmap every product is batched over the members already.
  auto = sj.Compute()
  assert auto.for_members(1).batched_products == (
      jax.default_backend() != "cpu")
  for members in (2, 64):
    assert auto.for_members(members).batched_products is False
  forced = sj.Compute(batched_products=True)
  assert forced.for_members(64) == forced
