"""Shared test setup: strict numerics, small helpers."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

# Catch silent broadcasting bugs (as the equinox test suite does).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def random_batch(rng, batch_size, d_in, num_classes, multi_label=False):
  x = rng.standard_normal((batch_size, d_in)).astype(np.float32)
  if multi_label:
    y = (rng.random((batch_size, num_classes)) < 0.3).astype(np.float32)
  else:
    y = rng.integers(0, num_classes, batch_size).astype(np.int32)
  return x, y


def write_mnist_npz(directory, num_train, num_test):
  """A random MNIST-format ``mnist.npz`` in ``directory``; returns it."""
  rng = np.random.default_rng(0)
  np.savez(directory / "mnist.npz",
           x_train=rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
           y_train=rng.integers(0, 10, num_train),
           x_test=rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
           y_test=rng.integers(0, 10, num_test))
  return directory


ROOT = pathlib.Path(__file__).parents[1]


def run_on_four_fake_devices(script, *args, timeout=240):
  """Runs ``python -c script *args`` where JAX sees 4 CPU devices.

  A subprocess: the device count is fixed when JAX starts.
  """
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-c", script, *map(str, args)],
                        env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
