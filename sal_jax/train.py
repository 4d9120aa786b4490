"""Training state, the jitted step and the evaluator.

``train_step`` is the pure function: both streams, then the local rules
through an optax chain (docs/algorithm.md, "The rules"). ``make_step`` binds
the static circuit, optimizer and ``compute.Compute``, checks its input and
jits it, data-parallel over a mesh if given. Scanned epochs and vmapped
sweeps (``sweep``) reuse ``train_step`` unchanged.

A batch is ``(inputs, labels)``: inputs are float features [B, D], or uint8
images [B, ...] that the program scales to [-1, 1] and flattens
(``datasets.preprocess``); labels are integers [B], or multi-hot [B, O] for a
multi-label loss.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from sal_jax import checks
from sal_jax import circuit as circuit_lib
from sal_jax import compute as compute_lib
from sal_jax import datasets
from sal_jax import diagnostics as diagnostics_lib
from sal_jax import losses
from sal_jax import parallel
from sal_jax import rules

Array = jax.Array
Circuit = circuit_lib.Circuit
Compute = compute_lib.Compute
Weights = circuit_lib.Weights
Batch = tuple[Array, Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a PyTree."""
  step: Array
  weights: Weights
  opt_state: optax.OptState
  key: Array  # folded with the step for per-step randomness (mirror noise)


@functools.partial(jax.jit, static_argnums=(1, 2))
def init_state(key: Array, circuit: Circuit,
               optimizer: optax.GradientTransformation) -> TrainState:
  """Draws the weights from ``key`` and initialises the optimizer."""
  init_key, run_key = jax.random.split(key)
  weights = circuit_lib.init_weights(init_key, circuit)
  return TrainState(step=jnp.zeros((), jnp.int32), weights=weights,
                    opt_state=optimizer.init(weights), key=run_key)


def as_features(batch: Batch) -> Batch:
  """``batch`` with uint8 images preprocessed (``datasets.preprocess``)."""
  x, y = batch
  if x.dtype == jnp.uint8:
    return datasets.preprocess(x, y)
  return x.astype(jnp.float32), y


def forward_and_feedback(circuit: Circuit, weights: Weights, batch: Batch):
  """Upstream pass, output error and downstream pass for one batch."""
  x, y = as_features(batch)
  up = circuit_lib.upstream(weights.w, x)
  loss = losses.LOSSES[circuit.loss]
  down = circuit_lib.downstream(circuit, weights, up, loss.error(up.output, y))
  return up, down


def train_step(circuit: Circuit, optimizer: optax.GradientTransformation,
               state: TrainState, batch: Batch, *,
               compute: Compute = compute_lib.DEFAULT,
               diagnostics: bool = False,
               coefficients: rules.RuleCoefficients | None = None,
               ) -> tuple[TrainState, dict[str, Array]]:
  """One step of the circuit: both streams, then the local rules via optax.

  Metrics are measured on the batch before the update. ``coefficients``
  picks a point of the rule family (``rules.RuleCoefficients``; None: the
  paper's rules).
  """
  batch = as_features(batch)
  up, down = forward_and_feedback(circuit, state.weights, batch)
  grads = rules.plasticity(circuit, state.weights, up, down,
                           key=jax.random.fold_in(state.key, state.step),
                           batched=compute.products_batched(),
                           update_dtype=compute.update_dtype,
                           coefficients=coefficients)
  loss = losses.LOSSES[circuit.loss]
  metrics = {
      "loss": _batch_mean(loss.value(up.output, batch[1])),
      "accuracy": _batch_mean(loss.correct(up.output, batch[1])),
  }
  if diagnostics:
    metrics.update(diagnostics_lib.all_diagnostics(
        circuit, state.weights, batch, grads))
  return apply_gradients(optimizer, state, grads), metrics


def _guarded_step(circuit: Circuit, optimizer: optax.GradientTransformation,
                  state: TrainState, batch: Batch, **kwargs):
  """``train_step``, but the state stays as it was if float inputs or
  targets hold a NaN or inf (uint8 images cannot)."""
  new_state, metrics = train_step(circuit, optimizer, state, batch, **kwargs)
  floats = [a for a in batch if jnp.issubdtype(a.dtype, jnp.floating)]
  if not floats:
    return new_state, metrics
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in floats]))
  kept = jax.lax.cond(finite, lambda: new_state, lambda: state)
  return kept, dict(metrics, inputs_finite=finite)


def _batch_mean(per_example_B: Array) -> Array:
  """The mean, as a sum of shares (one fused reduction on a GPU)."""
  return jnp.sum(per_example_B / per_example_B.shape[0])


