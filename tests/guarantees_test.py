"""What a run guarantees (README): one run per workdir, resumes only under
the same settings from verified checkpoints, metrics that match the restored
state, divergence that includes finite blow-ups, refusals before writing."""

import glob
import json
import logging
import os
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from experiments import checkpoints
from experiments import run
from experiments import workdir as workdir_lib

from tests.conftest import ROOT
from tests.conftest import write_mnist_npz
from tests.run_test import _config
from tests.run_test import final_state
from tests.run_test import lines_without_timing


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_mnist_npz(tmp_path_factory.mktemp("data"), 64, 20)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  """A workdir of a finished two-epoch run, checkpointed at epochs 1 and 2."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  run.train_and_evaluate(_config(data_dir, run__epochs=2), workdir)
  return workdir


def _copy(finished, tmp_path):
  shutil.copytree(finished, tmp_path / "run")
  return tmp_path / "run"


def _cell_dir(workdir):
  return checkpoints.cell_directory(workdir, "sal")


def _snapshot(workdir):
  return {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}


def _assert_ends_as_the_finished_run(workdir, finished):
  epoch_a, state_a = final_state(finished)
  epoch_b, state_b = final_state(workdir)
  assert epoch_a == epoch_b == 2
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)  # bitwise
  assert lines_without_timing(workdir) == lines_without_timing(finished)


# 1. One run per workdir.

_HOLDER = """
import pathlib, sys, time
from experiments import workdir
with workdir.locked(pathlib.Path(sys.argv[1])):
  print("locked", flush=True)
  time.sleep(120)
