"""Compute settings change how a program runs, never what the model is.

The opt-in bfloat16 storage of the updates G and of the momentum
(``Compute.update_dtype``, ``Compute.momentum_dtype``): the rules and the
optimizer still compute in float32 and only what they store is rounded; the
weights stay float32. XLA's compiler options and the matmul precision reach
every program.
"""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sal_jax as sj
from sal_jax import optim
from sal_jax import sweep
from sal_jax import train
from tests.conftest import random_batch

BF16 = jnp.bfloat16
STORED = sj.Compute(update_dtype="bfloat16", momentum_dtype="bfloat16")
_WIDTHS = (12, 8, 8, 3)


def _first_state_and_batch(rng, circuit, momentum_dtype=None):
  optimizer = sj.reference_optimizer(
      circuit, learning_rate=0.05,
      compute=sj.Compute(momentum_dtype=momentum_dtype))
  state = sj.init_state(jax.random.key(0), circuit, optimizer)
  return optimizer, state, random_batch(rng, 6, _WIDTHS[0], _WIDTHS[-1])


def _momentum(opt_state):
  return optax.tree_utils.tree_get(opt_state, "trace")


@pytest.mark.parametrize("method, plastic", [
    ("sal", None), ("sal", ("v",)), ("kp", None), ("fa", None), ("sgd", None)])
def test_bfloat16_updates_are_the_float32_rules_rounded_once(rng, method,
                                                             plastic):
  circuit = sj.Circuit(_WIDTHS, method=method, plastic=plastic)
  weights = sj.init_weights(jax.random.key(0), circuit)
  batch = random_batch(rng, 6, _WIDTHS[0], _WIDTHS[-1])
  up, down = train.forward_and_feedback(circuit, weights, batch)
  rules = jax.jit(sj.plasticity, static_argnums=0,
                  static_argnames="update_dtype")
  exact = rules(circuit, weights, up, down)
  rounded = rules(circuit, weights, up, down, update_dtype="bfloat16")
  chex.assert_trees_all_equal(rounded, jax.tree.map(lambda g: g.astype(BF16),
                                                    exact))
  chex.assert_trees_all_equal_dtypes(
      rounded, jax.tree.map(lambda g: g.astype(BF16), weights))


def test_bfloat16_momentum_is_the_float32_momentum_rounded_and_weights_stay_float32(
    rng):
  circuit = sj.Circuit(_WIDTHS)
  optimizer, state, batch = _first_state_and_batch(rng, circuit)
  optimizer16, state16, _ = _first_state_and_batch(rng, circuit, "bfloat16")
  assert {m.dtype for m in jax.tree.leaves(_momentum(state16.opt_state))} == {
      jnp.dtype(BF16)}
  after, _ = train.train_step(circuit, optimizer, state, batch)
  after16, _ = train.train_step(circuit, optimizer16, state16, batch)
  # From zero momentum, one step stores G's processed update: rounded, the
  # same; the weights take the float32 update either way.
  chex.assert_trees_all_equal(
      _momentum(after16.opt_state),
      jax.tree.map(lambda m: m.astype(BF16), _momentum(after.opt_state)))
  chex.assert_trees_all_equal(after16.weights, after.weights)
  chex.assert_trees_all_equal_dtypes(after16.weights, state.weights)


def test_bfloat16_storage_trains_as_float32_does_to_its_rounding(rng):
  # Thirty steps of SAL with both knobs stay within bfloat16's rounding of
  # the float32 run: same losses to 1%, weights to 1% of their scale.
  circuit = sj.Circuit(_WIDTHS, method="sal")
  optimizer, state, batch = _first_state_and_batch(rng, circuit)
  optimizer16, state16, _ = _first_state_and_batch(rng, circuit, "bfloat16")
  step = sj.make_step(circuit, optimizer)
  step16 = sj.make_step(circuit, optimizer16, compute=STORED)
  losses, losses16 = [], []
  for _ in range(30):
    state, metrics = step(state, batch)
    state16, metrics16 = step16(state16, batch)
    losses.append(metrics["loss"])
    losses16.append(metrics16["loss"])
  assert losses[-1] < 0.8 * losses[0]  # it learned something to compare
  np.testing.assert_allclose(losses16, losses, rtol=1e-2)
  for w16, w in zip(jax.tree.leaves(state16.weights),
                    jax.tree.leaves(state.weights)):
    assert w16.dtype == jnp.float32
    np.testing.assert_allclose(w16, w, atol=1e-2 * float(jnp.abs(w).max()))


def test_sgd_rules_in_bfloat16_still_align_with_backprop(rng):
  # The diagnostics measure a bfloat16 G in float32: SGD's rules are the
  # gradient, so the cosine is 1 to bfloat16's rounding.
  circuit = sj.Circuit(_WIDTHS, method="sgd")
  optimizer, state, batch = _first_state_and_batch(rng, circuit)
  _, metrics = train.train_step(circuit, optimizer, state, batch,
                                diagnostics=True, compute=STORED)
  assert metrics["grad_cosine"].dtype == jnp.float32
  np.testing.assert_allclose(metrics["grad_cosine"], 1.0, atol=1e-4)


