"""Learning methods as configurations of the one circuit (paper Table 2).

Every method runs the same upstream pass, downstream pass and plasticity
rules; they differ only in which matrices exist, which learn, and how W̄ is
set. A family a method lacks is absent from its weights: for V and V̄ that
means the identity, for a tied W̄ it means the feedback reads Wᵀ.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
  """How one method configures the circuit.

  Attributes:
    families: the families held as weights besides W.
    plastic: the default subset of ``families`` that learns (W always does).
    nonlinearity: default downstream nonlinearity D_d.
    tied: W̄ ≡ Wᵀ, read from W itself (exact backprop).
    w_bar_rule: ``local`` (the ΔW̄ rule, Eq. 6) or ``mirror`` (learns Wᵀ from
      noise, Akrout et al. 2019); unused where W̄ is not plastic.
  """
  families: tuple[str, ...]
  plastic: tuple[str, ...]
  nonlinearity: str
  tied: bool = False
  w_bar_rule: str = "local"

  @property
  def inter_stream(self) -> bool:
    """Whether V and V̄ are matrices of their own (else the identity)."""
    return "v" in self.families


METHODS = {
    # Backprop computed by the circuit: W̄ ≡ Wᵀ, V = V̄ = I, D_d = D_u.
    "sgd": Method(families=(), plastic=(), nonlinearity="relu_jacobian",
                  tied=True),
    # A linear model (no hidden level) trained by SGD, the ablation baseline.
    "linear": Method(families=(), plastic=(), nonlinearity="relu_jacobian",
                     tied=True),
    # Feedback Alignment: W̄ random and fixed.
    "fa": Method(families=("w_bar",), plastic=(),
                 nonlinearity="relu_jacobian"),
    # Weight Mirroring: W̄ learns ξ (W ξ)ᵀ from noise ξ.
    "wm": Method(families=("w_bar",), plastic=("w_bar",),
                 nonlinearity="relu_jacobian", w_bar_rule="mirror"),
    # Kolen-Pollack: the ΔW̄ rule with V = I, which makes ΔW̄ = ΔWᵀ.
    "kp": Method(families=("w_bar",), plastic=("w_bar",),
                 nonlinearity="relu_jacobian"),
    # Self-assembling learning: all four families random and plastic.
    "sal": Method(families=("w_bar", "v", "v_bar"),
                  plastic=("w_bar", "v", "v_bar"), nonlinearity="identity"),
}
