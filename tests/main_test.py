"""The command line: one line and exit 2 for bad input, exit 3 for
divergence, progress on stderr, a SIGKILL resumed bitwise."""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import checkpoints
from experiments import files
from experiments import run

from tests.conftest import run_cli
from tests.conftest import write_mnist_npz
from tests.run_test import final_state
from tests.run_test import lines_without_timing

ROOT = pathlib.Path(__file__).parents[1]
TABLE1 = f"--config={ROOT}/experiments/configs/table1.py:runlocal"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_mnist_npz(tmp_path_factory.mktemp("data"), 256, 20)


@pytest.mark.parametrize("override, message", [
    ("--config.model.method=backprop", "unknown method 'backprop'"),
    ("--config.data.dataset=imagenet", "unknown dataset 'imagenet'"),
    ("--config.run.epochs=0", "run.epochs must be positive"),
    ("--config.run.seeds=0", "run.seeds must be positive"),
    ("--config.compute.unroll=0", "unroll must be a positive integer"),
    ("--config.run.member_devices=-1", "member_devices must be between 0"),
    ("--config.compute.matmul_precision=fp7", "bad matmul_precision 'fp7'"),
    ("--config.compute.update_dtype=fp8", "unknown update_dtype 'fp8'"),
    ("--config.compute.momentum_dtype=half", "unknown momentum_dtype 'half'"),
    ("--config.compute.xla_options=split_k", "'split_k': expected NAME=VALUE"),
    ("--config.optimizer.learning_rate=-0.1",
     "learning_rate must be finite and non-negative"),
    ("--config.optimizer.weight_decay=-1",
     "weight_decay must be finite and non-negative"),
    ("--config.optimizer.clip_norm=0", "clip_norm must be positive"),
    ("--config.model.nonlinearity=gelu", "unknown nonlinearity 'gelu'"),
    ("--config.model.ratio=0", "ratio must be positive"),
    ("--config.model.hidden=(16,0)", "hidden widths must be positive"),
    # Values that are numbers but not usable ones (issue: values that got
    # through the checks).
    ("--config.model.ratio=inf", "ratio must be positive and finite"),
    ("--config.optimizer.learning_rate=inf",
     "learning_rate must be finite and non-negative, got inf"),
    ("--config.optimizer.multipliers=(1.0,nan,1.0,1.0)",
     "multipliers must be four numbers (W, W̄, V, V̄), got ('(1.0,nan"),
    ("--config.optimizer.clip_norm=nan", "clip_norm must be positive (None "
     "or inf: no clip), got nan"),
    ("--config.model.hidden=(32.5,32)",
     "hidden widths must be positive integers, got (32.5, 32)"),
    ("--config.run.divergence_factor=0.5", "divergence_factor must be finite "
     "and above 1"),
    ("--workdir=", "--workdir is empty"),
    ("--config.run.checkpoint_every=-1",
     "checkpoint_every must be non-negative"),
    ("--config.run.keep_checkpoints=0", "keep_checkpoints must be at least 1"),
    ("--config.run.epoch=3", "--config.run.epoch: the config has no field "
     "'epoch'; did you mean \"epochs\""),
    ("--config.run.epochs=None", "--config.run.epochs=None: this field "
     "cannot be None"),
    ("--config.run.epochs=three", "flag --config.run.epochs=three: invalid "
     "literal"),
])
def test_bad_setting_exits_2_with_one_line_and_writes_nothing(
    tmp_path, data_dir, capsys, override, message, monkeypatch):
  monkeypatch.chdir(tmp_path)
  workdir = tmp_path / "run"
  status, stderr = run_cli(capsys, TABLE1, f"--workdir={workdir}",
                           f"--config.data.data_dir={data_dir}", override)
  assert status == 2, stderr[-2000:]
  error_lines = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert len(error_lines) == 1 and message in error_lines[0], stderr[-2000:]
  assert sorted(tmp_path.iterdir()) == []


def test_a_field_given_twice_is_refused_not_concatenated(tmp_path, data_dir,
                                                         capsys):
  status, stderr = run_cli(capsys, TABLE1, f"--workdir={tmp_path / 'run'}",
                           f"--config.data.data_dir={data_dir}",
                           "--config.model.hidden=(16,16)",
                           "--config.model.hidden=(8,8)")
  assert status == 2 and stderr.strip().splitlines()[-1] == (
      "error: --config.model.hidden is given more than once")
  assert not (tmp_path / "run").exists()


def test_sigint_and_sigterm_end_a_run_with_one_line_naming_where_it_resumes(
    tmp_path, data_dir, capsys, monkeypatch):
  real_run_cell = run.run_cell
  for signum in (signal.SIGINT, signal.SIGTERM):

    def interrupted_after_epoch_1(config, *args, signum=signum, **kwargs):
      config = config.copy_and_resolve_references()
      config.run.epochs = 1  # trains and checkpoints epoch 1 of 2
      real_run_cell(config, *args, **kwargs)
      os.kill(os.getpid(), signum)
      time.sleep(10)  # the signal's handler raises in here

    monkeypatch.setattr(run, "run_cell", interrupted_after_epoch_1)
    status, stderr = run_cli(
        capsys, TABLE1, f"--config.data.data_dir={data_dir}",
        "--config.model.method=sal", f"--workdir={tmp_path / signum.name}")
    assert status == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: interrupted while training sal; rerun the same command to "
        "resume sal from its checkpoint of epoch 1"), stderr[-2000:]
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    PermissionError(errno.EACCES, "Permission denied"),
    OSError(errno.EROFS, "Read-only file system"),
])
def test_a_full_disk_or_unwritable_workdir_exits_2_with_one_line(
    tmp_path, data_dir, capsys, monkeypatch, error):
  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(files, "write_text", fail)
  status, stderr = run_cli(capsys, TABLE1, f"--workdir={tmp_path / 'run'}",
                           f"--config.data.data_dir={data_dir}",
                           "--config.model.method=sgd")
  assert status == 2 and "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
      f"error: could not read or write the run's files: {error}")


