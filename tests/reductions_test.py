"""The circuit reduces to known algorithms (docs/algorithm.md, "Theory")."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sal_jax as sj
from sal_jax import diagnostics
from sal_jax import train
from tests.conftest import random_batch

SHAPES = [(5, 7, 3), (6, 8, 9, 4), (10, 4, 6, 5, 4, 3)]


def _plain_sgd(circuit, lr=0.1, wd=0.0):
  return sj.reference_optimizer(circuit, learning_rate=lr, momentum=0.0,
                                weight_decay=wd, clip_norm=None,
                                multipliers=(1.0, 1.0, 1.0, 1.0))


@pytest.mark.parametrize("widths", SHAPES)
@pytest.mark.parametrize("batch_size", [1, 16])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse",
                                  "sigmoid_cross_entropy"])
def test_sgd_circuit_update_equals_autodiff_gradient(rng, widths, batch_size,
                                                     loss):
  circuit = sj.Circuit(widths=widths, method="sgd", loss=loss)
  weights = sj.init_weights(jax.random.key(1), circuit)
  batch = random_batch(rng, batch_size, widths[0], widths[-1],
                       multi_label=loss == "sigmoid_cross_entropy")
  rule = jax.jit(lambda w, b: sj.plasticity(
      circuit, w, *train.forward_and_feedback(circuit, w, b)))
  g = rule(weights, batch)
  true = jax.jit(functools.partial(diagnostics.loss_gradient, circuit))(
      weights.w, batch)
  chex.assert_trees_all_close(g.w, true, rtol=1e-5, atol=1e-7)


def test_sgd_training_steps_equal_autodiff_plus_the_same_optax_chain(rng):
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method="sgd")
  opt = sj.reference_optimizer(circuit, learning_rate=0.05)  # full chain
  state = sj.init_state(jax.random.key(0), circuit, opt)
  # The step donates its state, so the oracle works on a copy.
  weights, opt_state = jax.tree.map(jnp.copy, (state.weights, state.opt_state))
  step = sj.make_step(circuit, opt)
  for _ in range(4):
    batch = random_batch(rng, 8, 6, 4)
    grads = diagnostics.loss_gradient(circuit, weights.w, batch)
    grads = sj.Weights(w=grads, w_bar=(), v=(), v_bar=())
    updates, opt_state = opt.update(grads, opt_state, weights)
    weights = optax.apply_updates(weights, updates)
    state, _ = step(state, batch)
  chex.assert_trees_all_close(state.weights, weights, rtol=1e-5, atol=1e-7)


def test_linear_method_is_one_layer_sgd(rng):
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method="linear")
  weights = sj.init_weights(jax.random.key(0), circuit)
  chex.assert_shape(weights.w, [(4, 6)])
  batch = random_batch(rng, 5, 6, 4)
  up, down = train.forward_and_feedback(circuit, weights, batch)
  g = sj.plasticity(circuit, weights, up, down)
  chex.assert_trees_all_close(
      g.w, diagnostics.loss_gradient(circuit, weights.w, batch),
      rtol=1e-5, atol=1e-7)


def _kp_state_with_w_bar(circuit, opt, w_bar):
  state = sj.init_state(jax.random.key(0), circuit, opt)
  weights = state.weights._replace(w_bar=w_bar)
  return state.replace(weights=weights, opt_state=opt.init(weights))


def test_kp_from_transposed_feedback_reproduces_sgd(rng):
  widths = (6, 8, 9, 4)
  kp = sj.Circuit(widths=widths, method="kp")
  sgd = sj.Circuit(widths=widths, method="sgd")
  opt_kp, opt_sgd = _plain_sgd(kp, wd=0.01), _plain_sgd(sgd, wd=0.01)
  s_sgd = sj.init_state(jax.random.key(0), sgd, opt_sgd)
  s_kp = _kp_state_with_w_bar(kp, opt_kp,
                              tuple(w.T for w in s_sgd.weights.w[1:]))
  step_kp, step_sgd = sj.make_step(kp, opt_kp), sj.make_step(sgd, opt_sgd)
  for _ in range(5):
    batch = random_batch(rng, 8, 6, 4)
    s_kp, m_kp = step_kp(s_kp, batch)
    s_sgd, m_sgd = step_sgd(s_sgd, batch)
    np.testing.assert_allclose(m_kp["loss"], m_sgd["loss"], rtol=1e-5)
  chex.assert_trees_all_close(s_kp.weights.w, s_sgd.weights.w,
                              rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s_kp.weights.w_bar,
                              tuple(w.T for w in s_sgd.weights.w[1:]),
                              rtol=1e-5, atol=1e-6)


def test_kp_feedback_mismatch_decays_by_exactly_one_minus_lr_times_decay(rng):
  kp = sj.Circuit(widths=(6, 8, 9, 4), method="kp")
  lr, wd = 0.1, 0.05
  opt = _plain_sgd(kp, lr=lr, wd=wd)
  state = sj.init_state(jax.random.key(3), kp, opt)
  step = sj.make_step(kp, opt)

  def mismatch(weights):
    return [wb - w.T for wb, w in zip(weights.w_bar, weights.w[1:])]

  before = mismatch(state.weights)
  for t in range(1, 6):
    state, _ = step(state, random_batch(rng, 8, 6, 4))
    now = mismatch(state.weights)
    for b, n in zip(before, now):
      assert float(jnp.linalg.norm(n)) > 0.1  # far from converged: real test
      np.testing.assert_allclose(n, (1 - lr * wd) ** t * b, rtol=1e-4,
                                 atol=1e-6)


@pytest.mark.parametrize("method", ["fa", "wm", "kp", "sal"])
def test_feedback_stream_does_not_read_forward_weights(rng, method):
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method=method)
  weights = sj.init_weights(jax.random.key(0), circuit)
  x, _ = random_batch(rng, 5, 6, 4)
  up = sj.upstream(weights.w, x)
  error = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
  perturbed = weights._replace(w=tuple(w + 1.0 for w in weights.w))
  chex.assert_trees_all_equal(sj.downstream(circuit, weights, up, error),
                              sj.downstream(circuit, perturbed, up, error))


def test_backprop_feedback_does_read_forward_weights(rng):
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method="sgd")
  weights = sj.init_weights(jax.random.key(0), circuit)
  up = sj.upstream(weights.w, random_batch(rng, 5, 6, 4)[0])
  error = jnp.ones((5, 4))
  perturbed = weights._replace(w=tuple(w + 1.0 for w in weights.w))
  a = sj.downstream(circuit, weights, up, error).h_bar[0]
  b = sj.downstream(circuit, perturbed, up, error).h_bar[0]
  assert not np.allclose(a, b)


def test_fa_feedback_weights_never_change(rng):
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method="fa")
  opt = sj.reference_optimizer(circuit, learning_rate=0.1)
  state = sj.init_state(jax.random.key(0), circuit, opt)
  w_bar0 = jax.tree.map(np.array, state.weights.w_bar)
  w0 = jax.tree.map(np.array, state.weights.w)
  step = sj.make_step(circuit, opt)
  for _ in range(5):
    state, _ = step(state, random_batch(rng, 8, 6, 4))
  chex.assert_trees_all_equal(state.weights.w_bar, w_bar0)
  assert not np.allclose(state.weights.w[0], w0[0])


def test_wm_feedback_aligns_with_forward_transpose_from_noise_alone():
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method="wm")
  opt = sj.reference_optimizer(circuit, learning_rate=0.05,
                               multipliers=(0.0, 1.0, 0.0, 0.0))  # W frozen
  state = sj.init_state(jax.random.key(0), circuit, opt)
  angle0 = diagnostics.feedback_angle(circuit, state.weights)
  step = sj.make_step(circuit, opt, diagnostics=True)
  batch = (np.zeros((32, 6), np.float32), np.zeros(32, np.int32))
  for _ in range(300):
    state, metrics = step(state, batch)
  angle = metrics["feedback_angle"]
  assert np.all(angle0 > 80)
  assert np.all(angle < 30), angle
