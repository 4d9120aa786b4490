"""Every experiment runs end to end in its small variant on data written here."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import checkpoints
from experiments import plans
from experiments import train
from sal_jax import loop
from sal_jax import xla_options
from experiments.configs import (ablation, alignment, digits,
                                 feedback_nonlinearity, lr_grid, modulation,
                                 structure, table1, width_sweep)

from tests.conftest import write_mnist_npz

ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A tiny MNIST-format .npz: 48 training and 20 test images."""
  return write_mnist_npz(tmp_path_factory.mktemp("data"), 48, 20)


def _config(module, data_dir, **overrides):
  config = module.get_config(runlocal=True)
  config.dataset = "mnist"
  config.data_dir = str(data_dir)
  for k, v in overrides.items():
    config[k] = v
  return config


def _finite_numbers(obj):
  if isinstance(obj, dict):
    return all(_finite_numbers(v) for v in obj.values())
  if isinstance(obj, list):
    return all(_finite_numbers(v) for v in obj)
  if isinstance(obj, float):
    return math.isfinite(obj)
  return True


def _check_common(workdir, config, n_cells_members):
  files = {p.name for p in workdir.iterdir()}
  assert {"config.json", "metrics.jsonl", "results.json"} <= files
  assert json.loads((workdir / "config.json").read_text())["experiment"] == (
      config.experiment)
  lines = [json.loads(l) for l in
           (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(lines) == n_cells_members * config.epochs
  for line in lines:
    assert {"cell", "seed", "epoch", "train_loss", "train_accuracy",
            "test_accuracy", "examples_per_second"} <= set(line)
    assert _finite_numbers(line)
  results = json.loads((workdir / "results.json").read_text())
  assert results["experiment"] == config.experiment
  assert not results["diverged"]
  return results, files


def test_table1_writes_a_row_per_method_and_a_figure(tmp_path, data_dir):
  config = _config(table1, data_dir)
  train.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, 5 * config.seeds)
  methods = results["summary"]["methods"]
  assert list(methods) == ["sgd", "fa", "wm", "kp", "sal"]
  for s in methods.values():
    assert len(s["final_test_accuracy"]) == config.seeds
    assert 0 <= s["final"]["mean"] <= 1 and s["final"]["std"] >= 0
  table = (tmp_path / "table.md").read_text()
  assert "| SAL |" in table and "98.85" in table  # the paper's MNIST number
  assert {"table.md", "test_accuracy.png"} <= files


def test_matmul_precision_holds_for_every_epoch_and_compile_settings_are_recorded(
    tmp_path, data_dir, monkeypatch):
  seen = []
  sweep_epoch = loop.sweep_epoch

  def spy(*args, **kwargs):
    seen.append(jax.config.jax_default_matmul_precision)
    return sweep_epoch(*args, **kwargs)

  monkeypatch.setattr(loop, "sweep_epoch", spy)
  config = _config(table1, data_dir, method="sal", epochs=2, seeds=1,
                   matmul_precision="highest")
  results = train.train_and_evaluate(config, tmp_path)
  assert seen == ["highest", "highest"]
  assert results["matmul_precision"] == "highest"
  assert results["xla_options"] == xla_options.OPTIONS
  assert jax.config.jax_default_matmul_precision is None  # restored after


def test_width_sweep_records_parameter_counts(tmp_path, data_dir):
  config = _config(width_sweep, data_dir)
  train.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config,
                                 len(config.param_ratios) * config.seeds)
  ratios = results["summary"]["ratios"]
  assert ratios["4x"]["width_ratio"] == 2.0
  assert (ratios["4x"]["parameters"]["downstream"]
          > ratios["1x"]["parameters"]["downstream"])
  assert "width_sweep.png" in files


def test_feedback_nonlinearity_runs_all_four(tmp_path, data_dir):
  config = _config(feedback_nonlinearity, data_dir)
  train.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, 4 * config.seeds)
  assert set(results["summary"]["nonlinearities"]) == {
      "identity", "relu", "tanh", "relu_jacobian"}
  assert "feedback_nonlinearity.png" in files


def test_ablation_runs_eight_subsets_and_the_linear_model(tmp_path, data_dir):
  config = _config(ablation, data_dir)
  train.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, 9 * config.seeds)
  assert len(results["summary"]["subsets"]) == 9
  assert "linear (SGD)" in results["summary"]["subsets"]
  assert "ablation.png" in files


