"""Short-term modulation (Sec. 2.3; docs/algorithm.md, "Short-term modulation").

After one forward and feedback cycle, each upstream level receives the signal
its V̄ synapses carry, h^l <- h^l + τ V̄^{l-1} D_d^l h̄^l, and activity is
recomputed upward with the nudged potentials. No weight changes: for small τ
this lowers the loss on the same example (in-context modulation).
"""

from __future__ import annotations

import jax

from sal_jax import circuit as circuit_lib
from sal_jax import rules
from sal_jax import train

Array = jax.Array


def modulated_output(circuit: circuit_lib.Circuit,
                     weights: circuit_lib.Weights, batch,
                     tau: float | Array) -> Array:
  """The output ŷ after one modulation cycle of strength ``tau``."""
  up, down = train.forward_and_feedback(circuit, weights, batch)
  signals = rules.upstream_feedback(weights, down, batched=False)
  a = up.a[0]
  h = None
  for w_l, signal in zip(weights.w, signals):
    h = a @ w_l.T + tau * signal
    a = jax.nn.relu(h)
  return h
