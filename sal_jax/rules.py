"""The local plasticity rules (ALGORITHM.md; Eqs. 5-8 of arXiv 2412.20018).

Each rule is (postsynaptic signal delivered by the other synapse class) x
(presynaptic activity)ᵀ, averaged over the batch:

    ΔW^l  = [D_u^{l+1} V̄^l D_d^{l+1} h̄^{l+1}] (a^l)ᵀ      (D_u^L = V̄^{L-1} = I)
    ΔW̄^k = [D_d^k V^k a^k] (D_d^{k+1} h̄^{k+1})ᵀ
    ΔV^k  = [D_d^k h̄^k] (a^k)ᵀ
    ΔV̄^l = [h^{l+1} or a^{l+1}] (D_d^{l+1} h̄^{l+1})ᵀ

``plasticity`` returns G = -ΔM (decay excluded) with the tree structure of the
weights, so that it can be fed to any optax chain as if it were a gradient;
the weight decay -γM belongs to the optimizer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sal_jax import circuit as circuit_lib

Array = jax.Array
Circuit = circuit_lib.Circuit
Weights = circuit_lib.Weights


def _outer_mean(post_BxM: Array, pre_BxN: Array) -> Array:
  """Batch mean of post ⊗ pre, an (M x N) matrix."""
  return post_BxM.T @ pre_BxN / post_BxM.shape[0]


def delta_w(weights: Weights, up: circuit_lib.Upstream,
            down: circuit_lib.Downstream) -> tuple[Array, ...]:
  """ΔW^l: the signal V̄^l sends onto upstream neuron l+1, times a^l."""
  deltas = []
  num_layers = len(weights.w)
  for l in range(num_layers):
    signal = down.b_bar[l]  # D_d^{l+1} h̄^{l+1}
    if l < num_layers - 1:
      if weights.v_bar:
        signal = signal @ weights.v_bar[l].T
      signal = signal * (up.h[l] > 0)  # D_u^{l+1}
    deltas.append(_outer_mean(signal, up.a[l]))
  return tuple(deltas)


def delta_w_bar(weights: Weights, up: circuit_lib.Upstream,
                down: circuit_lib.Downstream) -> tuple[Array, ...]:
  """ΔW̄^k: the signal V^k sends onto downstream neuron k, times D_d h̄^{k+1}."""
  deltas = []
  for i in range(len(weights.w_bar)):
    signal = up.a[i + 1]
    if weights.v:
      signal = signal @ weights.v[i].T
    deltas.append(_outer_mean(down.gate[i] * signal, down.b_bar[i + 1]))
  return tuple(deltas)


def delta_w_bar_mirror(key: Array, weights: Weights, batch_size: int,
                       noise_std: float) -> tuple[Array, ...]:
  """Weight mirroring: ΔW̄^k = ξ (W^k ξ)ᵀ with ξ ~ N(0, σ²), batch-averaged."""
  deltas = []
  keys = jax.random.split(key, max(1, len(weights.w_bar)))
  for i in range(len(weights.w_bar)):
    w_k = weights.w[i + 1]
    xi = noise_std * jax.random.normal(keys[i], (batch_size, w_k.shape[1]),
                                       w_k.dtype)
    deltas.append(_outer_mean(xi, xi @ w_k.T))
  return tuple(deltas)


def delta_v(weights: Weights, up: circuit_lib.Upstream,
            down: circuit_lib.Downstream) -> tuple[Array, ...]:
  """ΔV^k = [D_d^k h̄^k] (a^k)ᵀ."""
  return tuple(_outer_mean(down.b_bar[i], up.a[i + 1])
               for i in range(len(weights.v)))


def delta_v_bar(weights: Weights, up: circuit_lib.Upstream,
                down: circuit_lib.Downstream,
                signal: str = "preactivation") -> tuple[Array, ...]:
  """ΔV̄^{k-1} = [h^k or a^k] (D_d^k h̄^k)ᵀ."""
  post = up.h if signal == "preactivation" else up.a[1:]
  return tuple(_outer_mean(post[i], down.b_bar[i])
               for i in range(len(weights.v_bar)))


def plasticity(circuit: Circuit, weights: Weights, up: circuit_lib.Upstream,
               down: circuit_lib.Downstream,
               key: Array | None = None) -> Weights:
  """G = -ΔM for every family; zeros for families that do not learn.

  Args:
    circuit: static configuration.
    weights: current weights.
    up: upstream activity from ``circuit.upstream``.
    down: downstream activity from ``circuit.downstream``.
    key: PRNG key, needed by weight mirroring only.

  Returns:
    Updates with the tree structure of ``weights``, signed like gradients.
  """
  plastic = circuit.plastic_families
  neg = lambda deltas: tuple(-d for d in deltas)
  zeros = lambda family: tuple(jnp.zeros_like(m) for m in family)

  g_w = neg(delta_w(weights, up, down))
  if "w_bar" not in plastic:
    g_w_bar = zeros(weights.w_bar)
  elif circuit.spec.w_bar_rule == "mirror":
    if key is None:
      raise ValueError("weight mirroring needs a PRNG key for its noise")
    g_w_bar = neg(delta_w_bar_mirror(key, weights, up.a[0].shape[0],
                                     circuit.mirror_noise_std))
  else:
    g_w_bar = neg(delta_w_bar(weights, up, down))
  g_v = neg(delta_v(weights, up, down)) if "v" in plastic else zeros(weights.v)
  g_v_bar = (neg(delta_v_bar(weights, up, down, circuit.v_bar_signal))
             if "v_bar" in plastic else zeros(weights.v_bar))
  return Weights(w=g_w, w_bar=g_w_bar, v=g_v, v_bar=g_v_bar)
