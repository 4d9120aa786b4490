"""Rule parameters as data, and training unrolled so it can be differentiated.

``MetaParams`` holds the numbers of the reference chain (learning rate and the
four family multipliers on a log scale, weight decay, momentum, clip norm)
and, optionally, a point of the rule family (``rules.RuleCoefficients``) as
arrays: a training program takes them as a traced argument, so one compiled
program serves every value, under ``jit``, ``grad`` and ``vmap``.

``unroll`` trains ``steps`` steps of the existing ``train.train_step`` from a
state and returns a meta-loss on held-out data: the loss after the last step,
or the mean over the steps. Its gradient with respect to the meta-parameters
is backpropagation through the whole unroll; ``remat_every`` checkpoints the
unroll in segments, so that the memory grows as about ``steps / k + k``
states instead of ``steps``. ``truncated_step`` does truncated
backpropagation: one window of an unroll, its meta-gradient, and the inner
state to carry into the next window.

With a hard clip (``optim.clip_by_global_norm``) the meta-objective is
piecewise smooth in every hyperparameter: whether each step is clipped
switches at points, and over many clipped steps the objective becomes jagged.
Build the optimizer with ``smooth_clip=True`` (or no clip) to differentiate
through training.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sal_jax import circuit as circuit_lib
from sal_jax import compute as compute_lib
from sal_jax import optim
from sal_jax import rules
from sal_jax import train

Array = jax.Array
META_LOSSES = ("last", "average")


@flax.struct.dataclass
class MetaParams:
  """The reference chain's numbers as a PyTree of arrays."""
  log_learning_rate: Array  # []
  log_multipliers: Array    # [4]: W, W̄, V, V̄
  weight_decay: Array       # []
  momentum: Array           # []
  clip_norm: Array          # []; ignored by an optimizer without a clip
  coefficients: rules.RuleCoefficients | None = None  # None: the paper's rules

  def hyperparams(self) -> dict[str, Array]:
    """The values ``optim.with_hyperparams`` sets in the optimizer state."""
    return dict(learning_rate=jnp.exp(self.log_learning_rate),
                multipliers=jnp.exp(self.log_multipliers),
                weight_decay=self.weight_decay, momentum=self.momentum,
                clip_norm=self.clip_norm)


def meta_params(learning_rate: float = 5e-3,
                multipliers=optim.REFERENCE_MULTIPLIERS,
                weight_decay: float = 1e-3, momentum: float = 0.9,
                clip_norm: float = 50.0,
                coefficients: rules.RuleCoefficients | None = None,
                ) -> MetaParams:
  """``MetaParams`` for these values (the reference setup's by default);
  ``coefficients`` makes the rules a point of the family to learn
  (``rules.paper_coefficients()`` starts at the paper's)."""
  optim.check_hyperparams(learning_rate=learning_rate, weight_decay=weight_decay,
                          momentum=momentum, clip_norm=clip_norm,
                          multipliers=multipliers)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return MetaParams(log_learning_rate=jnp.log(f32(learning_rate)),
                    log_multipliers=jnp.log(f32(multipliers)),
                    weight_decay=f32(weight_decay), momentum=f32(momentum),
                    clip_norm=f32(clip_norm), coefficients=coefficients)


def with_meta_params(state: train.TrainState,
                     meta: MetaParams) -> train.TrainState:
  """``state`` whose optimizer state holds ``meta``'s values (an optimizer
  from ``optim.reference``); traced values stay traced."""
  hyperparams = {k: v for k, v in meta.hyperparams().items()
                 if k in state.opt_state.hyperparams}
  return state.replace(
      opt_state=optim.with_hyperparams(state.opt_state, **hyperparams))


def unroll(circuit: circuit_lib.Circuit,
           optimizer: optax.GradientTransformation, meta: MetaParams,
           state: train.TrainState, batches: train.Batch,
           held_out: train.Batch, *, meta_loss: str = "last",
           remat_every: int | None = None,
           compute: compute_lib.Compute = compute_lib.DEFAULT,
           ) -> tuple[Array, train.TrainState]:
  """Trains one step per batch from ``state`` under ``meta``; traceable.

  Args:
    circuit, optimizer: as for ``train.train_step`` (the optimizer from
      ``optim.reference``, whose numbers ``meta`` replaces).
    meta: the meta-parameters; differentiate with respect to these.
    state: where training starts.
    batches: ``(x [T, B, ...], y [T, B, ...])``, one batch per step.
    held_out: ``(x, y)`` the meta-loss is measured on.
    meta_loss: "last": the held-out loss after the last step; "average": its
      mean over the states after each step.
    remat_every: checkpoint segments of this many steps (must divide T):
      backpropagation then stores one state per segment and recomputes the
      steps inside it.
    compute: how the step computes (``compute.Compute``).

  Returns:
    ``(meta_loss, state after T steps)``.
  """
  if meta_loss not in META_LOSSES:
    raise ValueError(f"unknown meta_loss {meta_loss!r}; expected one of "
                     f"{META_LOSSES}")
  steps = batches[0].shape[0]
  segment = remat_every or steps
  if steps % segment:
    raise ValueError(f"remat_every={remat_every} does not divide the "
                     f"{steps} steps")

  def held_out_loss(weights):
    return train.loss_and_accuracy(circuit.loss, weights.w, held_out)["loss"]

  def one_step(state, batch):
    state, _ = train.train_step(circuit, optimizer, state, batch,
                                compute=compute, coefficients=meta.coefficients)
    loss = held_out_loss(state.weights) if meta_loss == "average" else 0.0
    return state, loss

  def run_segment(state, segment_batches):
    return jax.lax.scan(one_step, state, segment_batches)

  if remat_every:
    run_segment = jax.checkpoint(run_segment)
  segments = jax.tree.map(
      lambda a: a.reshape(steps // segment, segment, *a.shape[1:]), batches)
  state = with_meta_params(state, meta)
  state, losses = jax.lax.scan(run_segment, state, segments)
  if meta_loss == "last":
    return held_out_loss(state.weights), state
  return jnp.mean(losses), state


@functools.partial(jax.jit, static_argnums=(0, 1),
                   static_argnames=("meta_loss", "remat_every"))
def truncated_step(circuit: circuit_lib.Circuit,
                   optimizer: optax.GradientTransformation, meta: MetaParams,
                   state: train.TrainState, batches: train.Batch,
                   held_out: train.Batch, *, meta_loss: str = "last",
                   remat_every: int | None = None,
                   ) -> tuple[Array, MetaParams, train.TrainState]:
  """One window of truncated backpropagation through training.

  Returns the window's meta-loss, its gradient with respect to ``meta`` and
  the inner state after the window, which the next window starts from (its
  dependence on ``meta`` is not differentiated: the truncation).
  """
  (loss, state), grads = jax.value_and_grad(
      lambda m: unroll(circuit, optimizer, m, state, batches, held_out,
                       meta_loss=meta_loss, remat_every=remat_every),
      has_aux=True)(meta)
  return loss, grads, state
