"""Several devices compute what one does (fake CPU devices, in subprocesses)."""

import textwrap

import pytest

from tests.conftest import run_on_four_fake_devices

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, chex
    import sal_jax as sj
    from sal_jax import parallel
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    mesh = parallel.data_mesh()

    def three_steps(circuit, opt, compute=None):
      single = sj.init_state(jax.random.key(0), circuit, opt)
      sharded = parallel.replicate(jax.tree.map(jnp.copy, single), mesh)
      step = sj.make_step(circuit, opt, diagnostics=True, compute=compute)
      pstep = sj.make_step(circuit, opt, diagnostics=True, compute=compute,
                           mesh=mesh)
      for _ in range(3):
        x = rng.standard_normal((8, 12)).astype(np.float32)
        y = rng.integers(0, 5, 8).astype(np.int32)
        single, m1 = step(single, (x, y))
        sharded, m2 = pstep(sharded, (x, y))
      chex.assert_trees_all_close(
          (single.weights, single.opt_state, m1),
          (sharded.weights, sharded.opt_state, m2), rtol=1e-5, atol=1e-6)
      assert len(sharded.weights.w[0].sharding.device_set) == 4
      return pstep, sharded, (x, y)

    # The bfloat16 storage too: the devices sum G's partial products in
    # float32 and round the sum, as one device rounds its product.
    circuit = sj.Circuit(widths=(12, 16, 16, 5), ratio=1.5, method="sal")
    stored = sj.Compute(update_dtype="bfloat16", momentum_dtype="bfloat16")
    three_steps(circuit, sj.reference_optimizer(
        circuit, learning_rate=0.05, compute=stored), stored)
    opt = sj.reference_optimizer(circuit, learning_rate=0.05)
    pstep, sharded, (x, y) = three_steps(circuit, opt)
    try:
      pstep(sharded, (x[:6], y[:6]))
      raise SystemExit("no error for a batch of 6 on 4 devices")
    except ValueError as e:
      assert "does not divide evenly over 4 devices" in str(e), e

    print("PARALLEL OK")
""")

MEMBERS_SCRIPT = textwrap.dedent("""
    import re
    import chex, jax, jax.numpy as jnp, numpy as np, optax
    import sal_jax as sj
    from sal_jax import parallel, sweep
    assert jax.device_count() == 4, jax.devices()
    assert parallel.member_mesh(8).size == 4
    assert parallel.member_mesh(6).size == 3  # the most that split 6 evenly
    assert parallel.member_mesh(5).size == 1
    circuit = sj.Circuit(widths=(12, 16, 16, 5), method="sal")
    opt = sj.reference_optimizer(circuit)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 5, 64).astype(np.int32)
    keys = jax.random.split(jax.random.key(0), 8)
    rates = jnp.linspace(1e-3, 1e-2, 8)

    def train(mesh=None, opt=opt):
      states = sweep.init_sweep(keys, circuit, opt, learning_rate=rates)
      data = (jnp.asarray(images), jnp.asarray(labels))
      member_keys = keys
      if mesh is not None:
        states, member_keys = parallel.shard_members((states, keys), mesh)
        data = parallel.replicate(data, mesh)
      for epoch in range(2):
        epoch_keys = jax.vmap(lambda k: jax.random.fold_in(k, epoch))(
            member_keys)
        states, metrics = sweep.sweep_epoch(circuit, opt, 8, states,
                                            epoch_keys, *data)
        jax.block_until_ready(metrics)
      scores = jax.block_until_ready(
          sweep.sweep_evaluate(circuit, states.weights, *data))
      return states, metrics, scores, data, epoch_keys

    one = train()
    mesh = parallel.member_mesh(8)
    split = train(mesh)
    assert len(split[0].weights.w[0].sharding.device_set) == 4
    # Bitwise while the clip lets every update through; the norm it records
    # is summed in an order that depends on the members a device holds.
    clip_one = sj.optim.clip_statistics(one[0].opt_state)
    clip_split = sj.optim.clip_statistics(split[0].opt_state)
    assert int(clip_one.clipped_steps.sum()) == 0
    chex.assert_trees_all_close(clip_one, clip_split, rtol=1e-6)
    results = lambda r: (r[0].weights, optax.tree_utils.tree_set(
        r[0].opt_state, update_norm=None), r[1], r[2])
    for a, b in zip(jax.tree.leaves(results(one)),
                    jax.tree.leaves(results(split))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
    # A clip that shortens every update: float32-close, not bitwise.
    tight = sj.reference_optimizer(circuit, clip_norm=0.05)
    chex.assert_trees_all_close(results(train(opt=tight)),
                                results(train(mesh, opt=tight)),
                                rtol=1e-5, atol=1e-6)
    program = sweep._sweep_program(circuit, opt, 8, sj.Compute(), False, 8,
                                   False).lower(split[0], split[4], *split[3]
                                                ).compile().as_text()
    found = re.findall(r"all-reduce|all-gather|all-to-all|collective-permute"
                       r"|reduce-scatter", program)
    assert not found, found
    # One member per device: XLA compiles the products without the member
    # axis, so the bits may differ; the values agree to float32 rounding.
    keys, rates = keys[:4], rates[:4]
    one, split = train(), train(parallel.member_mesh(4))
    chex.assert_trees_all_close(results(one), results(split), rtol=1e-5,
                                atol=1e-6)
    try:
      parallel.shard_members(keys[:3], mesh)
      raise SystemExit("no error for 3 members on 4 devices")
    except ValueError as e:
      assert "cannot split members over 4 devices" in str(e), e
    print("MEMBERS OK")
""")


@pytest.mark.timeout(300)
def test_data_parallel_step_equals_the_single_device_step():
  """On four fake devices, float32 and bfloat16 storage alike."""
  result = run_on_four_fake_devices(SCRIPT)
  assert "PARALLEL OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.timeout(300)
def test_sweep_split_over_member_devices_is_bitwise_one_device_and_silent():
  """Two members per device: the same bits, and no cross-device traffic."""
  result = run_on_four_fake_devices(MEMBERS_SCRIPT)
  assert "MEMBERS OK" in result.stdout, result.stderr[-3000:]
