"""The rules against the paper's theory: local energies and Lemma 1
(docs/algorithm.md, "Local energies", "Theory")."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sal_jax as sj
from sal_jax import modulation
from sal_jax import train
from tests.conftest import random_batch

sg = jax.lax.stop_gradient


def _phi(name, h_bar, h_up):
  """D_d as the activity function of the downstream potential."""
  return {"identity": lambda: h_bar, "relu": lambda: jax.nn.relu(h_bar),
          "tanh": lambda: jnp.tanh(h_bar),
          "relu_jacobian": lambda: (h_up > 0) * h_bar}[name]()


def energy_gradients(circuit, weights, batch):
  """jax.grad of the local energies, other stream held fixed (stop-gradient).

  E_u = -φ_u(W^l a^l)ᵀ V̄^l b̄^{l+1} for W (φ_u = ReLU, identity at the output)
  and for V̄ in the activity variant (no ReLU in the default variant);
  E_d = -φ_d(W̄^k b̄^{k+1})ᵀ V^k a^k for W̄ and V.
  """
  up, down = train.forward_and_feedback(circuit, weights, batch)
  a, h, b_bar = [sg(t) for t in up.a], [sg(t) for t in up.h], [
      sg(t) for t in down.b_bar]
  n = a[0].shape[0]
  num_layers = len(weights.w)

  def e_u(w_l, v_bar_l, l, relu):
    pre = a[l] @ w_l.T
    post = jax.nn.relu(pre) if relu else pre
    signal = b_bar[l] if v_bar_l is None else b_bar[l] @ v_bar_l.T
    return -jnp.sum(post * signal) / n

  def e_d(w_bar_k, v_k, i):
    pot = _phi(circuit.d_nonlinearity, b_bar[i + 1] @ w_bar_k.T, h[i])
    return -jnp.sum(pot * (a[i + 1] @ v_k.T)) / n

  g_w = tuple(
      jax.grad(e_u)(weights.w[l], sg(weights.v_bar[l]) if l < num_layers - 1
                    else None, l, l < num_layers - 1)
      for l in range(num_layers))
  activity = circuit.v_bar_signal == "activity"
  g_v_bar = tuple(jax.grad(e_u, argnums=1)(sg(weights.w[i]), weights.v_bar[i],
                                           i, activity)
                  for i in range(num_layers - 1))
  g_w_bar = tuple(jax.grad(e_d)(weights.w_bar[i], sg(weights.v[i]), i)
                  for i in range(num_layers - 1))
  g_v = tuple(jax.grad(e_d, argnums=1)(sg(weights.w_bar[i]), weights.v[i], i)
              for i in range(num_layers - 1))
  return sj.Weights(w=g_w, w_bar=g_w_bar, v=g_v, v_bar=g_v_bar)


@pytest.mark.parametrize("nonlinearity",
                         ["identity", "relu", "tanh", "relu_jacobian"])
@pytest.mark.parametrize("v_bar_signal", ["preactivation", "activity"])
def test_rules_are_gradients_of_the_local_energies(rng, nonlinearity,
                                                   v_bar_signal):
  ratio = 1.0 if nonlinearity == "relu_jacobian" else 1.5
  circuit = sj.Circuit(widths=(6, 8, 9, 7, 4), ratio=ratio, method="sal",
                       nonlinearity=nonlinearity, v_bar_signal=v_bar_signal)
  weights = sj.init_weights(jax.random.key(2), circuit)
  batch = random_batch(rng, 11, 6, 4)
  rule = jax.jit(lambda w, b: sj.plasticity(
      circuit, w, *train.forward_and_feedback(circuit, w, b)))(weights, batch)
  energies = jax.jit(functools.partial(energy_gradients, circuit))(weights,
                                                                  batch)
  chex.assert_trees_all_close(rule, energies, rtol=1e-5, atol=1e-7)


def _lemma_setup(v_bar_signal, lr, wd):
  circuit = sj.Circuit(widths=(6, 8, 9, 4), ratio=1.5, method="sal",
                       v_bar_signal=v_bar_signal)
  opt = sj.reference_optimizer(circuit, learning_rate=lr, momentum=0.0,
                               weight_decay=wd, clip_norm=None,
                               multipliers=(1.0, 0.2, 1.0, 1.0))
  state = sj.init_state(jax.random.key(5), circuit, opt)
  return circuit, state, sj.make_step(circuit, opt)


def _gap(weights):
  return [np.asarray(v - vb.T) for v, vb in zip(weights.v, weights.v_bar)]


def test_lemma1_gap_shrinks_by_exactly_the_decay_factor_in_activity_variant(
    rng):
  lr, wd = 0.05, 0.1
  _, state, step = _lemma_setup("activity", lr, wd)
  gap0 = _gap(state.weights)
  for t in range(1, 8):
    # "whatever the data": a different input distribution every step.
    x, y = random_batch(rng, 16, 6, 4)
    state, _ = step(state, (x * t + t, y))
    for g0, g in zip(gap0, _gap(state.weights)):
      np.testing.assert_allclose(g, (1 - lr * wd) ** t * g0, rtol=1e-4,
                                 atol=1e-6)


def test_lemma1_gap_in_default_variant_gets_the_negative_part_term(rng):
  lr, wd = 0.05, 0.1
  circuit, state, step = _lemma_setup("preactivation", lr, wd)
  for _ in range(4):
    batch = random_batch(rng, 16, 6, 4)
    weights = jax.tree.map(np.array, state.weights)
    up, down = train.forward_and_feedback(circuit, weights, batch)
    expected = []
    for i, g in enumerate(_gap(weights)):
      b_bar, a, h = down.b_bar[i], up.a[i + 1], up.h[i]
      extra = b_bar.T @ (a - h) / 16  # η (D_d h̄)(a - h)ᵀ, batch mean
      assert float(jnp.abs(extra).max()) > 1e-3  # the term is really there
      expected.append((1 - lr * wd) * g + lr * extra)
    state, _ = step(state, batch)
    for e, g in zip(expected, _gap(state.weights)):
      np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


def test_modulation_adds_tau_times_the_v_bar_signal_to_each_potential(rng):
  # Sec. 2.3: h^{l+1} <- W^l a^l + τ V̄^l D_d h̄^{l+1}, recomputed upward; the
  # output level gets τ times the error. τ = 0 is the plain forward pass.
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method="sal")
  weights = sj.init_weights(jax.random.key(0), circuit)
  batch = random_batch(rng, 5, 6, 4)
  tau = 0.3
  up, down = train.forward_and_feedback(circuit, weights, batch)
  a = up.a[0]
  for l, w_l in enumerate(weights.w):
    signal = down.b_bar[l]
    if l < len(weights.w) - 1:
      signal = signal @ weights.v_bar[l].T
    h = a @ w_l.T + tau * signal
    a = jax.nn.relu(h)
  chex.assert_trees_all_close(
      modulation.modulated_output(circuit, weights, batch, tau), h,
      rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
      modulation.modulated_output(circuit, weights, batch, 0.0), up.output,
      rtol=1e-6, atol=1e-7)
