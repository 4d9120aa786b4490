"""The family of local rules: the paper's point, Hebbian and Oja terms, locality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sal_jax as sj
from sal_jax import rules
from sal_jax import train

FAMILIES = ("w", "w_bar", "v", "v_bar")


def _signals(circuit, seed=0, batch_size=5):
  weights = sj.init_weights(jax.random.key(seed), circuit)
  rng = np.random.default_rng(seed)
  d_in, d_out = circuit.upstream_widths[0], circuit.upstream_widths[-1]
  batch = (jnp.asarray(rng.standard_normal((batch_size, d_in)), jnp.float32),
           jnp.asarray(rng.integers(0, d_out, batch_size), jnp.int32))
  return weights, batch


def _coefficients(**rows):
  zero = jnp.zeros(4, jnp.float32)
  return rules.RuleCoefficients(**{f: jnp.asarray(rows.get(f, zero),
                                                  jnp.float32)
                                   for f in FAMILIES})


def _updates(circuit, weights, batch, coefficients):
  up, down = train.forward_and_feedback(circuit, weights, batch)
  return rules.plasticity(circuit, weights, up, down, key=jax.random.key(1),
                          coefficients=coefficients)


@pytest.mark.parametrize("method, v_bar_signal", [
    ("sal", "preactivation"), ("sal", "activity"), ("kp", "preactivation"),
    ("fa", "preactivation"), ("wm", "preactivation"),
    ("sgd", "preactivation")])
def test_the_paper_point_of_the_family_is_each_methods_fixed_rules(
    method, v_bar_signal):
  circuit = sj.Circuit((6, 8, 7, 4), method=method, v_bar_signal=v_bar_signal)
  weights, batch = _signals(circuit)
  fixed = _updates(circuit, weights, batch, None)
  family = _updates(circuit, weights, batch, rules.paper_coefficients())
  for a, b in zip(jax.tree.leaves(fixed), jax.tree.leaves(family)):
    np.testing.assert_array_equal(a, b)


def test_the_hebbian_term_is_the_synapses_own_post_times_pre():
  circuit = sj.Circuit((6, 8, 7, 4))
  weights, batch = _signals(circuit)
  hebbian = jnp.array([0.0, 1.0, 0.0, 0.0])
  g = _updates(circuit, weights, batch, _coefficients(
      **{f: hebbian for f in FAMILIES}))
  up, down = train.forward_and_feedback(circuit, weights, batch)
  mean_outer = lambda y, x: np.einsum("bi,bj->ij", y, x) / y.shape[0]
  np.testing.assert_allclose(-g.w[0], mean_outer(up.a[1], up.a[0]), rtol=1e-5)
  np.testing.assert_allclose(-g.w[-1], mean_outer(up.output, up.a[-1]),
                             rtol=1e-5)
  np.testing.assert_allclose(-g.w_bar[0],
                             mean_outer(down.b_bar[0], down.b_bar[1]),
                             rtol=1e-5, atol=1e-8)
  paper = _updates(circuit, weights, batch, rules.paper_coefficients())
  for family in ("v", "v_bar"):  # their own activities are the paper's factors
    for a, b in zip(getattr(g, family), getattr(paper, family)):
      np.testing.assert_allclose(a, b, rtol=1e-6)


def test_hebbian_and_oja_terms_read_only_the_synapses_own_neurons():
  circuit = sj.Circuit((6, 8, 7, 4))
  weights, batch = _signals(circuit)
  others = weights._replace(  # the heterosynaptic inputs of W's paper term
      v_bar=tuple(2.0 * m for m in weights.v_bar))
  for row, local in (([0.0, 1.0, 1.0, 1.0], True), ([1.0, 0.0, 0.0, 0.0],
                                                     False)):
    coefficients = _coefficients(w=row)
    a = _updates(circuit, weights, batch, coefficients).w
    b = _updates(circuit, others, batch, coefficients).w
    same = all(np.array_equal(x, y) for x, y in zip(a, b))
    assert same == local


def test_ojas_term_brings_a_linear_neurons_weights_to_unit_norm():
  # Widths (5, 6, 1): W^1 feeds the linear output neuron. Only W^1 learns,
  # by Hebbian + Oja terms (rows per matrix): Δw = y a - y² w.
  circuit = sj.Circuit((5, 6, 1), method="fa")
  weights, _ = _signals(circuit)
  coefficients = _coefficients(w=[[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
  x = jax.random.normal(jax.random.key(2), (400, 64, 5)) * jnp.array(
      [[[3.0, 1.0, 0.5, 0.3, 0.1]]])
  labels = jnp.zeros(64, jnp.int32)  # no term here reads the error

  def step(weights, x_batch):
    g = _updates(circuit, weights, (x_batch, labels), coefficients)
    return jax.tree.map(lambda m, d: m - 0.01 * d, weights, g), None

  trained, _ = jax.lax.scan(step, weights, x)
  np.testing.assert_allclose(jnp.linalg.norm(trained.w[1]), 1.0, rtol=0.02)
  np.testing.assert_array_equal(trained.w[0], weights.w[0])  # row of zeros


def test_a_zero_row_freezes_its_matrix_and_decay_shrinks_it():
  circuit = sj.Circuit((6, 8, 7, 4))
  weights, batch = _signals(circuit)
  g = _updates(circuit, weights, batch, _coefficients(
      w=[[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.5]]))
  assert not np.any(g.w[1])
  np.testing.assert_allclose(g.w[2], 0.5 * weights.w[2], rtol=1e-6)
