"""Shared test setup: strict numerics, small helpers."""

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
