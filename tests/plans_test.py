"""Every experiment runs end to end in its smoke variant on data written here."""

import json
import math

import numpy as np
import pytest

from experiments import run
from experiments.configs import (ablation, alignment, digits,
                                 feedback_nonlinearity, lr_grid, modulation,
                                 structure, table1, width_sweep)

from tests.conftest import experiment_config


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
  assert len(lines) == n_cells_members * config.run.epochs
  for line in lines:
    assert {"cell", "seed", "epoch", "train_loss", "train_accuracy",
            "test_accuracy", "examples_per_second"} <= set(line)
    assert _finite_numbers(line)
  results = json.loads((workdir / "results.json").read_text())
  assert results["experiment"] == config.experiment
  assert not results["diverged"]
  return results, files


def test_table1_writes_a_row_per_method_and_a_figure(tmp_path, mnist_dir):
  config = experiment_config(table1, mnist_dir)
  run.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, 5 * config.run.seeds)
  methods = results["summary"]["methods"]
  assert list(methods) == ["sgd", "fa", "wm", "kp", "sal"]
  for s in methods.values():
    assert len(s["final_test_accuracy"]) == config.run.seeds
    assert 0 <= s["final"]["mean"] <= 1 and s["final"]["std"] >= 0
  table = (tmp_path / "table.md").read_text()
  assert "| SAL |" in table and "98.85" in table  # the paper's MNIST number
  assert "A smoke run (:runlocal)" in table
  assert {"table.md", "test_accuracy.png"} <= files


def test_a_one_seed_table_shows_no_spread(tmp_path, mnist_dir):
  config = experiment_config(table1, mnist_dir, model__method="sal",
                             run__seeds=1, run__epochs=1)
  run.train_and_evaluate(config, tmp_path)
  table = (tmp_path / "table.md").read_text()
  assert "±" not in table and "one seed" in table


def test_width_sweep_records_parameter_counts(tmp_path, mnist_dir):
  config = experiment_config(width_sweep, mnist_dir)
  run.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config,
                                 len(config.param_ratios) * config.run.seeds)
  ratios = results["summary"]["ratios"]
  assert ratios["4x"]["width_ratio"] == 2.0
  assert (ratios["4x"]["parameters"]["downstream"]
          > ratios["1x"]["parameters"]["downstream"])
  assert "width_sweep.png" in files


def test_feedback_nonlinearity_runs_all_four(tmp_path, mnist_dir):
  config = experiment_config(feedback_nonlinearity, mnist_dir)
  run.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, 4 * config.run.seeds)
  assert set(results["summary"]["nonlinearities"]) == {
      "identity", "relu", "tanh", "relu_jacobian"}
  assert "feedback_nonlinearity.png" in files


def test_ablation_runs_eight_subsets_and_the_linear_model(tmp_path, mnist_dir):
  config = experiment_config(ablation, mnist_dir)
  run.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, 9 * config.run.seeds)
  assert len(results["summary"]["subsets"]) == 9
  assert "linear (SGD)" in results["summary"]["subsets"]
  assert "ablation.png" in files


def test_lr_grid_chooses_on_validation_and_scores_fresh_seeds(
    tmp_path, mnist_dir, capsys):
  from experiments import grid_summary  # pylint: disable=g-import-not-at-top
  config = experiment_config(lr_grid, mnist_dir)
  grid = config.grid
  run.train_and_evaluate(config, tmp_path)
  points = len(grid.w) * len(grid.w_bar) * len(grid.v) * len(grid.v_bar)
  search = (points + len(grid.sgd_learning_rates)) * config.run.seeds
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == (search + 2 * grid.final_seeds) * config.run.epochs
  results = json.loads((tmp_path / "results.json").read_text())["summary"]
  assert len(results["grid"]) == points
  assert "validation_accuracy" in json.loads(lines[0])
  assert results["chosen"]["sal"]["m_w"] in grid.w
  assert all(s >= config.run.seed + 1000
             for s in results["test"]["sal"]["seeds"])
  assert len(results["test"]["sgd"]["final_test_accuracy"]) == (
      grid.final_seeds)
  assert (tmp_path / "lr_grid_heatmap_lr0.png").exists()
  # The search summary can be rebuilt from the log alone.
  (tmp_path / "lr_grid_heatmap_lr0.png").unlink()
  grid_summary.report(tmp_path)
  assert "chosen:" in capsys.readouterr().out
  rebuilt = json.loads((tmp_path / "search_summary.json").read_text())
  assert rebuilt["chosen"] == results["chosen"]
  assert rebuilt["grid"] == results["grid"]
  assert (tmp_path / "lr_grid_heatmap_lr0.png").exists()


