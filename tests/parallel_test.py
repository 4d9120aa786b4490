"""The data-parallel step equals the single-device step (fake CPU devices)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).parents[1]

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, chex
    import sal_jax as sj
    from sal_jax import loop, parallel
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    circuit = sj.Circuit(widths=(12, 16, 16, 5), ratio=1.5, method="sal")
    opt = sj.reference_optimizer(circuit, learning_rate=0.05)
    mesh = parallel.data_mesh()
    single = sj.init_state(jax.random.key(0), circuit, opt)
    sharded = parallel.replicate(jax.tree.map(jnp.copy, single), mesh)
    step = sj.make_step(circuit, opt, diagnostics=True)
    pstep = parallel.make_parallel_step(circuit, opt, mesh, diagnostics=True)
    for _ in range(3):
      x = rng.standard_normal((8, 12)).astype(np.float32)
      y = rng.integers(0, 5, 8).astype(np.int32)
      single, m1 = step(single, (x, y))
      sharded, m2 = pstep(sharded, (x, y))
    chex.assert_trees_all_close((single.weights, m1), (sharded.weights, m2),
                                rtol=1e-5, atol=1e-6)
    assert len(sharded.weights.w[0].sharding.device_set) == 4
    try:
      pstep(sharded, (x[:6], y[:6]))
      raise SystemExit("no error for a batch of 6 on 4 devices")
    except ValueError as e:
      assert "does not divide evenly over 4 devices" in str(e), e

    images = rng.integers(0, 256, (40, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 5, 40).astype(np.int32)
    single = sj.init_state(jax.random.key(1), circuit, opt)
    sharded = parallel.replicate(jax.tree.map(jnp.copy, single), mesh)
    epoch = jax.jit(loop.make_epoch(circuit, opt, 8))
    pepoch = parallel.make_parallel_epoch(circuit, opt, 8, mesh)
    key = jax.random.key(2)
    s1, e1 = epoch(single, key, images, labels)
    s2, e2 = pepoch(sharded, key, *parallel.replicate((images, labels), mesh))
    chex.assert_trees_all_close((s1.weights, e1), (s2.weights, e2),
                                rtol=1e-5, atol=1e-6)
    print("PARALLEL OK")
""")


@pytest.mark.timeout(300)
def test_sharded_step_and_epoch_equal_single_device_on_four_fake_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                          capture_output=True, text=True, timeout=240,
                          check=False)
  assert "PARALLEL OK" in result.stdout, result.stderr[-3000:]
