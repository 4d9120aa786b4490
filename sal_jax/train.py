"""Training state and the jitted step: forward, feedback, local updates.

``train_step`` is the pure function; ``make_step`` binds the static circuit
and optimizer, checks its input and jits it with the state donated. Scans over
epochs and vmaps over seeds reuse ``train_step`` unchanged.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sal_jax import checks
from sal_jax import circuit as circuit_lib
from sal_jax import diagnostics as diagnostics_lib
from sal_jax import losses
from sal_jax import rules
from sal_jax import xla_options

Array = jax.Array
Circuit = circuit_lib.Circuit
Weights = circuit_lib.Weights
Batch = tuple[Array, Array]  # (inputs_BxD, labels_B or multi-hot targets_BxO)


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a PyTree."""
  step: Array
  weights: Weights
  opt_state: optax.OptState
  key: Array  # folded with the step for per-step randomness (mirror noise)


def init_state(key: Array, circuit: Circuit,
               optimizer: optax.GradientTransformation) -> TrainState:
  """Draws the weights from ``key`` and initialises the optimizer."""
  init_key, run_key = jax.random.split(key)
  weights = circuit_lib.init_weights(init_key, circuit)
  return TrainState(step=jnp.zeros((), jnp.int32), weights=weights,
                    opt_state=optimizer.init(weights), key=run_key)


def forward_and_feedback(circuit: Circuit, weights: Weights, batch: Batch):
  """Upstream pass, output error and downstream pass for one batch."""
  x, y = batch
  up = circuit_lib.upstream(weights.w, x.astype(jnp.float32))
  loss = losses.LOSSES[circuit.loss]
  down = circuit_lib.downstream(circuit, weights, up, loss.error(up.output, y))
  return up, down


def train_step(circuit: Circuit, optimizer: optax.GradientTransformation,
               state: TrainState, batch: Batch, *,
               diagnostics: bool = False) -> tuple[TrainState, dict[str, Array]]:
  """One step of the circuit: both streams, then the local rules via optax.

  Metrics are measured on the batch before the update.
  """
  up, down = forward_and_feedback(circuit, state.weights, batch)
  grads = rules.plasticity(circuit, state.weights, up, down,
                           key=jax.random.fold_in(state.key, state.step))
  loss = losses.LOSSES[circuit.loss]
  metrics = {
      "loss": _batch_mean(loss.value(up.output, batch[1])),
      "accuracy": _batch_mean(loss.correct(up.output, batch[1])),
  }
  if diagnostics:
    metrics.update(diagnostics_lib.all_diagnostics(
        circuit, state.weights, batch, grads))
  return apply_gradients(optimizer, state, grads), metrics


def _batch_mean(per_example_B: Array) -> Array:
  """The mean, as a sum of shares: XLA:GPU fuses this division into the
  reduction, where ``jnp.mean``'s comes after it as a kernel of its own."""
  return jnp.sum(per_example_B / per_example_B.shape[0])


def apply_gradients(optimizer: optax.GradientTransformation,
                    state: TrainState, grads: Weights) -> TrainState:
  """The next state: ``grads`` (signed as gradients) through ``optimizer``."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.weights)
  return state.replace(step=state.step + 1,
                       weights=optax.apply_updates(state.weights, updates),
                       opt_state=opt_state)


def make_step(circuit: Circuit, optimizer: optax.GradientTransformation, *,
              diagnostics: bool = False):
  """Returns ``step(state, batch) -> (state, metrics)``, jitted, state donated.

  The returned function checks the batch (shape, dtype, label range) before
  dispatch and raises ``ValueError`` naming the problem.
  """
  jitted = jax.jit(
      functools.partial(train_step, circuit, optimizer,
                        diagnostics=diagnostics),
      donate_argnums=0, compiler_options=xla_options.OPTIONS)

  def step(state: TrainState, batch: Batch):
    checks.check_batch(circuit, batch)
    return jitted(state, batch)

  return step


def evaluate(circuit: Circuit, weights: Weights, batch: Batch,
             batch_size: int = 2048) -> dict[str, float]:
  """Mean loss and accuracy over a held-out set, in chunks of ``batch_size``."""
  checks.check_batch(circuit, batch)
  checks.check_batch_size(batch_size)
  x, y = batch
  totals = np.zeros(2)
  for start in range(0, x.shape[0], batch_size):
    chunk = (x[start:start + batch_size], y[start:start + batch_size])
    totals += np.asarray(_eval_sums(circuit, weights, chunk))
  return {"loss": float(totals[0] / x.shape[0]),
          "accuracy": float(totals[1] / x.shape[0])}


def loss_and_correct_sums(circuit: Circuit, weights: Weights,
                          batch: Batch) -> Array:
  """[Σ loss, Σ correct] over a batch: what evaluation accumulates."""
  x, y = batch
  logits = circuit_lib.upstream(weights.w, x.astype(jnp.float32)).output
  loss = losses.LOSSES[circuit.loss]
  return jnp.stack([jnp.sum(loss.value(logits, y)),
                    jnp.sum(loss.correct(logits, y))])


_eval_sums = jax.jit(loss_and_correct_sums, static_argnums=0,
                     compiler_options=xla_options.OPTIONS)
