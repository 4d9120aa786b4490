"""Runs can be trusted: exact resume, divergence reports, determinism, guards."""

import json
import textwrap

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import sal_jax as sj
from experiments import cells
from experiments import checkpoints
from experiments import data as data_lib
from experiments import logs
from experiments import plans
from experiments import run
from experiments.configs import table1

from tests.conftest import experiment_config
from tests.conftest import run_on_four_fake_devices
from tests.conftest import write_mnist_npz


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """An MNIST-format .npz with 256 training images."""
  return write_mnist_npz(tmp_path_factory.mktemp("data"), 256, 50)


def _config(data_dir, **overrides):
  return experiment_config(table1, data_dir,
                           **{"model__method": "sal", "data__train_size": 64,
                              **overrides})


def lines_without_timing(workdir):
  return [{k: v for k, v in json.loads(l).items()
           if k not in logs.TIMING_FIELDS}
          for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def final_state(workdir, label="sal", like=None):
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


def _cell(config, data, members=None):
  circuit = cells.make_circuit(config, data)
  return cells.make_cell(config, "sal", circuit,
                         members or cells.seed_members(config))


def test_same_config_and_seed_give_identical_metrics(tmp_path, data_dir):
  config = _config(data_dir, run__checkpoint_every=0)
  run.train_and_evaluate(config, tmp_path / "a")
  run.train_and_evaluate(config, tmp_path / "b")
  lines = lines_without_timing(tmp_path / "a")
  assert len(lines) == 4 and lines == lines_without_timing(tmp_path / "b")


def _resumed_equals_straight(tmp_path, data_dir, **overrides):
  """Three epochs straight, and one then resumed to three: the same bits
  and log lines; returns the resumed run's final state."""
  config = lambda epochs: _config(data_dir, run__epochs=epochs, **overrides)
  run.train_and_evaluate(config(3), tmp_path / "straight")
  run.train_and_evaluate(config(1), tmp_path / "resumed")
  run.train_and_evaluate(config(3), tmp_path / "resumed")
  epoch_a, state_a = final_state(tmp_path / "straight")
  epoch_b, state_b = final_state(tmp_path / "resumed")
  assert epoch_a == epoch_b == 3
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)  # bitwise
  assert lines_without_timing(tmp_path / "straight") == lines_without_timing(
      tmp_path / "resumed")
  return state_b


def test_a_run_resumed_from_its_checkpoint_equals_one_run_bitwise(
    tmp_path, data_dir):
  _resumed_equals_straight(tmp_path, data_dir)


def test_bfloat16_storage_is_checkpointed_as_is_and_resumes_bitwise(
    tmp_path, data_dir):
  state = _resumed_equals_straight(tmp_path, data_dir,
                                   compute__update_dtype="bfloat16",
                                   compute__momentum_dtype="bfloat16")
  momentum = jax.tree.leaves(
      optax.tree_utils.tree_get(state["opt_state"], "trace"))
  assert momentum and {m.dtype for m in momentum} == {
      np.dtype(jax.numpy.bfloat16)}


def test_divergence_is_recorded_naming_epoch_step_method_and_rates(
    tmp_path, data_dir):
  config = _config(data_dir, optimizer__learning_rate=1e6,
                   optimizer__clip_norm=None, run__seeds=1,
                   data__train_size=None)
  results = run.train_and_evaluate(config, tmp_path)
  error, = results["diverged"]
  for part in ("method sal", "learning_rate=1e+06", "at epoch 1", "step "):
    assert part in error, error
  sal = results["summary"]["methods"]["sal"]
  assert sal["diverged"]["0"]["epoch"] == 1 and sal["seeds"] == []
  assert "diverged" in (tmp_path / "table.md").read_text()
  # Nothing after the divergence was checkpointed.
  assert checkpoints.latest_epoch(
      checkpoints.cell_directory(tmp_path, "sal")) is None