def test_lr_grid_chooses_on_validation_and_scores_fresh_seeds(tmp_path,
                                                              data_dir):
  config = _config(lr_grid, data_dir)
  train.train_and_evaluate(config, tmp_path)
  points = (len(config.grid_w) * len(config.grid_w_bar) * len(config.grid_v)
            * len(config.grid_v_bar))
  search = (points + len(config.sgd_learning_rates)) * config.seeds
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == (search + 2 * config.final_seeds) * config.epochs
  results = json.loads((tmp_path / "results.json").read_text())["summary"]
  assert len(results["grid"]) == points
  assert "validation_accuracy" in json.loads(lines[0])
  assert results["chosen"]["sal"]["m_w"] in config.grid_w
  assert all(s >= config.seed + 1000
             for s in results["test"]["sal"]["seeds"])
  assert len(results["test"]["sgd"]["final_test_accuracy"]) == (
      config.final_seeds)
  assert (tmp_path / "lr_grid_heatmap_lr0.png").exists()
  # The search summary can be rebuilt from the log alone.
  (tmp_path / "lr_grid_heatmap_lr0.png").unlink()
  result = subprocess.run(
      [sys.executable, "-m", "experiments.grid_summary",
       f"--workdir={tmp_path}"], env=dict(os.environ, PYTHONPATH=str(ROOT)),
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  rebuilt = json.loads((tmp_path / "search_summary.json").read_text())
  assert rebuilt["chosen"] == results["chosen"]
  assert rebuilt["grid"] == results["grid"]
  assert (tmp_path / "lr_grid_heatmap_lr0.png").exists()


def test_grid_summary_refuses_a_workdir_without_a_run_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.grid_summary",
       f"--workdir={tmp_path / 'nowhere'}"],
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert "is not an lr_grid run's workdir: no config.json or metrics.jsonl" in (
      result.stderr)
  assert "Traceback" not in result.stderr


def test_structure_reports_effective_ranks_before_and_after(tmp_path,
                                                            data_dir):
  config = _config(structure, data_dir)
  train.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, config.seeds)
  ranks = results["summary"]["effective_rank"]
  assert len(ranks["w_before"]) == len(config.hidden) + 1
  assert ranks["v_after"] != ranks["v_before"]
  assert "structure_gram.png" in files


@pytest.mark.parametrize("clip_norm, fraction", [
    (1e-9, 1.0),  # every update is longer: every one is shortened
    (1e9, 0.0),   # none is
    (0.0, None),  # no clip: nothing to record
])
def test_runs_record_the_fraction_of_updates_the_clip_shortened(
    tmp_path, data_dir, clip_norm, fraction):
  config = _config(table1, data_dir, method="sal", clip_norm=clip_norm)
  train.train_and_evaluate(config, tmp_path)
  for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
    assert json.loads(line).get("clipped_fraction") == fraction


def test_alignment_records_cosines_and_lemma1_gap(tmp_path, data_dir):
  config = _config(alignment, data_dir)
  train.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, 2 * config.seeds)
  for label in ("reference", "lemma premise"):
    cos = np.asarray(results["summary"][label]["grad_cosine_by_epoch"])
    assert cos.shape == (config.epochs, len(config.hidden) + 1)
    np.testing.assert_allclose(cos[:, -1], 1.0, rtol=1e-4)  # output layer
    # H = V̄V̄ᵀ per level: largest >= smallest >= 0, every epoch.
    h = np.asarray(results["summary"][label]["learned_lr_by_epoch"])
    assert h.shape == (config.epochs, len(config.hidden), 2)
    assert np.all(h[..., 0] >= h[..., 1]) and np.all(h[..., 1] >= 0)
    clipped = results["summary"][label]["clipped_fraction_by_epoch"]
    assert len(clipped) == config.epochs and 0 <= min(clipped) <= max(
        clipped) <= 1
  assert {"alignment_cosine_reference.png",
          "alignment_lemma1_gap_lemma_premise.png",
          "alignment_learned_lr_reference.png"} <= files


def test_modulation_reports_loss_against_tau(tmp_path, data_dir):
  config = _config(modulation, data_dir)
  train.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, config.seeds)
  summary = results["summary"]
  assert len(summary["loss"]) == len(config.taus)
  assert "modulation.png" in files


def test_digits_config_needs_no_data_dir(tmp_path):
  config = digits.get_config(runlocal=True)
  config.epochs = 1
  train.train_and_evaluate(config, tmp_path)
  assert "| SAL |" in (tmp_path / "table.md").read_text()


