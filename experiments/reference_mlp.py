"""The rows the speed tools compare, on the reference MLP (784-200-200-200-10).

``backprop`` is the yardstick: ``jax.grad`` of the loss through the same optax
chain. The others are the circuit's methods, SAL at three downstream width
ratios.
"""

from __future__ import annotations

import functools
import math

import sal_jax as sj
from sal_jax import diagnostics
from sal_jax import train

WIDTHS = (784, 200, 200, 200, 10)
BATCH = 256

CIRCUITS = {
    "backprop": sj.Circuit(WIDTHS, method="sgd"),
    "sgd": sj.Circuit(WIDTHS, method="sgd"),
    "fa": sj.Circuit(WIDTHS, method="fa"),
    "kp": sj.Circuit(WIDTHS, method="kp"),
    "sal": sj.Circuit(WIDTHS, method="sal"),
    "sal_sqrt5": sj.Circuit(WIDTHS, method="sal", ratio=math.sqrt(5)),
    "sal_sqrt8": sj.Circuit(WIDTHS, method="sal", ratio=math.sqrt(8)),
}


def backprop_step(circuit, optimizer, state, batch):
  """The yardstick: autodiff gradient through the same optax chain (rounded
  to ``circuit.update_dtype``, if set, as the rules' updates are)."""
  grads = diagnostics.loss_gradient(circuit, state.weights.w, batch)
  grads = tuple(g.astype(circuit.update_dtype or g.dtype) for g in grads)
  return train.apply_gradients(optimizer, state,
                               state.weights._replace(w=grads)), {}


def step_fn(name, circuit, optimizer):
  """``step(state, batch) -> (state, metrics)`` of the row ``name``."""
  if name == "backprop":
    return functools.partial(backprop_step, circuit, optimizer)
  return functools.partial(train.train_step, circuit, optimizer)