"""


def test_a_held_workdir_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(
    tmp_path, data_dir):
  workdir = tmp_path / "run"
  holder = subprocess.Popen(
      [sys.executable, "-c", _HOLDER, str(workdir)], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
      text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match=f"workdir {workdir} is in use by "
                       f"another run \\(pid {holder.pid} on "):
      run.train_and_evaluate(_config(data_dir, run__epochs=1), workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [workdir_lib.LOCK]
  finally:
    holder.kill()
    holder.wait()
  run.train_and_evaluate(_config(data_dir, run__epochs=1), workdir)
  assert (workdir / "results.json").exists()
  assert not (workdir / workdir_lib.LOCK).exists()


def test_a_refused_run_removes_the_workdir_it_made_for_its_lock(tmp_path):
  workdir = tmp_path / "new" / "run"
  with pytest.raises(RuntimeError):
    with workdir_lib.locked(workdir):
      assert (workdir / workdir_lib.LOCK).exists()
      raise RuntimeError("refused")
  assert list(tmp_path.iterdir()) == []


# 2. The configuration is recorded with the checkpoints.

def test_a_resume_under_other_settings_is_refused_without_config_json(
    tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path)
  (workdir / "config.json").unlink()
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match="written by a run of another "
                     "configuration .*optimizer.learning_rate: 0.005 -> 0.01"):
    run.train_and_evaluate(_config(data_dir, run__epochs=3,
                                   optimizer__learning_rate=0.01), workdir)
  assert _snapshot(workdir) == before


# 3 and 6. Damaged checkpoints are found, set aside and the previous used.

def _data_files(step_dir):
  return sorted((p for p in step_dir.glob("state/ocdbt.process_0/d/*")),
                key=lambda p: p.stat().st_size)


def _flip_a_byte(step_dir):
  path = _data_files(step_dir)[-1]
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _truncate(step_dir):
  path = _data_files(step_dir)[-1]
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _empty(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


def _truncate_meta(step_dir):
  path = step_dir / "meta" / "metadata"
  path.write_text(path.read_text()[:40])


@pytest.mark.parametrize("damage", [
    _flip_a_byte, _truncate, _empty, _truncate_meta,
    lambda step: _data_files(step)[-1].unlink(),
    lambda step: (step / "state" / "_METADATA").unlink(),
    lambda step: shutil.rmtree(step / "state"),
], ids=["flipped byte", "truncated data file", "empty step folder",
        "truncated metadata", "deleted data file", "deleted _METADATA",
        "deleted state"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(
    tmp_path, data_dir, finished, damage, caplog):
  workdir = _copy(finished, tmp_path)
  damage(_cell_dir(workdir) / "2")
  with caplog.at_level(logging.WARNING):
    run.train_and_evaluate(_config(data_dir, run__epochs=2), workdir)
  warnings = [r.getMessage() for r in caplog.records  # the project's own
              if r.levelno >= logging.WARNING and str(ROOT) in r.pathname]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith("sal: the checkpoint of epoch 2 is damaged (")
  assert (_cell_dir(workdir) / checkpoints.DAMAGED / "2").is_dir()
  _assert_ends_as_the_finished_run(workdir, finished)


def test_a_workdir_with_no_intact_checkpoint_is_refused_naming_the_files(
    tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path)
  for step in ("1", "2"):
    _flip_a_byte(_cell_dir(workdir) / step)
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match="no intact checkpoint in .*"
                     f"{_cell_dir(workdir) / '2'}: .*; "
                     f"{_cell_dir(workdir) / '1'}: "):
    run.train_and_evaluate(_config(data_dir, run__epochs=2), workdir)
  assert _snapshot(workdir) == before


# 4. No checkpoint holds a diverged member's non-finite state: see
# run_test.test_checkpoints_keep_a_diverged_members_last_good_state.

# 5, 7, 9, 12. metrics.jsonl and TensorBoard match the restored state.

def _metrics_keys(workdir):
  return [(l["cell"], l["seed"], l["epoch"]) for l in map(
      json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]


def test_checkpoint_every_0_on_a_checkpointed_workdir_resumes_and_logs_once(
    tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path)
  run.train_and_evaluate(_config(data_dir, run__epochs=3,
                                 run__checkpoint_every=0), workdir)
  keys = _metrics_keys(workdir)
  assert sorted(keys) == sorted(set(keys)) and len(keys) == 2 * 3
  assert checkpoints.latest_epoch(_cell_dir(workdir)) == 2  # none written


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(
    tmp_path, data_dir, finished, caplog):
  workdir = _copy(finished, tmp_path)
  shutil.rmtree(_cell_dir(workdir) / "2")  # killed while logging epoch 2
  metrics = workdir / "metrics.jsonl"
  metrics.write_text(metrics.read_text()[:-30])
  with caplog.at_level(logging.WARNING):
    run.train_and_evaluate(_config(data_dir, run__epochs=2), workdir)
  assert any(f"{metrics}: dropped its torn last line" in r.getMessage()
             for r in caplog.records)
  _assert_ends_as_the_finished_run(workdir, finished)


def test_a_damaged_metrics_line_before_the_last_is_refused_naming_it(
    tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path)
  metrics = workdir / "metrics.jsonl"
  lines = metrics.read_text().splitlines()
  metrics.write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match=f"{metrics}, line 2: not a metrics "
                     "record"):
    run.train_and_evaluate(_config(data_dir, run__epochs=2), workdir)
  assert _snapshot(workdir) == before


def test_fewer_epochs_than_a_workdir_has_trained_is_refused(
    tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path)
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match="sal is checkpointed at epoch 2, past "
                     "run.epochs=1"):
    run.train_and_evaluate(_config(data_dir, run__epochs=1), workdir)
  assert _snapshot(workdir) == before


def test_an_empty_test_split_is_refused_before_writing(tmp_path):
  data_dir = write_mnist_npz(tmp_path, 64, 0)
  with pytest.raises(ValueError, match="the test split of mnist is empty"):
    run.train_and_evaluate(_config(data_dir), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def _scalar_events(workdir):
  """(tag, step) of every scalar in the workdir's TensorBoard event files."""
  out = []
  for path in glob.glob(str(workdir / "tensorboard" / "*")):
    data, offset = open(path, "rb").read(), 0
    while offset < len(data):  # TFRecord: length, its CRC, data, its CRC
      length, = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      out += [(v.tag, event.step) for v in event.summary.value]
      offset += 12 + length + 4
  return out


def test_tensorboard_holds_each_epoch_once_after_a_resume(
    tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path)
  shutil.rmtree(_cell_dir(workdir) / "2")  # killed after logging epoch 2
  run.train_and_evaluate(_config(data_dir, run__epochs=2), workdir)
  events = _scalar_events(workdir)
  assert sorted(events) == sorted(_scalar_events(finished))
  assert len(events) == len(set(events))
  assert {step for _, step in events} == {1, 2}


# 8. Finite blow-ups are divergence.

def test_a_finite_blow_up_is_divergence(tmp_path, data_dir):
  config = _config(data_dir, optimizer__learning_rate=10.0)
  results = run.train_and_evaluate(config, tmp_path / "run")
  assert len(results["diverged"]) == 2 and "at epoch 2" in results[
      "diverged"][0]
  losses = [l["train_loss"] for l in map(json.loads, (
      tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
            if "train_loss" in l]
  assert np.all(np.isfinite(losses))  # nothing non-finite: the bound caught it
  config.run.divergence_factor = None
  results = run.train_and_evaluate(config, tmp_path / "unbounded")
  assert results["diverged"] == []


def test_the_divergence_step_is_the_first_loss_past_the_bound():
  losses = np.array([2.3, 40.0, 300.0, np.nan])
  assert run.first_bad_step(losses, 230.0) == 2
  assert run.first_bad_step(losses, None) == 3
  assert run.first_bad_step(losses[:2], 230.0) is None