def test_grid_summary_refuses_a_workdir_without_a_run_naming_what_is_missing(
    tmp_path):
  from absl import app  # pylint: disable=g-import-not-at-top
  from experiments import grid_summary  # pylint: disable=g-import-not-at-top
  with pytest.raises(app.UsageError, match="is not an lr_grid run's "
                     "workdir: no config.json or metrics.jsonl"):
    grid_summary.report(tmp_path / "nowhere")


def test_structure_reports_effective_ranks_before_and_after(tmp_path,
                                                            mnist_dir):
  config = experiment_config(structure, mnist_dir)
  run.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, config.run.seeds)
  ranks = results["summary"]["effective_rank"]
  assert len(ranks["w_before"]) == len(config.model.hidden) + 1
  assert ranks["v_after"] != ranks["v_before"]
  assert "structure_gram.png" in files


def test_runs_record_the_fraction_of_updates_the_clip_shortened(
    tmp_path, mnist_dir):
  for clip_norm, fraction in (
      (1e-9, 1.0),  # every update is longer: every one is shortened
      (1e9, 0.0),   # none is
      (None, None),  # no clip: nothing to record
  ):
    workdir = tmp_path / str(clip_norm)
    config = experiment_config(table1, mnist_dir, model__method="sal",
                               optimizer__clip_norm=clip_norm)
    run.train_and_evaluate(config, workdir)
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
      assert json.loads(line).get("clipped_fraction") == fraction


def test_alignment_records_cosines_and_lemma1_gap(tmp_path, mnist_dir):
  config = experiment_config(alignment, mnist_dir)
  run.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, 2 * config.run.seeds)
  epochs, layers = config.run.epochs, len(config.model.hidden) + 1
  for label in ("reference", "lemma premise"):
    cos = np.asarray(results["summary"][label]["grad_cosine_by_epoch"])
    assert cos.shape == (epochs, layers)
    np.testing.assert_allclose(cos[:, -1], 1.0, rtol=1e-4)  # output layer
    # H = V̄V̄ᵀ per level: largest >= smallest >= 0, every epoch.
    h = np.asarray(results["summary"][label]["learned_lr_by_epoch"])
    assert h.shape == (epochs, layers - 1, 2)
    assert np.all(h[..., 0] >= h[..., 1]) and np.all(h[..., 1] >= 0)
    clipped = results["summary"][label]["clipped_fraction_by_epoch"]
    assert len(clipped) == epochs and 0 <= min(clipped) <= max(clipped) <= 1
  assert {"alignment_cosine_reference.png",
          "alignment_lemma1_gap_lemma_premise.png",
          "alignment_learned_lr_reference.png"} <= files


def test_modulation_reports_loss_against_tau(tmp_path, mnist_dir):
  config = experiment_config(modulation, mnist_dir)
  run.train_and_evaluate(config, tmp_path)
  results, files = _check_common(tmp_path, config, config.run.seeds)
  assert len(results["summary"]["loss"]) == len(config.taus)
  assert "modulation.png" in files


def test_digits_config_needs_no_data_dir(tmp_path):
  config = digits.get_config(runlocal=True)
  config.run.epochs = 1
  run.train_and_evaluate(config, tmp_path)
  assert "| SAL |" in (tmp_path / "table.md").read_text()