def test_clip_norm_of_bfloat16_updates_is_summed_in_float32():
  # Entries 1 + 2**-7 (exact in bfloat16) whose squares are not: squared and
  # summed in bfloat16, the norm would come out 3e-5 short. (XLA:CPU computes
  # bfloat16 arithmetic in float32 anyway, so the program is checked too: a
  # GPU computes it as written.)
  x = 1 + 2**-7
  updates = sj.Weights(w=(jnp.full((256, 256), x, BF16),), w_bar=(), v=(),
                       v_bar=())
  clip = optim.clip_by_global_norm(1e6)
  _, state = clip.update(updates, clip.init(updates))
  assert state.update_norm.dtype == jnp.float32
  np.testing.assert_allclose(state.update_norm, 256 * x, rtol=1e-6)
  jaxpr = jax.make_jaxpr(clip.update)(updates, clip.init(updates)).jaxpr
  squares = [eqn.outvars[0].aval.dtype for eqn in jaxpr.eqns
             if eqn.primitive.name == "mul" and eqn.invars[0] is eqn.invars[1]]
  assert squares == [jnp.dtype("float32")]


def test_a_sweep_vmaps_over_bfloat16_states(rng):
  circuit = sj.Circuit(_WIDTHS)
  optimizer = sj.reference_optimizer(circuit, compute=STORED)
  images = rng.integers(0, 256, (32, 3, 4), dtype=np.uint8)
  labels = rng.integers(0, 3, 32).astype(np.int32)
  keys = jax.random.split(jax.random.key(0), 3)
  states = sweep.init_sweep(keys, circuit, optimizer,
                            learning_rate=jnp.array([1e-3, 1e-2, 5e-2]))
  states, metrics = sweep.sweep_epoch(circuit, optimizer, 8, states, keys,
                                      images, labels, compute=STORED)
  assert np.isfinite(metrics["loss"]).all()
  assert {m.dtype for m in jax.tree.leaves(_momentum(states.opt_state))} == {
      jnp.dtype(BF16)}


@pytest.mark.parametrize("kwargs, message", [
    (dict(batched_products="off"),
     "batched_products must be True, False or None"),
    (dict(update_dtype="float16"), "unknown update_dtype 'float16'"),
    (dict(momentum_dtype="half"), "unknown momentum_dtype 'half'"),
    (dict(matmul_precision="fp7"), "bad matmul_precision 'fp7'"),
    (dict(unroll=0), "unroll must be a positive integer"),
])
def test_bad_compute_settings_raise_value_error_naming_them(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sj.Compute(**kwargs)


def test_xla_option_values_are_typed_as_xla_expects():
  assert sj.compute.parse_option("xla_a=True") == ("xla_a", True)
  assert sj.compute.parse_option("xla_a=false") == ("xla_a", False)
  assert sj.compute.parse_option("xla_a=0") == ("xla_a", 0)
  assert sj.compute.parse_option("xla_a=0.5") == ("xla_a", 0.5)
  assert sj.compute.parse_option("xla_a=b=c") == ("xla_a", "b=c")
  assert sj.compute.parse_options(
      " xla_gpu_command_buffer_scheduling_mode=LHS\t"
      "xla_gpu_dot_merger_threshold_mb=8") == (
          ("xla_gpu_command_buffer_scheduling_mode", "LHS"),
          ("xla_gpu_dot_merger_threshold_mb", 8))
  with pytest.raises(ValueError, match="'split_k': expected NAME=VALUE"):
    sj.compute.parse_options("split_k")


def test_xla_options_set_over_the_library_s():
  compute = sj.Compute(xla_options=sj.compute.parse_options(
      "xla_gpu_command_buffer_scheduling_mode=LHS"))
  assert compute.compiler_options()[
      "xla_gpu_command_buffer_scheduling_mode"] == "LHS"
  assert compute.compiler_options() == dict(
      sj.compute.GPU_OPTIONS, xla_gpu_command_buffer_scheduling_mode="LHS")
  # Programs that reduce across devices keep XLA's own schedule.
  assert "xla_gpu_command_buffer_scheduling_mode" not in sj.Compute(
  ).compiler_options(multi_device=True)
  assert sj.Compute(xla_options={"b": 1, "a": 2}) == sj.Compute(
      xla_options=(("a", 2), ("b", 1)))  # hashable, order-free


@pytest.mark.parametrize("multi_device", [False, True])
def test_library_compiler_options_are_known_to_xla_and_change_no_result(
    rng, multi_device):
  # XLA rejects an option it does not know, on every backend: a rename in a
  # future XLA fails here rather than in a user's run.
  x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  fn = lambda x, w: jnp.tanh(x @ w).T @ x
  chex.assert_trees_all_close(
      sj.Compute().jit(fn, multi_device=multi_device)(x, w),
      jax.jit(fn)(x, w), rtol=1e-6)


def test_bf16_precision_reaches_every_matrix_product_of_a_sal_step():
  # The GPU speed option: bf16 operands, float32 sums. Every product of the
  # step (forward 4, feedback 3, relays through V and V̄ 3 + 3, rules 13)
  # must carry it; the lowering is the same for every backend.
  circuit = sj.Circuit((12, 8, 8, 8, 3), method="sal")
  optimizer = sj.reference_optimizer(circuit)
  state = sj.init_state(jax.random.key(0), circuit, optimizer)
  batch = (jnp.zeros((4, 12)), jnp.zeros((4,), jnp.int32))

  def products(precision):
    compute = sj.Compute(batched_products=False, matmul_precision=precision)
    step = compute.jit(functools.partial(train.train_step, circuit, optimizer,
                                         compute=compute))
    text = step.lower(state, batch).as_text()
    return re.findall(r"stablehlo\.dot_general[^\n]*", text)

  bf16 = products("BF16_BF16_F32")
  assert len(bf16) == 26
  for product in bf16:
    assert "lhs_precision_type = bf16, rhs_precision_type = bf16, " \
           "accumulation_type = f32" in product, product
  assert not any("algorithm" in product for product in products(None))
