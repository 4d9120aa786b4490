"""The local plasticity rules (docs/algorithm.md, "The rules"; Eqs. 5-8).

Each rule is (postsynaptic signal delivered by the other synapse class) x
(presynaptic activity)ᵀ, averaged over the batch:

    ΔW^l  = [D_u^{l+1} V̄^l D_d^{l+1} h̄^{l+1}] (a^l)ᵀ      (D_u^L = V̄^{L-1} = I)
    ΔW̄^k = [D_d^k V^k a^k] (D_d^{k+1} h̄^{k+1})ᵀ
    ΔV^k  = [D_d^k h̄^k] (a^k)ᵀ
    ΔV̄^l = [h^{l+1} or a^{l+1}] (D_d^{l+1} h̄^{l+1})ᵀ

The ``*_factors`` functions return each rule's (post_BxM, pre_BxN) pairs;
``plasticity`` forms all the outer products of a step together, optionally
as one batched product per shape (``compute.Compute.batched_products``).

``plasticity`` returns G = -ΔM (decay excluded) with the tree structure of the
weights, so that it can be fed to any optax chain as if it were a gradient;
the weight decay -γM belongs to the optimizer. Given ``RuleCoefficients`` it
returns a point of a family of local rules instead, of which the paper's are
one (docs/algorithm.md, "A family of local rules").
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from sal_jax import circuit as circuit_lib

Array = jax.Array
Circuit = circuit_lib.Circuit
Weights = circuit_lib.Weights
Factors = list[tuple[Array, Array]]  # (post_BxM, pre_BxN) per matrix


def _batched(fn: Callable[[Array, Array], Array],
             pairs: Sequence[tuple[Array, Array]],
             batched: bool) -> list[Array]:
  """``[fn(a, b) for a, b in pairs]``; if batched, one vmapped call per shape."""
  if not batched:
    return [fn(a, b) for a, b in pairs]
  groups: dict[tuple, list[int]] = {}
  for i, (a, b) in enumerate(pairs):
    groups.setdefault((a.shape, a.dtype, b.shape, b.dtype), []).append(i)
  results: list[Array | None] = [None] * len(pairs)
  for members in groups.values():
    if len(members) == 1:
      results[members[0]] = fn(*pairs[members[0]])
      continue
    stacked = jax.vmap(fn)(jnp.stack([pairs[i][0] for i in members]),
                           jnp.stack([pairs[i][1] for i in members]))
    for j, i in enumerate(members):
      results[i] = stacked[j]
  return results


def _outer_mean(post_BxM: Array, pre_BxN: Array) -> Array:
  """Batch mean of post ⊗ pre, an (M x N) matrix."""
  return post_BxM.T @ pre_BxN / post_BxM.shape[0]


def outer_means(pairs: Sequence[tuple[Array, Array]],
                batched: bool = True) -> list[Array]:
  """Batch means of post ⊗ pre for every pair, batched by shape if asked.

  Only equal shapes share a product; a transposed product would need its
  result copied back to its matrix's layout.
  """
  return _batched(_outer_mean, pairs, batched)


def _matmuls_t(pairs: Sequence[tuple[Array, Array]],
               batched: bool) -> list[Array]:
  """``x_BxN @ m_MxNᵀ`` for every (x, m) pair."""
  return _batched(lambda x, m: x @ m.T, pairs, batched)


def upstream_feedback(weights: Weights, down: circuit_lib.Downstream,
                      batched: bool = True) -> list[Array]:
  """V̄^l D_d^{l+1} h̄^{l+1}: what V̄ delivers to upstream level l+1.

  The output level gets the error itself (V̄^{L-1} = I), and so does every
  level of a method without V̄.
  """
  signals = list(down.b_bar)  # D_d^{l+1} h̄^{l+1}
  if weights.v_bar:
    signals[:-1] = _matmuls_t(list(zip(signals[:-1], weights.v_bar)), batched)
  return signals


def w_factors(weights: Weights, up: circuit_lib.Upstream,
              down: circuit_lib.Downstream, batched: bool = True) -> Factors:
  """ΔW^l: the signal V̄^l sends onto upstream neuron l+1, times a^l."""
  signals = upstream_feedback(weights, down, batched)
  for l in range(len(weights.w) - 1):
    signals[l] = signals[l] * (up.h[l] > 0)  # D_u^{l+1}
  return list(zip(signals, up.a))


def w_bar_factors(weights: Weights, up: circuit_lib.Upstream,
                  down: circuit_lib.Downstream, batched: bool = True) -> Factors:
  """ΔW̄^k: the signal V^k sends onto downstream neuron k, times D_d h̄^{k+1}."""
  signals = list(up.a[1:])
  if weights.v:
    signals = _matmuls_t(list(zip(signals, weights.v)), batched)
  return [(down.gate[i] * signals[i], down.b_bar[i + 1])
          for i in range(len(weights.w_bar))]


def w_bar_mirror_factors(key: Array, weights: Weights, batch_size: int,
                         noise_std: float) -> Factors:
  """Weight mirroring: ΔW̄^k = ξ (W^k ξ)ᵀ with ξ ~ N(0, σ²), batch-averaged."""
  factors = []
  keys = jax.random.split(key, max(1, len(weights.w_bar)))
  for i in range(len(weights.w_bar)):
    w_k = weights.w[i + 1]
    xi = noise_std * jax.random.normal(keys[i], (batch_size, w_k.shape[1]),
                                       w_k.dtype)
    factors.append((xi, xi @ w_k.T))
  return factors


def v_factors(weights: Weights, up: circuit_lib.Upstream,
              down: circuit_lib.Downstream) -> Factors:
  """ΔV^k = [D_d^k h̄^k] (a^k)ᵀ."""
  return [(down.b_bar[i], up.a[i + 1]) for i in range(len(weights.v))]


def v_bar_factors(weights: Weights, up: circuit_lib.Upstream,
                  down: circuit_lib.Downstream,
                  signal: str = "preactivation") -> Factors:
  """ΔV̄^{k-1} = [h^k or a^k] (D_d^k h̄^k)ᵀ."""
  post = up.h if signal == "preactivation" else up.a[1:]
  return [(post[i], down.b_bar[i]) for i in range(len(weights.v_bar))]


# The terms of the rule family, in the order of a coefficient row.
TERMS = ("paper", "hebbian", "oja", "decay")


class RuleCoefficients(NamedTuple):
  """Per family, the weight of each of ``TERMS`` in its update: a [4] row
  for all its matrices, or [matrices, 4], one row each. A PyTree of arrays,
  so it can be traced, differentiated and vmapped.

  ΔM = c_paper·(Eqs. 5-8) + c_hebbian·mean(y xᵀ) - c_oja·mean(y²) M - c_decay·M,
  with y, x the synapse's own post- and presynaptic activities
  (``own_factors``; docs/algorithm.md, "A family of local rules").
  """
  w: Array
  w_bar: Array
  v: Array
  v_bar: Array


def paper_coefficients() -> RuleCoefficients:
  """The family's point that is the paper's rules (and every method's)."""
  row = jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32)
  return RuleCoefficients(row, row, row, row)