def test_checkpoints_keep_a_diverged_members_last_good_state(tmp_path,
                                                             data_dir):
  config = _config(data_dir, run__seeds=2)
  config_json = json.loads(config.to_json())
  data = data_lib.load(config.data)
  cell = _cell(config, data)
  logger = logs.Logger(tmp_path)
  run.run_cell(config, cell, data, logger, tmp_path / "good")
  # A copy of epoch 2 in which member 0's weights overflow at the next step.
  _, like = cells.initial_states(config, cell)
  states, meta, _ = checkpoints.restore(tmp_path / "good", 2, like)
  states = states.replace(weights=jax.tree.map(
      lambda w: w.at[0].multiply(1e30), states.weights))
  bad = tmp_path / "bad"
  stored_2 = checkpoints.save(checkpoints.manager(bad, 2), 2, states, meta,
                              config_json)
  config.run.epochs = 4
  result = run.run_cell(config, cell, data, logger, bad)
  logger.close()
  assert result["diverged"] == {0: (3, 0)}
  assert checkpoints.latest_epoch(bad) == 4  # member 1 trained on
  _, _, stored_4 = checkpoints.restore(bad, 4, like)
  for at_2, at_4 in zip(jax.tree.leaves(stored_2), jax.tree.leaves(stored_4)):
    assert np.all(np.isfinite(at_4))
    np.testing.assert_array_equal(at_2[0], at_4[0])  # member 0 as it was
  assert not np.array_equal(stored_2.weights.w[0][1],
                            stored_4.weights.w[0][1])


def test_a_diverging_member_is_marked_and_the_others_carry_on(tmp_path,
                                                              data_dir):
  config = _config(data_dir, optimizer__clip_norm=None)
  data = data_lib.load(config.data)
  cell = _cell(config, data, [dict(seed=0, learning_rate=1e6), dict(seed=1)])
  logger = logs.Logger(tmp_path)
  result = run.run_cell(config, cell, data, logger)
  logger.close()
  assert list(result["diverged"]) == [0]
  assert len(result["history"][1]) == 2
  assert np.isfinite(result["history"][1][-1]["test_accuracy"])
  summary = cells.summarize(result)
  assert summary["seeds"] == [1] and "0" in summary["diverged"]


def test_workdir_of_another_configuration_is_refused_before_writing(
    tmp_path, data_dir):
  run.train_and_evaluate(_config(data_dir, run__epochs=1), tmp_path)
  before = (tmp_path / "config.json").read_text()
  with pytest.raises(ValueError, match="holds a run of a different "
                     "configuration .*data.dataset: 'mnist' -> "
                     "'fashion_mnist'"):
    run.train_and_evaluate(_config(data_dir, run__epochs=1,
                                   data__dataset="fashion_mnist"), tmp_path)
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
    run.train_and_evaluate(_config(data_dir), tmp_path / workdir)
  assert sorted(tmp_path.rglob("*")) == before


def test_checkpoint_of_another_state_shape_is_refused_and_nothing_changes(
    tmp_path, data_dir):
  config = _config(data_dir, run__epochs=1)
  run.train_and_evaluate(config, tmp_path)
  # A newer checkpoint whose optimizer state has another structure, as one
  # written by another version of the library would (here: no clip state).
  circuit = cells.make_circuit(config, data_lib.load(config.data))
  other = sj.sweep.init_sweep(
      jax.numpy.stack([jax.random.key(0)]), circuit,
      sj.reference_optimizer(circuit, clip_norm=None))
  checkpoints.save(
      checkpoints.manager(checkpoints.cell_directory(tmp_path, "sal"), 2), 2,
      other, dict(history=[[]], diverged={}), json.loads(config.to_json()))
  snapshot = lambda: {p: p.read_bytes() for p in tmp_path.rglob("*")
                      if p.is_file()}
  before = snapshot()
  with pytest.raises(ValueError) as error:
    run.train_and_evaluate(_config(data_dir, run__epochs=3), tmp_path)
  assert "does not hold this run's training state" in str(error.value)
  assert str(checkpoints.cell_directory(tmp_path, "sal")) in str(error.value)
  assert snapshot() == before


def test_metrics_also_go_to_tensorboard_event_files(tmp_path, data_dir):
  run.train_and_evaluate(_config(data_dir, run__epochs=1), tmp_path)
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert events and b"test_accuracy" in events[0].read_bytes()


