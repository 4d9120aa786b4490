"""Runs can be trusted: exact resume, divergence reports, determinism, guards."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments import checkpoints
from experiments import logs
from experiments import train
from experiments.configs import table1

from tests.conftest import run_on_four_fake_devices
from tests.conftest import write_mnist_npz

ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """An MNIST-format .npz with 2,000 training images: epochs take a while."""
  return write_mnist_npz(tmp_path_factory.mktemp("data"), 2000, 50)


def _config(data_dir, **overrides):
  config = table1.get_config(runlocal=True)
  config.update(dict(dataset="mnist", data_dir=str(data_dir), method="sal"))
  config.update(overrides)
  return config


def _lines_without_timing(workdir):
  return [{k: v for k, v in json.loads(l).items()
           if k not in logs.TIMING_FIELDS}
          for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _final_state(workdir, label="sal", like=None):
  """The newest checkpoint's epoch and state (on this process's first device
  if ``like``, a state of the same shapes, is given)."""
  directory = checkpoints.cell_directory(workdir, label).absolute()
  mngr = ocp.CheckpointManager(directory)
  if like is not None:
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), like)
  restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
  return mngr.latest_step(), restored.state


def _cli(workdir, data_dir, *overrides, wait=True):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.main",
         f"--config={ROOT}/experiments/configs/table1.py:runlocal",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}",
         "--config.method=sal", *overrides]
  if not wait:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
  return subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


@pytest.mark.timeout(600)
def test_run_killed_mid_training_resumes_to_bitwise_identical_weights(
    tmp_path, data_dir):
  args = ("--config.epochs=12", "--config.train_size=2000")
  clean = _cli(tmp_path / "clean", data_dir, *args)
  assert clean.returncode == 0, clean.stderr[-2000:]

  killed_dir = tmp_path / "killed"
  proc = _cli(killed_dir, data_dir, *args, wait=False)
  cell_dir = checkpoints.cell_directory(killed_dir, "sal")
  def checkpointed_epoch():
    try:  # the run may be pruning an old checkpoint while we list them
      return checkpoints.latest_epoch(cell_dir) or 0
    except OSError:
      return 0

  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if checkpointed_epoch() >= 3:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed_dir / "results.json").exists()
  killed_at = checkpoints.latest_epoch(cell_dir)
  assert 3 <= killed_at < 12

  resumed = _cli(killed_dir, data_dir, *args)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from the checkpoint of epoch {killed_at}" in resumed.stderr
  epoch_a, state_a = _final_state(tmp_path / "clean")
  epoch_b, state_b = _final_state(killed_dir)
  assert epoch_a == epoch_b == 12
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)  # bitwise
  assert _lines_without_timing(tmp_path / "clean") == _lines_without_timing(
      killed_dir)


def test_same_config_and_seed_give_identical_metrics(tmp_path, data_dir):
  config = _config(data_dir, epochs=2, checkpoint_every=0)
  train.train_and_evaluate(config, tmp_path / "a")
  train.train_and_evaluate(config, tmp_path / "b")
  lines = _lines_without_timing(tmp_path / "a")
  assert len(lines) == 4 and lines == _lines_without_timing(tmp_path / "b")


def test_bfloat16_storage_is_checkpointed_as_is_and_resumes_bitwise(
    tmp_path, data_dir):
  config = lambda epochs: _config(
      data_dir, epochs=epochs, train_size=64, checkpoint_every=1,
      update_dtype="bfloat16", momentum_dtype="bfloat16")
  train.train_and_evaluate(config(3), tmp_path / "straight")
  train.train_and_evaluate(config(1), tmp_path / "resumed")
  train.train_and_evaluate(config(3), tmp_path / "resumed")
  epoch_a, state_a = _final_state(tmp_path / "straight")
  epoch_b, state_b = _final_state(tmp_path / "resumed")
  assert epoch_a == epoch_b == 3
  momentum = jax.tree.leaves(
      optax.tree_utils.tree_get(state_b["opt_state"], "trace"))
  assert momentum and {m.dtype for m in momentum} == {
      np.dtype(jax.numpy.bfloat16)}
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)  # bitwise


def test_divergence_exits_nonzero_naming_epoch_step_method_and_rates(
    tmp_path, data_dir):
  result = _cli(tmp_path, data_dir, "--config.learning_rate=1e6",
                "--config.clip_norm=0", "--config.seeds=1")
  assert result.returncode == 3, result.stderr[-2000:]
  error = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1
  for part in ("diverged", "method sal", "learning_rate=1e+06", "epoch 1",
               "step "):
    assert part in error[0], error[0]
  results = json.loads((tmp_path / "results.json").read_text())
  sal = results["summary"]["methods"]["sal"]
  assert sal["diverged"]["0"]["epoch"] == 1 and sal["seeds"] == []
  assert "diverged" in (tmp_path / "table.md").read_text()
  # Nothing after the divergence was checkpointed.
  assert checkpoints.latest_epoch(
      checkpoints.cell_directory(tmp_path, "sal")) is None


def test_divergence_leaves_the_last_good_checkpoint_intact(tmp_path,
                                                           data_dir):
  config = _config(data_dir, epochs=2, seeds=1, train_size=64)
  data = train.load_data(config)
  cell = train.Cell("sal", train.make_circuit(config, data),
                    train.seed_members(config))
  good = tmp_path / "good"
  logger = logs.Logger(tmp_path)
  train.run_cell(config, cell, data, logger, good)
  # A copy of epoch 2 whose weights will overflow at the next step.
  bad = tmp_path / "bad"
  like = train.loop.init_sweep(jax.numpy.stack([jax.random.key(0)]),
                               cell.circuit,
                               train.make_optimizer(config, cell.circuit))
  states, meta = checkpoints.restore_latest(checkpoints.manager(good, 2), like)
  states = states.replace(weights=jax.tree.map(lambda w: w * 1e30,
                                               states.weights))
  checkpoints.save(checkpoints.manager(bad, 2), 2, states,
                   dict(history=meta["history"], diverged={}))
  config.epochs = 4
  result = train.run_cell(config, cell, data, logger, bad)
  logger.close()
  assert result["diverged"] == {0: (3, 0)}
  assert checkpoints.latest_epoch(bad) == 2


def test_a_diverging_member_is_marked_and_the_others_carry_on(tmp_path,
                                                              data_dir):
  config = _config(data_dir, epochs=2, train_size=64, clip_norm=0.0)
  data = train.load_data(config)
  cell = train.Cell("sal", train.make_circuit(config, data),
                    [dict(seed=0, learning_rate=1e6), dict(seed=1)])
  logger = logs.Logger(tmp_path)
  result = train.run_cell(config, cell, data, logger)
  logger.close()
  assert list(result["diverged"]) == [0]
  assert len(result["history"][1]) == 2
  assert np.isfinite(result["history"][1][-1]["test_accuracy"])
  summary = train.summarize(result)
  assert summary["seeds"] == [1] and "0" in summary["diverged"]


def test_workdir_of_another_experiment_is_refused_before_writing(tmp_path,
                                                                 data_dir):
  first = _cli(tmp_path, data_dir, "--config.epochs=1")
  assert first.returncode == 0
  before = (tmp_path / "config.json").read_text()
  again = _cli(tmp_path, data_dir, "--config.epochs=1",
               "--config.dataset=fashion_mnist")
  assert again.returncode == 2
  assert "holds a run of a different configuration" in again.stderr
  assert "dataset" in again.stderr
  assert (tmp_path / "config.json").read_text() == before


@pytest.mark.parametrize("workdir, message", [
    ("a_file", "a_file exists and is not a directory"),
    ("a_file/run", "a_file exists and is not a directory"),
    ("bad_json", "its config.json is not readable JSON"),
])
def test_a_workdir_that_cannot_be_one_is_refused_naming_why(
    tmp_path, data_dir, workdir, message):
  (tmp_path / "a_file").write_text("not a directory")
  (tmp_path / "bad_json").mkdir()
  (tmp_path / "bad_json" / "config.json").write_text("{oops")
  before = sorted(tmp_path.rglob("*"))
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_config(data_dir), tmp_path / workdir)
  assert sorted(tmp_path.rglob("*")) == before


def test_checkpoint_of_another_state_shape_is_refused_and_nothing_changes(
    tmp_path, data_dir):
  first = _cli(tmp_path, data_dir, "--config.epochs=1",
               "--config.checkpoint_every=1")
  assert first.returncode == 0, first.stderr[-2000:]
  # A newer checkpoint whose optimizer state has another structure, as one
  # written by another version of the library would (here: no clip state).
  config = _config(data_dir)
  data = train.load_data(config)
  circuit = train.make_circuit(config, data)
  other = train.loop.init_sweep(
      jax.numpy.stack([jax.random.key(0)]), circuit,
      train.sj.reference_optimizer(circuit, clip_norm=None))
  checkpoints.save(
      checkpoints.manager(checkpoints.cell_directory(tmp_path, "sal"), 2), 2,
      other, dict(history=[[]], diverged={}))
  snapshot = lambda: {p: p.read_bytes() for p in tmp_path.rglob("*")
                      if p.is_file()}
  before = snapshot()
  again = _cli(tmp_path, data_dir, "--config.epochs=3",
               "--config.checkpoint_every=1")
  assert again.returncode == 2
  assert "does not hold this run's training state" in again.stderr
  assert str(checkpoints.cell_directory(tmp_path, "sal")) in again.stderr
  assert snapshot() == before


@pytest.mark.parametrize("override, message", [
    ("--config.learning_rate=-0.1", "learning_rate must be non-negative"),
    ("--config.weight_decay=-1", "weight_decay must be non-negative"),
    ("--config.nonlinearity=gelu", "unknown nonlinearity 'gelu'"),
    ("--config.ratio=0", "ratio must be positive"),
    ("--config.hidden=(16,0)", "hidden widths must be positive"),
    ("--config.seeds=0", "seeds must be positive"),
    ("--config.checkpoint_every=-1", "checkpoint_every must be non-negative"),
    ("--config.keep_checkpoints=0", "keep_checkpoints must be at least 1"),
])
def test_bad_settings_are_refused_before_anything_is_written(
    tmp_path, data_dir, override, message):
  result = _cli(tmp_path / "run", data_dir, override)
  assert result.returncode == 2 and message in result.stderr, result.stderr
  assert not (tmp_path / "run").exists()


def test_metrics_also_go_to_tensorboard_event_files(tmp_path, data_dir):
  config = _config(data_dir, epochs=1, train_size=64)
  train.train_and_evaluate(config, tmp_path)
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert events and b"test_accuracy" in events[0].read_bytes()


def test_old_checkpoints_are_pruned_leaving_only_complete_steps(tmp_path,
                                                                data_dir):
  config = _config(data_dir, epochs=4, seeds=1, train_size=64,
                   checkpoint_every=1, keep_checkpoints=2)
  data = train.load_data(config)
  cell = train.Cell("sal", train.make_circuit(config, data),
                    train.seed_members(config))
  logger = logs.Logger(tmp_path)
  train.run_cell(config, cell, data, logger, tmp_path / "ckpt")
  logger.close()
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["3", "4"]


DEVICES_SCRIPT = textwrap.dedent("""
    import pathlib, sys
    from absl import logging
    import jax
    from experiments import train
    from experiments.configs import table1
    assert jax.device_count() == 4, jax.devices()
    data_dir, out = sys.argv[1], pathlib.Path(sys.argv[2])
    logging.set_verbosity(logging.INFO)

    def run(workdir, epochs, member_devices):
      config = table1.get_config(runlocal=True)
      config.update(dict(dataset="mnist", data_dir=data_dir, method="sal",
                         seeds=8, train_size=256, epochs=epochs,
                         member_devices=member_devices))
      return train.train_and_evaluate(config, str(out / workdir))

    run("one", 3, 1)
    run("moved", 1, 0)  # 4 devices, checkpoint of epoch 1
    run("moved", 2, 1)  # resumed on one device, checkpoint of epoch 2
    results = run("moved", 3, 0)  # resumed on four
    assert results["local_devices"] == 4, results
    print("DEVICES OK")