def own_factors(weights: Weights, up: circuit_lib.Upstream,
                down: circuit_lib.Downstream,
                v_bar_signal: str = "preactivation") -> dict[str, Factors]:
  """(y, x) per matrix: the activity of its postsynaptic neuron and of its
  presynaptic neuron. For V and V̄ these are the paper's factors already."""
  num_layers = len(weights.w)
  w_post = [up.a[l + 1] if l < num_layers - 1 else up.output
            for l in range(num_layers)]
  return {
      "w": list(zip(w_post, up.a)),
      "w_bar": [(down.b_bar[i], down.b_bar[i + 1])
                for i in range(len(weights.w_bar))],
      "v": v_factors(weights, up, down),
      "v_bar": v_bar_factors(weights, up, down, v_bar_signal),
  }


def _family_terms(coefficients: Array, paper: list[Array], hebbian: list[Array],
                  own: Factors, matrices: Sequence[Array]) -> list[Array]:
  """ΔM for each matrix of one family, its terms weighted by the rows."""
  deltas = []
  for i, m in enumerate(matrices):
    c = coefficients if coefficients.ndim == 1 else coefficients[i]
    post_sq = jnp.mean(jnp.square(own[i][0]), axis=0)
    deltas.append(c[0] * paper[i] + c[1] * hebbian[i]
                  - c[2] * post_sq[:, None] * m - c[3] * m)
  return deltas


def plasticity(circuit: Circuit, weights: Weights, up: circuit_lib.Upstream,
               down: circuit_lib.Downstream, key: Array | None = None, *,
               batched: bool = False,
               update_dtype: str | None = None,
               coefficients: RuleCoefficients | None = None) -> Weights:
  """G = -ΔM for every family (Eqs. 5-8); zeros for families that do not learn.

  Args:
    circuit: static configuration.
    weights: current weights.
    up: upstream activity from ``circuit.upstream``.
    down: downstream activity from ``circuit.downstream``.
    key: PRNG key, needed by weight mirroring only.
    batched: form equal-shaped products as one batched product.
    update_dtype: the dtype G is returned in; None keeps each matrix's own
      (the products sum in float32 first).
    coefficients: a point of the rule family (``RuleCoefficients``); None
      is the paper's rules, computed without the family's extra terms.

  Returns:
    Updates with the tree structure of ``weights``, signed like gradients.
  """
  plastic = circuit.plastic_families
  factors = {"w": w_factors(weights, up, down, batched)}
  if "w_bar" in plastic and circuit.spec.w_bar_rule == "mirror":
    if key is None:
      raise ValueError("weight mirroring needs a PRNG key for its noise")
    factors["w_bar"] = w_bar_mirror_factors(
        key, weights, up.a[0].shape[0], circuit.mirror_noise_std)
  elif "w_bar" in plastic:
    factors["w_bar"] = w_bar_factors(weights, up, down, batched)
  if "v" in plastic:
    factors["v"] = v_factors(weights, up, down)
  if "v_bar" in plastic:
    factors["v_bar"] = v_bar_factors(weights, up, down, circuit.v_bar_signal)

  deltas = iter(outer_means([p for name in factors for p in factors[name]],
                            batched))
  paper = {name: [next(deltas) for _ in pairs]
           for name, pairs in factors.items()}
  if coefficients is not None:
    own = own_factors(weights, up, down, circuit.v_bar_signal)
    # For V and V̄ the synapse's own activities are the paper's factors.
    hebbian_names = [n for n in ("w", "w_bar") if n in factors]
    products = iter(outer_means([p for n in hebbian_names for p in own[n]],
                                batched))
    hebbian = {n: [next(products) for _ in own[n]] for n in hebbian_names}
    paper = {name: _family_terms(
        getattr(coefficients, name), paper[name],
        hebbian.get(name, paper[name]), own[name], getattr(weights, name))
             for name in paper}
  dtype = update_dtype
  return Weights(*(
      tuple((-d).astype(dtype or m.dtype) for d, m in zip(paper[name], family))
      if name in factors else
      tuple(jnp.zeros_like(m, dtype=dtype) for m in family)
      for name, family in zip(circuit_lib.FAMILIES, weights)))
