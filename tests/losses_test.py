"""Losses: the output error is minus the loss derivative; accuracies."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sal_jax as sj
from tests.conftest import random_batch


@pytest.mark.parametrize("name", sorted(sj.LOSSES))
def test_output_error_is_minus_the_loss_derivative(rng, name):
  loss = sj.LOSSES[name]
  logits = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
  _, y = random_batch(rng, 5, 1, 4, multi_label=loss.multi_label)
  grad = jax.grad(lambda z: jnp.sum(loss.value(z, y)))(logits)
  chex.assert_trees_all_close(loss.error(logits, y), -grad, rtol=1e-5,
                              atol=1e-7)

def test_multi_label_accuracy_is_mean_per_label_accuracy():
  loss = sj.LOSSES["sigmoid_cross_entropy"]
  logits = jnp.array([[1.0, -1.0, 1.0, -1.0]])
  targets = jnp.array([[1.0, 1.0, 0.0, 0.0]])
  np.testing.assert_allclose(loss.correct(logits, targets), [0.5])
