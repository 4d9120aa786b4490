"""The diagnostics measure what the theory speaks of."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sal_jax as sj
from sal_jax import diagnostics
from tests.conftest import random_batch


def test_effective_rank_of_identity_is_its_size_and_of_rank_one_is_one():
  np.testing.assert_allclose(sj.effective_rank(jnp.eye(7)), 7.0, rtol=1e-5)
  u = jnp.arange(1.0, 6.0)
  np.testing.assert_allclose(sj.effective_rank(jnp.outer(u, u)), 1.0,
                             rtol=1e-4)

def test_lemma1_gap_is_zero_for_transposed_pairs_and_angle_zero_for_tied():
  circuit = sj.Circuit(widths=(6, 8, 9, 4), method="sal")
  w = sj.init_weights(jax.random.key(0), circuit)
  w = w._replace(v_bar=tuple(v.T for v in w.v),
                 w_bar=tuple(m.T for m in w.w[1:]))
  np.testing.assert_allclose(diagnostics.lemma1_gap(w), 0.0, atol=1e-7)
  np.testing.assert_allclose(diagnostics.feedback_angle(circuit, w), 0.0,
                             atol=0.1)
  wide = sj.Circuit(widths=(6, 8, 9, 4), ratio=2.0)
  assert diagnostics.feedback_angle(
      wide, sj.init_weights(jax.random.key(0), wide)) is None

@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
def test_learned_learning_rate_is_the_spectrum_of_v_bar_v_bar_transposed(
    ratio):
  circuit = sj.Circuit(widths=(6, 8, 10, 4), ratio=ratio)
  weights = sj.init_weights(jax.random.key(0), circuit)
  spectrum = diagnostics.learned_learning_rate(weights)
  chex.assert_shape(spectrum, (len(weights.v_bar), 2))
  for (largest, smallest), v_bar in zip(spectrum, weights.v_bar):
    h = np.asarray(v_bar, np.float64) @ np.asarray(v_bar, np.float64).T
    eigenvalues = np.linalg.eigvalsh(h)
    np.testing.assert_allclose(largest, eigenvalues[-1], rtol=1e-4)
    np.testing.assert_allclose(smallest, max(eigenvalues[0], 0.0), rtol=1e-3,
                               atol=1e-6)
    # H is singular exactly when the downstream level is the narrower one.
    assert (smallest == 0) == (v_bar.shape[1] < v_bar.shape[0])

def test_gradient_cosine_is_one_for_backprop_and_not_for_random_feedback(rng):
  batch = random_batch(rng, 16, 6, 4)
  for method, expect_one in (("sgd", True), ("fa", False)):
    circuit = sj.Circuit(widths=(6, 8, 9, 4), method=method)
    opt = sj.reference_optimizer(circuit)
    state = sj.init_state(jax.random.key(0), circuit, opt)
    _, metrics = sj.make_step(circuit, opt, diagnostics=True)(state, batch)
    cos = np.asarray(metrics["grad_cosine"])
    np.testing.assert_allclose(cos[-1], 1.0, rtol=1e-5)  # output layer: exact
    assert np.allclose(cos, 1.0, atol=1e-5) == expect_one, cos


_CLIP_CIRCUIT = sj.Circuit(widths=(6, 8, 9, 4), method="sal")