def apply_gradients(optimizer: optax.GradientTransformation,
                    state: TrainState, grads: Weights) -> TrainState:
  """The next state: ``grads`` (signed as gradients) through ``optimizer``."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.weights)
  return state.replace(step=state.step + 1,
                       weights=optax.apply_updates(state.weights, updates),
                       opt_state=opt_state)


def make_step(circuit: Circuit, optimizer: optax.GradientTransformation, *,
              compute: Compute | None = None, diagnostics: bool = False,
              donate: bool = True, mesh: jax.sharding.Mesh | None = None):
  """Returns ``step(state, batch) -> (state, metrics)``, jitted.

  The state passed in is donated: its buffers are reused for the new state
  and the old one is gone. Pass ``donate=False`` to keep old states (to
  compare weights before and after a step).

  With ``mesh`` (``parallel.data_mesh()``), the step is data parallel: the
  state is replicated, each batch split over the mesh's devices, and the
  rules' batch means reduce across them, so the update is the single-device
  one. Each call then blocks until its result is ready (on CPU, a
  multi-device program dispatched before the previous one finished can
  deadlock XLA's collectives).

  The returned function checks the state's shapes and the batch (shape,
  dtype; for numpy arrays also finite inputs and labels in range) before
  dispatch and raises ``ValueError`` naming the problem. Device arrays are
  not read on the host (that would stall dispatch): a step given non-finite
  float inputs or targets leaves the state as it was and reports
  ``metrics["inputs_finite"] = False``, at the cost of one reduction over the
  batch and a select over the state.
  """
  compute = compute or compute_lib.DEFAULT
  fn = functools.partial(_guarded_step, circuit, optimizer, compute=compute,
                         diagnostics=diagnostics)
  donate_argnums = (0,) if donate else ()
  if mesh is None:
    jitted = compute.jit(fn, donate_argnums=donate_argnums)
  else:
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P(parallel.DATA))
    jitted = compute.jit(fn, multi_device=True, donate_argnums=donate_argnums,
                         in_shardings=(replicated, split),
                         out_shardings=replicated)

  def step(state: TrainState, batch: Batch):
    checks.check_state(circuit, state.weights)
    checks.check_batch(circuit, batch)
    if mesh is None:
      return jitted(state, batch)
    parallel.check_divisible(np.shape(batch[0])[0], mesh)
    return jax.block_until_ready(jitted(state, batch))

  return step


def loss_and_accuracy(loss_name: str, w: tuple[Array, ...], batch: Batch,
                      batch_size: int = 2000) -> dict[str, Array]:
  """Mean loss and accuracy of the forward weights ``w`` over every example
  of ``batch``, traceable.

  Chunks of ``batch_size`` run in a ``lax.scan``, the remainder once more;
  uint8 images are preprocessed chunk by chunk.
  """
  x, y = batch
  n = x.shape[0]
  loss = losses.LOSSES[loss_name]

  def sums(chunk):
    features, labels = as_features(chunk)
    logits = circuit_lib.upstream(w, features).output
    return jnp.stack([jnp.sum(loss.value(logits, labels)),
                      jnp.sum(loss.correct(logits, labels))])

  full = (n // batch_size) * batch_size
  total = jnp.zeros(2)
  if full:
    chunks = (x[:full].reshape((-1, batch_size) + x.shape[1:]),
              y[:full].reshape((-1, batch_size) + y.shape[1:]))
    total += jax.lax.scan(lambda c, b: (c + sums(b), None), total, chunks)[0]
  if full < n:
    total += sums((x[full:], y[full:]))
  return {"loss": total[0] / n, "accuracy": total[1] / n}


@functools.lru_cache(maxsize=64)
def _evaluator(loss_name: str, compute: Compute, batch_size: int,
               members: bool):
  # Keyed by what the forward pass depends on, not the whole circuit: every
  # method of the same widths shares one compiled evaluation.
  fn = functools.partial(loss_and_accuracy, loss_name, batch_size=batch_size)
  return compute.jit(jax.vmap(fn, in_axes=(0, None)) if members else fn)


def evaluate(circuit: Circuit, weights: Weights, batch: Batch,
             batch_size: int = 2000, *,
             compute: Compute | None = None) -> dict[str, Array]:
  """Mean loss and accuracy over a held-out set, as one compiled program.

  ``batch`` is a whole split, features or uint8 images (module doc);
  ``batch_size`` only bounds the memory each chunk takes. Returns scalars.
  """
  checks.check_batch(circuit, batch)
  checks.check_batch_size(batch_size)
  return _evaluator(circuit.loss, compute or compute_lib.DEFAULT, batch_size,
                    False)(weights.w, tuple(batch))


def evaluate_members(circuit: Circuit, weights: Weights, batch: Batch,
                     batch_size: int = 2000, *,
                     compute: Compute | None = None) -> dict[str, Array]:
  """``evaluate`` for every member of a sweep (weights with a leading member
  axis); returns [members] arrays."""
  checks.check_batch(circuit, batch)
  checks.check_batch_size(batch_size)
  return _evaluator(circuit.loss, compute or compute_lib.DEFAULT, batch_size,
                    True)(weights.w, tuple(batch))