def test_missing_dataset_exits_2_naming_the_data_dir_flag(tmp_path, capsys):
  workdir = tmp_path / "run"
  status, stderr = run_cli(
      capsys, TABLE1, f"--workdir={workdir}", "--config.data.source=local",
      f"--config.data.data_dir={tmp_path / 'nowhere'}")
  assert status == 2
  error, = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert "dataset 'mnist' not found" in error
  assert "--config.data.data_dir" in error
  assert not workdir.exists()


def test_out_of_device_memory_exits_2_with_one_line(tmp_path, data_dir,
                                                    capsys, monkeypatch):
  import sal_jax as sj  # pylint: disable=g-import-not-at-top

  def out_of_memory(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory")
  monkeypatch.setattr(sj.sweep, "sweep_epoch", out_of_memory)
  status, stderr = run_cli(capsys, TABLE1, f"--workdir={tmp_path}",
                           f"--config.data.data_dir={data_dir}",
                           "--config.model.method=sal")
  assert status == 2
  error, = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert "out of device memory" in error


def test_divergence_exits_3_naming_the_member(tmp_path, data_dir, capsys):
  status, stderr = run_cli(
      capsys, TABLE1, f"--workdir={tmp_path}",
      f"--config.data.data_dir={data_dir}", "--config.model.method=sal",
      "--config.optimizer.learning_rate=1e6",
      "--config.optimizer.clip_norm=None", "--config.run.seeds=1")
  assert status == 3, stderr[-2000:]
  error, = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert "diverged" in error and "learning_rate=1e+06" in error


def test_a_run_prints_its_config_first_and_where_its_results_are(
    tmp_path, data_dir, capsys):
  status, stderr = run_cli(capsys, TABLE1, f"--workdir={tmp_path}",
                           f"--config.data.data_dir={data_dir}",
                           "--config.model.method=sal", "--config.run.epochs=1")
  assert status == 0, stderr[-2000:]
  assert stderr.startswith("config (table1):\n")
  for field in ("data:", "model:", "optimizer:", "run:", "compute:",
                "learning_rate: 0.005"):
    assert field in stderr
  assert f"results in {tmp_path}/" in stderr.splitlines()[-1]


def test_help_names_every_experiment_config():
  from experiments import main  # pylint: disable=g-import-not-at-top
  help_text = main.flags.FLAGS["config"].help
  for name in ("ablation", "alignment", "digits", "feedback_nonlinearity",
               "lr_grid", "modulation", "structure", "table1", "width_sweep"):
    assert name in help_text
  assert ":runlocal" in help_text


def _module(workdir, data_dir, *overrides, wait=True):
  """``python -m experiments.main`` as a user runs it, from the clone."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.main", TABLE1,
         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
         "--config.model.method=sal", "--config.data.train_size=None",
         *overrides]
  if not wait:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)


def test_progress_lines_are_not_buried_in_other_libraries_info_lines(
    tmp_path, data_dir):
  result = _module(tmp_path, data_dir, "--config.run.epochs=2")
  assert result.returncode == 0, result.stderr[-2000:]
  assert checkpoints.latest_epoch(
      checkpoints.cell_directory(tmp_path, "sal")) == 2  # orbax did work
  lines = [l for l in result.stderr.splitlines()
           if l.startswith(("I", "W", "E")) and "] " in l]
  assert lines and all("] sal epoch " in l for l in lines), lines[:5]


@pytest.mark.timeout(600)
def test_run_killed_mid_training_resumes_to_bitwise_identical_weights(
    tmp_path, data_dir, capsys):
  args = ("--config.run.epochs=40",)
  killed_dir = tmp_path / "killed"
  proc = _module(killed_dir, data_dir, *args, wait=False)
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
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed_dir / "results.json").exists()
  killed_at = checkpoints.latest_epoch(cell_dir)
  assert 3 <= killed_at < 40

  common = (TABLE1, f"--config.data.data_dir={data_dir}",
            "--config.model.method=sal", "--config.data.train_size=None",
            *args)
  status, stderr = run_cli(capsys, *common, f"--workdir={killed_dir}")
  assert status == 0, stderr[-2000:]
  status, stderr = run_cli(capsys, *common, f"--workdir={tmp_path / 'clean'}")
  assert status == 0, stderr[-2000:]
  epoch_a, state_a = final_state(tmp_path / "clean")
  epoch_b, state_b = final_state(killed_dir)
  assert epoch_a == epoch_b == 40
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)  # bitwise
  assert lines_without_timing(tmp_path / "clean") == lines_without_timing(
      killed_dir)
