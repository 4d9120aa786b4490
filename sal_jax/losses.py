"""Losses and the output error h̄^L = -∂f/∂ŷ that enters the feedback stream.

Each loss is per example; F is its batch mean. Errors are written in closed
form (no autodiff in the learning path); tests check them against jax.grad.
Targets are integer labels for the single-label losses and {0,1} multi-hot
vectors for ``sigmoid_cross_entropy``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class Loss(NamedTuple):
  """A per-example loss, its negative derivative, and its accuracy."""
  value: Callable[[Array, Array], Array]   # (logits_BxO, targets) -> loss_B
  error: Callable[[Array, Array], Array]   # (logits_BxO, targets) -> -∂f/∂ŷ
  correct: Callable[[Array, Array], Array]  # fraction correct per example
  multi_label: bool


def _one_hot(labels_B: Array, logits_BxO: Array) -> Array:
  return jax.nn.one_hot(labels_B, logits_BxO.shape[-1], dtype=logits_BxO.dtype)


def _argmax_correct(logits_BxO, labels_B):
  return (jnp.argmax(logits_BxO, -1) == labels_B).astype(jnp.float32)


def _softmax_ce(logits_BxO, labels_B):
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxO, labels_B)


def _softmax_ce_error(logits_BxO, labels_B):
  return _one_hot(labels_B, logits_BxO) - jax.nn.softmax(logits_BxO)


def _mse(logits_BxO, labels_B):
  """½‖ŷ - onehot(y)‖², summed over outputs."""
  return 0.5 * jnp.sum(jnp.square(logits_BxO - _one_hot(labels_B, logits_BxO)),
                       -1)


def _mse_error(logits_BxO, labels_B):
  return _one_hot(labels_B, logits_BxO) - logits_BxO


def _sigmoid_ce(logits_BxO, targets_BxO):
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits_BxO, targets_BxO),
                 -1)


def _sigmoid_ce_error(logits_BxO, targets_BxO):
  return targets_BxO - jax.nn.sigmoid(logits_BxO)


def _per_label_correct(logits_BxO, targets_BxO):
  """Mean per-label accuracy (a logit > 0 predicts the label present)."""
  return jnp.mean(((logits_BxO > 0) == (targets_BxO > 0.5)).astype(jnp.float32),
                  -1)


LOSSES = {
    "softmax_cross_entropy": Loss(_softmax_ce, _softmax_ce_error,
                                  _argmax_correct, multi_label=False),
    "mse": Loss(_mse, _mse_error, _argmax_correct, multi_label=False),
    "sigmoid_cross_entropy": Loss(_sigmoid_ce, _sigmoid_ce_error,
                                  _per_label_correct, multi_label=True),
}
