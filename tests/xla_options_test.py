"""The XLA options the library compiles with, and how a user overrides them."""

import functools
import os
import re
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import pytest

import sal_jax as sj
from sal_jax import train
from sal_jax import xla_options


def test_an_environment_variable_sets_xla_options_over_the_library_s():
  env = {"SAL_JAX_XLA_OPTIONS": " xla_gpu_command_buffer_scheduling_mode=LHS"
                                "\txla_gpu_enable_command_buffer=FUSION,CUBLAS "
                                "xla_gpu_dot_merger_threshold_mb=8"}
  assert xla_options.from_environment(env) == {
      "xla_gpu_command_buffer_scheduling_mode": "LHS",
      "xla_gpu_enable_command_buffer": "FUSION,CUBLAS",
      "xla_gpu_dot_merger_threshold_mb": 8}
  assert xla_options.from_environment({}) == {}
  with pytest.raises(ValueError, match="SAL_JAX_XLA_OPTIONS: 'split_k': "
                     "expected NAME=VALUE"):
    xla_options.from_environment({"SAL_JAX_XLA_OPTIONS": "split_k"})
  # Read at import, for every program of the library.
  code = ("from sal_jax import xla_options as x; "
          "print(x.OPTIONS['xla_gpu_command_buffer_scheduling_mode'], "
          "x.MULTI_DEVICE_OPTIONS['xla_gpu_dot_merger_threshold_mb'])")
  result = subprocess.run(
      [sys.executable, "-c", code], env=dict(os.environ, **env,
                                             JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=120, check=True)
  assert result.stdout.split() == ["LHS", "8"]


@pytest.mark.parametrize("options", ["OPTIONS", "MULTI_DEVICE_OPTIONS"])
def test_library_compiler_options_are_known_to_xla_and_change_no_result(
    rng, options):
  # XLA rejects an option it does not know, on every backend: a rename in a
  # future XLA fails here rather than in a user's run.
  x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  fn = lambda x, w: jnp.tanh(x @ w).T @ x
  chex.assert_trees_all_close(
      jax.jit(fn, compiler_options=getattr(xla_options, options))(x, w),
      jax.jit(fn)(x, w), rtol=1e-6)


def test_bf16_precision_reaches_every_matrix_product_of_a_sal_step():
  # BUILD.md's GPU speed option: bf16 operands, float32 sums. Every product
  # of the step (forward 4, feedback 3, relays through V and V̄ 3 + 3, rules
  # 13) must carry it; the lowering is the same for every backend.
  circuit = sj.Circuit((12, 8, 8, 8, 3), method="sal", batched_products=False)
  optimizer = sj.reference_optimizer(circuit)
  state = sj.init_state(jax.random.key(0), circuit, optimizer)
  batch = (jnp.zeros((4, 12)), jnp.zeros((4,), jnp.int32))
  step = jax.jit(functools.partial(train.train_step, circuit, optimizer))

  def products(precision):
    with xla_options.matmul_precision(precision):
      text = step.lower(state, batch).as_text()
    return re.findall(r"stablehlo\.dot_general[^\n]*", text)

  bf16 = products("BF16_BF16_F32")
  assert len(bf16) == 26
  for product in bf16:
    assert "lhs_precision_type = bf16, rhs_precision_type = bf16, " \
           "accumulation_type = f32" in product, product
  assert not any("algorithm" in product for product in products(None))
