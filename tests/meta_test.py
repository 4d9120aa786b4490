"""Meta-parameters as data: traced, differentiable, checkpointed, truncated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sal_jax as sj
from sal_jax import meta

CIRCUIT = sj.Circuit((6, 8, 8, 4))


def _problem(steps, seed=0):
  rng = np.random.default_rng(seed)
  batches = (jnp.asarray(rng.standard_normal((steps, 5, 6)), jnp.float32),
             jnp.asarray(rng.integers(0, 4, (steps, 5)), jnp.int32))
  held_out = (jnp.asarray(rng.standard_normal((20, 6)), jnp.float32),
              jnp.asarray(rng.integers(0, 4, 20), jnp.int32))
  return batches, held_out


def _setup(**optimizer_kwargs):
  optimizer = sj.reference_optimizer(CIRCUIT, **optimizer_kwargs)
  return optimizer, sj.init_state(jax.random.key(0), CIRCUIT, optimizer)


def test_the_reference_optimizer_takes_traced_multipliers():
  batch = jax.tree.map(lambda a: a[0], _problem(1)[0])

  def loss(multipliers):
    # The numbers live in the optimizer's state, set by its init.
    opt = sj.reference_optimizer(CIRCUIT, multipliers=multipliers)
    state = sj.init_state(jax.random.key(0), CIRCUIT, opt)
    new, _ = sj.train_step(CIRCUIT, opt, state, batch)
    return sj.train.loss_and_accuracy(CIRCUIT.loss, new.weights.w, batch)[
        "loss"]

  grads = jax.jit(jax.grad(loss))(jnp.array([1.0, 0.2, 1.0, 4.0]))
  assert grads.shape == (4,) and np.all(np.isfinite(grads))
  assert grads[0] != 0  # W's multiplier moves the loss after one step


def test_meta_gradient_equals_finite_differences_with_a_smooth_clip():
  # The clip binds (norms above 0.5) at every step: smooth, it stays
  # differentiable. Every meta-parameter, the rule family's included.
  optimizer, state = _setup(clip_norm=0.5, smooth_clip=True)
  batches, held_out = _problem(12)
  objective = jax.jit(lambda m: meta.unroll(CIRCUIT, optimizer, m, state,
                                            batches, held_out)[0])
  m = meta.meta_params(learning_rate=0.05,
                       coefficients=sj.rules.paper_coefficients())
  leaves, treedef = jax.tree.flatten(m)
  grads = jax.tree.leaves(jax.grad(objective)(m))
  eps = 1e-2
  for k, (value, grad) in enumerate(zip(leaves, grads)):
    for index in np.ndindex(value.shape):
      def shifted(delta, k=k, index=index):
        moved = list(leaves)
        moved[k] = value.at[index].add(delta)
        return objective(jax.tree.unflatten(treedef, moved))
      fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
      assert abs(grad[index] - fd) <= 0.03 * abs(fd) + 2e-5, (
          k, index, grad[index], fd)


def test_one_compiled_unroll_serves_every_meta_value_and_vmaps_over_them():
  optimizer, state = _setup()
  batches, held_out = _problem(4)
  objective = jax.jit(lambda m: meta.unroll(CIRCUIT, optimizer, m, state,
                                            batches, held_out)[0])
  population = [meta.meta_params(learning_rate=r, momentum=p)
                for r, p in ((1e-3, 0.9), (1e-2, 0.5), (5e-2, 0.0))]
  losses = [float(objective(m)) for m in population]
  assert objective._cache_size() == 1 and len(set(losses)) == 3
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *population)
  np.testing.assert_allclose(jax.vmap(objective)(stacked), losses, rtol=1e-5)


def _gradient_memory(optimizer, state, steps, remat_every):
  batches, held_out = _problem(steps)
  grad = jax.jit(jax.grad(lambda m: meta.unroll(
      CIRCUIT, optimizer, m, state, batches, held_out,
      remat_every=remat_every)[0]))
  compiled = grad.lower(meta.meta_params()).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_checkpointed_unroll_is_the_same_and_its_memory_grows_sublinearly():
  optimizer, state = _setup(clip_norm=None)
  batches, held_out = _problem(16)
  m = meta.meta_params(learning_rate=0.05)
  value_and_grad = lambda r: jax.jit(jax.value_and_grad(lambda m: meta.unroll(
      CIRCUIT, optimizer, m, state, batches, held_out, remat_every=r)[0]))(m)
  (plain, plain_grads), (remat, remat_grads) = map(value_and_grad, (None, 4))
  np.testing.assert_allclose(plain, remat, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(remat_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
  # 4x the steps: backpropagation stores 4x the states; checkpointed in
  # segments of sqrt(steps), about 2x.
  plain_growth = (_gradient_memory(optimizer, state, 64, None)
                  / _gradient_memory(optimizer, state, 16, None))
  remat_growth = (_gradient_memory(optimizer, state, 64, 8)
                  / _gradient_memory(optimizer, state, 16, 4))
  assert plain_growth > 3 and remat_growth < 0.6 * plain_growth, (
      plain_growth, remat_growth)


def test_truncated_windows_carry_the_inner_state_of_one_long_unroll():
  optimizer, state = _setup()
  batches, held_out = _problem(8)
  m = meta.meta_params(learning_rate=0.05)
  halves = [jax.tree.map(lambda a, s=s: a[s], batches)
            for s in (slice(0, 4), slice(4, 8))]
  _, full_state = jax.jit(lambda m: meta.unroll(
      CIRCUIT, optimizer, m, state, batches, held_out))(m)
  loss_1, grads_1, carried = meta.truncated_step(CIRCUIT, optimizer, m, state,
                                                 halves[0], held_out)
  _, _, carried = meta.truncated_step(CIRCUIT, optimizer, m, carried,
                                      halves[1], held_out)
  for a, b in zip(jax.tree.leaves(full_state.weights),
                  jax.tree.leaves(carried.weights)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  window_loss, window_grads = jax.jit(jax.value_and_grad(lambda m: meta.unroll(
      CIRCUIT, optimizer, m, state, halves[0], held_out)[0]))(m)
  np.testing.assert_allclose(loss_1, window_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(window_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


def test_the_average_meta_loss_is_the_mean_over_the_unroll():
  optimizer, state = _setup()
  batches, held_out = _problem(3)
  m = meta.meta_params(learning_rate=0.05)
  average, _ = meta.unroll(CIRCUIT, optimizer, m, state, batches, held_out,
                           meta_loss="average")
  lasts = [meta.unroll(CIRCUIT, optimizer, m, state,
                       jax.tree.map(lambda a, t=t: a[:t], batches),
                       held_out)[0] for t in (1, 2, 3)]
  np.testing.assert_allclose(average, np.mean(lasts), rtol=1e-5)


def test_the_smooth_clip_has_the_hard_clips_limits():
  def clip(smooth, norm):  # the clipped norm of an update of this norm
    transform = sj.optim.clip_by_global_norm(1.0, smooth)
    update = jnp.full(4, norm / 2.0)
    clipped, _ = transform.update(update, transform.init(update))
    return float(jnp.linalg.norm(clipped))

  for smooth in (False, True):
    assert clip(smooth, 1e-3) == pytest.approx(1e-3, rel=1e-5)
    assert clip(smooth, 1e3) == pytest.approx(1.0, rel=1e-5)
  assert clip(True, 1.0) == pytest.approx(2 ** -0.5, rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(meta_loss="best"), "unknown meta_loss 'best'"),
    (dict(remat_every=3), "remat_every=3 does not divide the 4 steps"),
])
def test_bad_unroll_settings_raise_value_error(kwargs, message):
  optimizer, state = _setup()
  batches, held_out = _problem(4)
  with pytest.raises(ValueError, match=message):
    meta.unroll(CIRCUIT, optimizer, meta.meta_params(), state, batches,
                held_out, **kwargs)