def test_old_checkpoints_are_pruned_leaving_only_complete_steps(tmp_path,
                                                                data_dir):
  config = _config(data_dir, run__epochs=4, run__seeds=1,
                   run__keep_checkpoints=2)
  data = data_lib.load(config.data)
  logger = logs.Logger(tmp_path)
  run.run_cell(config, _cell(config, data), data, logger, tmp_path / "ckpt")
  logger.close()
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["3", "4"]


_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                  "3.21GiB.")


def test_out_of_device_memory_names_the_cell_its_size_and_what_to_change(
    tmp_path, data_dir, monkeypatch):
  def out_of_memory(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(_OUT_OF_MEMORY)
  monkeypatch.setattr(sj.sweep, "sweep_epoch", out_of_memory)
  config = _config(data_dir, run__seeds=3)
  with pytest.raises(run.DeviceMemoryError) as error:
    run.train_and_evaluate(config, tmp_path)
  cell, = plans.PLANS["table1"][0](config, data_lib.load(config.data))
  states = cells.initial_states(config, cell)[1]
  state_mb = sum(x.nbytes for x in jax.tree.leaves(states)) / 1e6
  message = str(error.value)
  assert message.startswith(f"{cell.label}: out of device memory "
                            f"({_OUT_OF_MEMORY})")
  assert "Its 3 members train as one program" in message
  assert state_mb > 0.01 and f"take {state_mb:.1f} MB" in message
  for advice in ("--config.run.seeds", "--config.run.member_devices",
                 "--config.compute.xla_options="
                 "xla_gpu_command_buffer_scheduling_mode=LHS"):
    assert advice in message
  assert not (tmp_path / "results.json").exists()


def test_other_device_errors_are_not_taken_for_memory(tmp_path, data_dir,
                                                      monkeypatch):
  def fail(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")
  monkeypatch.setattr(sj.sweep, "sweep_epoch", fail)
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    run.train_and_evaluate(_config(data_dir), tmp_path)


def test_matmul_precision_and_compiler_options_are_recorded(tmp_path,
                                                            data_dir):
  config = _config(data_dir, run__epochs=1, run__seeds=1,
                   compute__matmul_precision="highest",
                   compute__xla_options="xla_gpu_dot_merger_threshold_mb=1")
  results = run.train_and_evaluate(config, tmp_path)
  assert results["matmul_precision"] == "highest"
  assert results["xla_options"] == dict(
      sj.compute.GPU_OPTIONS, xla_gpu_dot_merger_threshold_mb=1)


DEVICES_SCRIPT = textwrap.dedent("""
    import pathlib, sys
    from absl import logging
    import jax
    from experiments import run
    from tests.conftest import experiment_config
    from experiments.configs import table1
    assert jax.device_count() == 4, jax.devices()
    data_dir, out = sys.argv[1], pathlib.Path(sys.argv[2])
    logging.set_verbosity(logging.INFO)

    def train(workdir, epochs, member_devices):
      config = experiment_config(
          table1, data_dir, model__method="sal", run__seeds=8,
          data__train_size=256, run__epochs=epochs,
          run__member_devices=member_devices)
      return run.train_and_evaluate(config, str(out / workdir))

    train("one", 3, 1)
    train("moved", 1, 0)  # 4 devices, checkpoint of epoch 1
    train("moved", 2, 1)  # resumed on one device, checkpoint of epoch 2
    results = train("moved", 3, 0)  # resumed on four
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
  epoch_a, state_a = final_state(tmp_path / "one")
  epoch_b, state_b = final_state(tmp_path / "moved", like=state_a)
  assert epoch_a == epoch_b == 3
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)  # bitwise
  # The evaluations sum their losses in another order on a device's share.
  lines_a = lines_without_timing(tmp_path / "one")
  lines_b = lines_without_timing(tmp_path / "moved")
  assert [l.keys() for l in lines_a] == [l.keys() for l in lines_b]
  for a, b in zip(lines_a, lines_b):
    assert (a["cell"], a["seed"], a["epoch"]) == (b["cell"], b["seed"],
                                                   b["epoch"])
    np.testing.assert_allclose(
        [a[k] for k in a if k != "cell"], [b[k] for k in b if k != "cell"],
        rtol=1e-6)
