"""What the theory predicts, measured: alignment, Lemma-1 gap, effective rank."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sal_jax import circuit as circuit_lib
from sal_jax import losses

Array = jax.Array


def cosine(a: Array, b: Array) -> Array:
  """Cosine similarity of two arrays, flattened, in float32 (or wider)."""
  a = a.ravel().astype(jnp.promote_types(a.dtype, jnp.float32))
  b = b.ravel().astype(jnp.promote_types(b.dtype, jnp.float32))
  return jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)


def loss_gradient(circuit: circuit_lib.Circuit, w: tuple[Array, ...],
                  batch) -> tuple[Array, ...]:
  """∇_W F by autodiff of the batch-mean loss (the oracle, never the rule)."""
  x, y = batch
  loss = losses.LOSSES[circuit.loss]

  def mean_loss(w):
    logits = circuit_lib.upstream(w, x.astype(jnp.float32)).output
    return jnp.mean(loss.value(logits, y))

  return jax.grad(mean_loss)(w)


def gradient_cosine(circuit, weights, batch, g_w) -> Array:
  """Per layer, cos(ΔW_rule, -∇_W F) = cos(G_W, ∇_W F); 1 means backprop."""
  true = loss_gradient(circuit, weights.w, batch)
  return jnp.stack([cosine(g, t) for g, t in zip(g_w, true)])


def lemma1_gap(weights: circuit_lib.Weights) -> Array:
  """Per hidden level k, ‖V^k - (V̄^{k-1})ᵀ‖ / ‖V^k‖ (Lemma 1 drives it to 0)."""
  return jnp.stack([jnp.linalg.norm(v - v_bar.T) / jnp.linalg.norm(v)
                    for v, v_bar in zip(weights.v, weights.v_bar)])


def learned_learning_rate(weights: circuit_lib.Weights) -> Array:
  """Per level l, the largest and smallest eigenvalue of H = V̄^l (V̄^l)ᵀ.

  The Theorem's learned learning rate: at stationarity ΔW = H·(-∇_W F) - γW.
  Returns [levels, 2]; the smallest is 0 where V̄^l has fewer columns
  (downstream neurons) than rows, since H is then singular.
  """
  rows = []
  for v_bar in weights.v_bar:
    s = jnp.linalg.svd(v_bar, compute_uv=False)  # descending
    smallest = s[-1] ** 2 if v_bar.shape[1] >= v_bar.shape[0] else 0.0
    rows.append(jnp.stack([s[0] ** 2, jnp.asarray(smallest, s.dtype)]))
  return jnp.stack(rows)


def feedback_angle(circuit, weights) -> Array | None:
  """Per hidden level k, the angle in degrees between W̄^k and (W^k)ᵀ.

  None where shapes differ (downstream ratio ≠ 1) or there is no W̄.
  """
  w_bar = circuit_lib.feedback_matrices(circuit, weights)
  pairs = list(zip(w_bar, weights.w[1:]))
  if not pairs or any(wb.shape != w.T.shape for wb, w in pairs):
    return None
  cos = jnp.stack([cosine(wb, w.T) for wb, w in pairs])
  return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def effective_rank(m: Array) -> Array:
  """Roy & Vetterli (2007): exp of the entropy of normalised singular values."""
  s = jnp.linalg.svd(m, compute_uv=False)
  p = s / jnp.sum(s)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)),
                               0.0))
  return jnp.exp(entropy)


def all_diagnostics(circuit, weights, batch, grads) -> dict[str, Array]:
  """The per-step diagnostics ``make_step(..., diagnostics=True)`` reports."""
  out = {"grad_cosine": gradient_cosine(circuit, weights, batch, grads.w)}
  if weights.v:
    out["lemma1_gap"] = lemma1_gap(weights)
  angle = feedback_angle(circuit, weights)
  if angle is not None:
    out["feedback_angle"] = angle
  return out