""")


@pytest.mark.timeout(600)
def test_run_split_over_devices_and_resumed_across_device_counts_is_bitwise(
    tmp_path, data_dir):
  """Members on four fake devices, then one, then four: one device's bits.

  Two members per device: with one, XLA:CPU drops the member axis from the
  products and rounds differently (parallel_test checks that case to float32
  tolerance).
  """
  result = run_on_four_fake_devices(DEVICES_SCRIPT, data_dir, tmp_path,
                                    timeout=500)
  assert "DEVICES OK" in result.stdout, result.stderr[-3000:]
  assert "sal: 8 members split over 4 devices" in result.stderr
  assert "resumed from the checkpoint of epoch 2" in result.stderr
  epoch_a, state_a = _final_state(tmp_path / "one")
  epoch_b, state_b = _final_state(tmp_path / "moved", like=state_a)
  assert epoch_a == epoch_b == 3
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)  # bitwise
  # The evaluations sum their losses in another order on a device's share.
  lines_a = _lines_without_timing(tmp_path / "one")
  lines_b = _lines_without_timing(tmp_path / "moved")
  assert [l.keys() for l in lines_a] == [l.keys() for l in lines_b]
  for a, b in zip(lines_a, lines_b):
    assert (a["cell"], a["seed"], a["epoch"]) == (b["cell"], b["seed"],
                                                   b["epoch"])
    np.testing.assert_allclose(
        [a[k] for k in a if k != "cell"], [b[k] for k in b if k != "cell"],
        rtol=1e-6)