def _cli(workdir, *overrides, prelude=None):
  """Runs experiments.main on table1's small variant; ``prelude``: Python run
  first, in the same process."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  command = ["-m", "experiments.main"] if prelude is None else [
      "-c", prelude + "\nimport runpy\n"
      "runpy.run_module('experiments.main', run_name='__main__')"]
  return subprocess.run(
      [sys.executable, *command,
       f"--config={ROOT}/experiments/configs/table1.py:runlocal",
       f"--workdir={workdir}", *overrides],
      env=env, capture_output=True, text=True, timeout=300, check=False)


_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                  "3.21GiB.")


def _run_out_of_memory(*args, **kwargs):
  del args, kwargs
  raise jax.errors.JaxRuntimeError(_OUT_OF_MEMORY)


def test_out_of_device_memory_names_the_cell_its_size_and_what_to_change(
    tmp_path, data_dir, monkeypatch):
  monkeypatch.setattr(loop, "sweep_epoch", _run_out_of_memory)
  config = _config(table1, data_dir, method="sal", seeds=3)
  with pytest.raises(train.DeviceMemoryError) as error:
    train.train_and_evaluate(config, tmp_path)
  cell, = plans.PLANS["table1"][0](config, train.load_data(config))
  states = train.initial_states(config, cell,
                                train.make_optimizer(config, cell.circuit))[1]
  state_mb = sum(x.nbytes for x in jax.tree.leaves(states)) / 1e6
  message = str(error.value)
  assert message.startswith(f"{cell.label}: out of device memory "
                            f"({_OUT_OF_MEMORY})")
  assert "Its 3 members train as one program" in message
  assert state_mb > 0.1 and f"take {state_mb:.1f} MB" in message
  for advice in ("--config.seeds", "--config.member_devices",
                 "SAL_JAX_XLA_OPTIONS=xla_gpu_command_buffer_scheduling_mode"
                 "=LHS"):
    assert advice in message
  assert not (tmp_path / "results.json").exists()


def test_other_device_errors_are_not_taken_for_memory(tmp_path, data_dir,
                                                      monkeypatch):
  def fail(*args, **kwargs):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")
  monkeypatch.setattr(loop, "sweep_epoch", fail)
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    train.train_and_evaluate(_config(table1, data_dir, method="sal"),
                             tmp_path)


def test_cli_out_of_device_memory_exits_2_with_one_line(tmp_path, data_dir):
  result = _cli(tmp_path / "run", f"--config.data_dir={data_dir}",
                "--config.method=sal", prelude=(
                    "import jax\nfrom sal_jax import loop\n"
                    "def oom(*a, **k):\n"
                    f"  raise jax.errors.JaxRuntimeError({_OUT_OF_MEMORY!r})\n"
                    "loop.sweep_epoch = oom"))
  assert result.returncode == 2, result.stderr[-2000:]
  error_lines = [l for l in result.stderr.splitlines()
                 if l.startswith("error:")]
  assert len(error_lines) == 1 and "out of device memory" in error_lines[0]
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.method=backprop", "unknown method 'backprop'"),
    ("--config.dataset=imagenet", "unknown dataset 'imagenet'"),
    ("--config.epochs=0", "epochs must be positive"),
    ("--config.unroll=0", "unroll must be positive"),
    ("--config.member_devices=-1", "member_devices must be between 0"),
    ("--config.matmul_precision=fp7", "bad matmul_precision 'fp7'"),
    ("--config.update_dtype=fp8", "unknown update_dtype 'fp8'"),
    ("--config.momentum_dtype=half", "unknown momentum_dtype 'half'"),
    ("--config.epoch=3", "--config.epoch: the config has no field 'epoch'; "
     'did you mean "epochs"'),
    ("--config.epochs=three", "flag --config.epochs=three: invalid literal"),
])
def test_bad_setting_exits_nonzero_with_one_line_and_writes_nothing(
    tmp_path, data_dir, override, message):
  workdir = tmp_path / "run"
  result = _cli(workdir, f"--config.data_dir={data_dir}", override)
  assert result.returncode == 2, result.stderr[-2000:]
  error_lines = [l for l in result.stderr.splitlines()
                 if l.startswith("error:")]
  assert len(error_lines) == 1 and message in error_lines[0]
  assert not workdir.exists()


def test_missing_data_directory_exits_nonzero_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  result = _cli(workdir, f"--config.data_dir={tmp_path / 'nowhere'}",
                "--config.source=local")
  assert result.returncode == 2
  assert "dataset 'mnist' not found" in result.stderr
  assert not workdir.exists()


def test_cli_runs_and_writes_results(tmp_path, data_dir):
  result = _cli(tmp_path, f"--config.data_dir={data_dir}",
                "--config.method=sal", "--config.epochs=1")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "sal epoch 1/1" in result.stderr  # the progress line
  assert (tmp_path / "results.json").exists()


def test_cli_progress_is_not_buried_in_other_libraries_info_lines(
    tmp_path, data_dir):
  result = _cli(tmp_path, f"--config.data_dir={data_dir}",
                "--config.method=sal", "--config.epochs=2",
                "--config.checkpoint_every=1")
  assert result.returncode == 0, result.stderr[-2000:]
  assert checkpoints.latest_epoch(
      checkpoints.cell_directory(tmp_path, "sal")) == 2  # orbax did work
  lines = result.stderr.splitlines()
  assert lines and all("] sal epoch " in l for l in lines), lines[:5]
