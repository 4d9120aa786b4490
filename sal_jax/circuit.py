"""The two-stream circuit: its static configuration, weights and activity passes.

Notation follows docs/algorithm.md ("The circuit", "The four families").
Levels run 0..L; upstream widths are
``widths = (d_0, ..., d_L)``. Downstream neurons exist at levels 1..L, with
``d̄_L = d_L`` and ``d̄_k = round(ratio * d_k)`` at hidden levels.

The three inter-stream families are indexed by the hidden level k = 1..L-1 at
which the two streams meet, so entry ``i`` of each tuple belongs to k = i + 1:

    w_bar[i] = W̄^k      (d̄_k x d̄_{k+1})  downstream k+1 -> downstream k
    v[i]     = V^k      (d̄_k x d_k)       upstream k     -> downstream k
    v_bar[i] = V̄^{k-1}  (d_k x d̄_k)       downstream k   -> upstream k

so ``v[i]`` and ``v_bar[i]`` are the pair that Lemma 1 says self-assembles into
transposes. ``w[l] = W^l`` (d_{l+1} x d_l) for l = 0..L-1.

Activities are batch-major: ``x_BxD`` rows are examples.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sal_jax import losses
from sal_jax import methods as methods_lib

Array = jax.Array

NONLINEARITIES = ("identity", "relu", "tanh", "relu_jacobian")
V_BAR_SIGNALS = ("preactivation", "activity")
FAMILIES = ("w", "w_bar", "v", "v_bar")


class Weights(NamedTuple):
  """The four plastic families, each a tuple of matrices (see module doc).

  A family the method does not have (the tied W̄ of ``sgd``; V and V̄ of every
  method but ``sal``, where they are the identity) is an empty tuple.
  """
  w: tuple[Array, ...]
  w_bar: tuple[Array, ...]
  v: tuple[Array, ...]
  v_bar: tuple[Array, ...]


class Upstream(NamedTuple):
  """Forward-stream activity: ``a[l] = a^l`` (l = 0..L-1), ``h[l] = h^{l+1}``."""
  a: tuple[Array, ...]
  h: tuple[Array, ...]

  @property
  def output(self) -> Array:
    """The linear output ŷ = h^L."""
    return self.h[-1]


class Downstream(NamedTuple):
  """Feedback-stream activity at levels 1..L, entry ``i`` is level i + 1.

  ``h_bar`` holds the potentials h̄^k, ``b_bar`` the activities D_d^k h̄^k that
  leave the neurons (``b_bar[-1]`` is the output error), ``gate`` the diagonal
  of D_d^k as applied to other signals arriving at those neurons.
  """
  h_bar: tuple[Array, ...]
  b_bar: tuple[Array, ...]
  gate: tuple[Array, ...]


@dataclasses.dataclass(frozen=True)
class Circuit:
  """Static description of one circuit; hashable, so it can close over jit.

  Attributes:
    widths: upstream widths (d_0, ..., d_L), at least one hidden level unless
      the method is ``linear``, which keeps only (d_0, d_L).
    ratio: downstream/upstream width ratio at hidden levels (d̄ = round(ratio d)).
    method: one of ``methods.METHODS`` (sgd, fa, wm, kp, sal, linear).
    nonlinearity: downstream D_d; None takes the method's default.
    v_bar_signal: postsynaptic signal of ΔV̄: ``preactivation`` h^{l+1}
      (default) or ``activity`` a^{l+1}.
    plastic: which of ``w_bar``, ``v``, ``v_bar`` learn (W always does); None
      takes the method's default. Families the method lacks cannot be listed.
    loss: ``softmax_cross_entropy``, ``mse`` or ``sigmoid_cross_entropy``.
    mirror_noise_std: σ of the noise weight mirroring (``wm``) learns from.

  How its programs are computed (batched products, storage dtypes, precision)
  is not part of the model: see ``compute.Compute``.
  """
  widths: tuple[int, ...]
  ratio: float = 1.0
  method: str = "sal"
  nonlinearity: str | None = None
  v_bar_signal: str = "preactivation"
  plastic: tuple[str, ...] | None = None
  loss: str = "softmax_cross_entropy"
  mirror_noise_std: float = 1.0

  def __post_init__(self):
    widths = tuple(self.widths)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
               for d in widths):
      raise ValueError(f"widths must be integers, got {widths}")
    widths = tuple(int(d) for d in widths)
    object.__setattr__(self, "widths", widths)
    if self.plastic is not None:  # a tuple keeps the circuit hashable
      object.__setattr__(self, "plastic", tuple(self.plastic))
    if self.method not in methods_lib.METHODS:
      raise ValueError(
          f"unknown method {self.method!r}; expected one of "
          f"{sorted(methods_lib.METHODS)}")
    if len(widths) < 2:
      raise ValueError(f"widths needs at least input and output, got {widths}")
    if any(d <= 0 for d in widths):
      raise ValueError(f"widths must all be positive, got {widths}")
    if self.method != "linear" and len(widths) < 3:
      raise ValueError(
          f"method {self.method!r} needs at least one hidden level, got widths "
          f"{widths}; use method='linear' for a model without one")
    if not 0 < self.ratio < float("inf"):
      raise ValueError(f"ratio must be positive and finite, got {self.ratio}")
    if self.nonlinearity is not None and self.nonlinearity not in NONLINEARITIES:
      raise ValueError(
          f"unknown nonlinearity {self.nonlinearity!r}; expected one of "
          f"{NONLINEARITIES}")
    if self.v_bar_signal not in V_BAR_SIGNALS:
      raise ValueError(
          f"unknown v_bar_signal {self.v_bar_signal!r}; expected one of "
          f"{V_BAR_SIGNALS}")
    spec = self.spec
    if spec.tied and self.d_nonlinearity != "relu_jacobian":
      raise ValueError(
          f"method {self.method!r} computes backprop and needs nonlinearity "
          f"'relu_jacobian', got {self.nonlinearity!r}")
    # Without V, V̄ (the identity) the two streams must be equally wide.
    needs_equal_widths = (self.d_nonlinearity == "relu_jacobian"
                          or not spec.inter_stream)
    hidden_bar = self.downstream_widths[:-1]
    if needs_equal_widths and hidden_bar != self.upstream_widths[1:-1]:
      why = ("nonlinearity 'relu_jacobian'"
             if self.d_nonlinearity == "relu_jacobian" and spec.inter_stream
             else f"method {self.method!r}")
      raise ValueError(
          f"{why} needs downstream widths equal to upstream widths "
          f"(ratio 1), got ratio {self.ratio}")
    unknown = set(self.plastic_families) - set(spec.families)
    if unknown:
      raise ValueError(
          f"plastic lists {sorted(unknown)}, which method {self.method!r} "
          f"does not have; it has {spec.families}")
    if self.mirror_noise_std <= 0:
      raise ValueError(
          f"mirror_noise_std must be positive, got {self.mirror_noise_std}")
    if self.loss not in losses.LOSSES:
      raise ValueError(
          f"unknown loss {self.loss!r}; expected one of {sorted(losses.LOSSES)}")

  @property
  def spec(self) -> methods_lib.Method:
    return methods_lib.METHODS[self.method]

  @property
  def d_nonlinearity(self) -> str:
    """The downstream nonlinearity D_d in force."""
    return self.nonlinearity or self.spec.nonlinearity

  @property
  def plastic_families(self) -> tuple[str, ...]:
    """Families that learn besides W."""
    return self.spec.plastic if self.plastic is None else tuple(self.plastic)

  @property
  def upstream_widths(self) -> tuple[int, ...]:
    if self.method == "linear":
      return (self.widths[0], self.widths[-1])
    return self.widths

  @property
  def downstream_widths(self) -> tuple[int, ...]:
    """(d̄_1, ..., d̄_L)."""
    up = self.upstream_widths
    return tuple(max(1, round(self.ratio * d)) for d in up[1:-1]) + (up[-1],)

  @property
  def num_layers(self) -> int:
    return len(self.upstream_widths) - 1


def _uniform(key: Array, rows: int, cols: int) -> Array:
  """U(±1/sqrt(fan_in)), fan_in = cols (PyTorch's Linear default)."""
  bound = 1.0 / jnp.sqrt(cols)
  return jax.random.uniform(key, (rows, cols), jnp.float32, -bound, bound)


def init_weights(key: Array, circuit: Circuit) -> Weights:
  """Draws every matrix of the circuit independently, U(±1/sqrt(fan_in))."""
  return _init_weights(key, circuit.upstream_widths,
                       circuit.downstream_widths, circuit.spec.families)


@functools.lru_cache(maxsize=64)
def weight_shapes(circuit: Circuit) -> tuple[tuple[tuple[int, ...], ...], ...]:
  """The shape of every matrix, family by family, as ``init_weights`` makes
  them (not computed)."""
  shapes = jax.eval_shape(lambda key: init_weights(key, circuit),
                          jax.random.key(0))
  return tuple(tuple(m.shape for m in family) for family in shapes)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_weights(key: Array, up: tuple[int, ...], down: tuple[int, ...],
                  families: tuple[str, ...]) -> Weights:
  # Static in the shapes alone: circuits that differ only in their rules or
  # loss share one compiled initialisation.
  num_layers = len(up) - 1
  hidden = range(1, num_layers)  # the levels k where streams meet
  k_w, k_wb, k_v, k_vb = jax.random.split(key, 4)
  w = tuple(_uniform(k, up[l + 1], up[l]) for l, k in enumerate(
      jax.random.split(k_w, num_layers)))
  n = num_layers - 1

  def family(name, k_family, shape_fn):
    if name not in families:
      return ()
    return tuple(_uniform(kk, *shape_fn(level))
                 for level, kk in zip(hidden, jax.random.split(k_family, n)))

  return Weights(
      w=w,
      w_bar=family("w_bar", k_wb, lambda k: (down[k - 1], down[k])),
      v=family("v", k_v, lambda k: (down[k - 1], up[k])),
      v_bar=family("v_bar", k_vb, lambda k: (up[k], down[k - 1])),
  )


def upstream(w: tuple[Array, ...], x_BxD: Array) -> Upstream:
  """Forward stream: h^{l+1} = W^l a^l, a^l = ReLU(h^l), linear output."""
  a, h = [x_BxD], []
  for l, w_l in enumerate(w):
    h.append(a[-1] @ w_l.T)
    if l < len(w) - 1:
      a.append(jax.nn.relu(h[-1]))
  return Upstream(a=tuple(a), h=tuple(h))


def _activity_and_gate(name: str, h_bar: Array, h_up: Array):
  """D_d as an activity function of h̄ and as the gain on other inputs."""
  if name == "identity":
    return h_bar, jnp.ones_like(h_bar)
  if name == "relu":
    return jax.nn.relu(h_bar), (h_bar > 0).astype(h_bar.dtype)
  if name == "tanh":
    t = jnp.tanh(h_bar)
    return t, 1.0 - t * t
  if name == "relu_jacobian":
    mask = (h_up > 0).astype(h_bar.dtype)
    return mask * h_bar, mask
  raise ValueError(f"unknown nonlinearity {name!r}")


def feedback_matrices(circuit: Circuit, weights: Weights) -> tuple[Array, ...]:
  """W̄^k for k = 1..L-1; the tied (backprop) circuit reads (W^k)ᵀ."""
  if circuit.spec.tied:
    return tuple(w_k.T for w_k in weights.w[1:])
  return weights.w_bar


def downstream(circuit: Circuit, weights: Weights, up: Upstream,
               error_BxO: Array) -> Downstream:
  """Feedback stream: h̄^L = error, h̄^k = W̄^k D_d^{k+1} h̄^{k+1}.

  The output level is linear in both streams (D_d^L = I), so the error
  leaves level L unchanged.
  """
  w_bar = feedback_matrices(circuit, weights)
  h_bar, b_bar, gate = [error_BxO], [error_BxO], [jnp.ones_like(error_BxO)]
  for i in reversed(range(len(w_bar))):
    h_k = b_bar[0] @ w_bar[i].T
    b_k, g_k = _activity_and_gate(circuit.d_nonlinearity, h_k, up.h[i])
    h_bar.insert(0, h_k)
    b_bar.insert(0, b_k)
    gate.insert(0, g_k)
  return Downstream(h_bar=tuple(h_bar), b_bar=tuple(b_bar), gate=tuple(gate))
