"""Shared test setup: strict numerics, small helpers."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# The suite's time is XLA's compile time: compile at LLVM's lowest
# optimisation level (the properties tested do not depend on it; the
# benchmark and the runs of RESULTS.md use XLA's default). Set before JAX
# starts its backend, and inherited by the tests' subprocesses.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(filter(None, (
      os.environ.get("XLA_FLAGS"), _FAST_COMPILE)))

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Catch silent broadcasting bugs (as the equinox test suite does).
jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests compile the same programs in several processes (two workers and the
# subprocesses): share them through a compilation cache made for this run.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                               tempfile.mkdtemp(prefix="sal_jax_tests_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_sessionfinish(session):
  """Removes the compilation cache this run made (once, in the controller)."""
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):
    shutil.rmtree(_CACHE, ignore_errors=True)


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
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS=os.environ["XLA_FLAGS"]
             + " --xla_force_host_platform_device_count=4")
  return subprocess.run([sys.executable, "-c", script, *map(str, args)],
                        env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
  """A tiny MNIST-format .npz: 48 training and 20 test images."""
  return write_mnist_npz(tmp_path_factory.mktemp("mnist"), 48, 20)


def experiment_config(module, data_dir, **overrides):
  """``module``'s smoke config on MNIST in ``data_dir``; ``overrides`` by
  dotted name with ``__`` for the dot (``run__epochs=1``)."""
  config = module.get_config(runlocal=True)
  config.data.dataset = "mnist"
  config.data.data_dir = str(data_dir)
  for name, value in overrides.items():
    *groups, field = name.split("__")
    node = config
    for group in groups:
      node = node[group]
    node[field] = value
  return config


def run_cli(capsys, *argv):
  """Runs ``experiments.main`` in this process: (exit status, stderr)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import main  # pylint: disable=g-import-not-at-top
  argv = ["main", *map(str, argv)]
  flags.FLAGS.unparse_flags()
  capsys.readouterr()
  saved, sys.argv = sys.argv, argv  # config_flags reads overrides from it
  try:
    main.main(main.parse_flags(argv))
    status = 0
  except SystemExit as e:
    status = e.code
  finally:
    sys.argv = saved
    flags.FLAGS.unparse_flags()
    for name in list(flags.FLAGS):  # the overrides are defined per parse
      if name.startswith("config."):
        delattr(flags.FLAGS, name)
  return status, capsys.readouterr().err
