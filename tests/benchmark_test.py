"""The benchmark runs (a smoke test: its timings are never asserted)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def _benchmark(*flags_, **env):
  return subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", *flags_],
      env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env),
      capture_output=True, text=True, timeout=280, check=False)


@pytest.mark.timeout(300)
def test_benchmark_quick_mode_prints_a_table_and_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  result = _benchmark(
      "--quick", "--methods=backprop,sal", f"--json={out}",
      "--sweep_order=shared", f"--data_dir={tmp_path / 'no_data'}",
      SAL_JAX_XLA_OPTIONS="xla_gpu_command_buffer_scheduling_mode=LHS")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| sal |" in result.stdout
  # A --data_dir without MNIST is timed on random data, and says so.
  assert "random data of MNIST's shape" in result.stdout
  assert ("timing random data of MNIST's shape: dataset 'mnist' not found"
          in result.stderr)
  written = json.loads(out.read_text())
  assert (written["batched"], written["precision"], written["xla_options"],
          written["sweep_order"]) == ("auto", "default", "library", "shared")
  # Options changed through the environment are on record.
  assert written["SAL_JAX_XLA_OPTIONS"] == {
      "xla_gpu_command_buffer_scheduling_mode": "LHS"}
  rows = written["rows"]
  assert [r["method"] for r in rows] == ["backprop", "sal"]
  for row in rows:
    assert row["ops_per_step"] > 0
    assert row["gflop_per_step"] > 0 and row["mb_per_step"] > 0
    for mode in ("host_loop", "loop", "scan", "sweep"):
      assert row[f"{mode}_ms"] > 0
    # The first call of each program compiled it: that took some time.
    assert row["scan_compile_s"] > 0 and row["sweep_compile_s"] > 0


def _listed_ops(*flags_):
  result = _benchmark("--list_ops", "--methods=sal", *flags_)
  assert result.returncode == 0, result.stderr[-2000:]
  header, *ops = result.stdout.strip().splitlines()
  assert header == f"## sal: {len(ops)} operations per step"
  return ops


@pytest.mark.timeout(300)
def test_benchmark_lists_the_compiled_step_operations():
  dots = lambda ops: sum(op.startswith("dot") for op in ops)
  per_matrix = _listed_ops("--batched=off")
  assert dots(per_matrix) > dots(_listed_ops("--batched=on")) > 0


@pytest.mark.parametrize("flag, message", [
    ("--precision=fp7", "bad --precision 'fp7'"),
    ("--sweep=0", "--sweep=0: 0 is not a positive integer"),
    ("--json=/nonexistent/bench.json", "its directory does not exist"),
    ("--xla_option=bogus", "--xla_option 'bogus': expected NAME=VALUE"),
    ("--xla_option=xla_no_such_option=1",
     "No such compile option: 'xla_no_such_option'"),
])
def test_benchmark_refuses_a_bad_flag_before_running(flag, message):
  result = _benchmark("--list_ops", flag)
  assert result.returncode != 0
  assert message in result.stderr


@pytest.mark.timeout(600)
def test_gpu_speed_check_script_runs_every_comparison(tmp_path):
  # The script is for a lent GPU's few minutes: a flag it passes that the
  # benchmark no longer knows must fail here, not there. (The flags given
  # here come last, so they win: every flag of the script is still parsed.)
  result = subprocess.run(
      ["bash", str(ROOT / "experiments" / "gpu_speed_check.sh"),
       str(tmp_path / "out"), str(tmp_path / "no_data"), "--quick",
       "--methods=sal", "--sweep=2"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT),
                         JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=580, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  written = {p.stem: json.loads(p.read_text())
             for p in (tmp_path / "out").glob("*.json")}
  assert set(written) == {"schedule_identical", "default", "sweep64",
                          "sweep64_shared", "bf16", "bf16_shared",
                          "bf16_storage", "ratios", "ratios_bf16",
                          "methods_quick"}
  assert written["schedule_identical"]["xla_option"] == [
      "xla_gpu_command_buffer_scheduling_mode=LHS"]
  assert written["default"]["xla_option"] == []
  assert written["sweep64_shared"]["sweep_order"] == "shared"
  assert written["bf16_shared"]["precision"] == "BF16_BF16_F32"
  assert written["default"]["precision"] == "default"
  assert written["bf16_storage"]["update_dtype"] == "bfloat16"
  assert written["bf16_storage"]["momentum_dtype"] == "bfloat16"
  assert written["default"]["momentum_dtype"] == "float32"
  assert written["ratios_bf16"]["update_dtype"] == "bfloat16"
  assert all(row["identical"] for row in written["schedule_identical"]["rows"])


def test_gpu_speed_check_script_makes_only_the_calls_named_in_only(tmp_path):
  result = subprocess.run(
      ["bash", str(ROOT / "experiments" / "gpu_speed_check.sh"),
       str(tmp_path), str(tmp_path / "no_data"), "--quick", "--methods=sal",
       "--sweep=2"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
                         ONLY="bf16 bf16_storage"),
      capture_output=True, text=True, timeout=380, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert {p.stem for p in tmp_path.glob("*.json")} == {"bf16", "bf16_storage"}


def test_gpu_speed_check_script_says_which_comparisons_failed(tmp_path):
  result = subprocess.run(
      ["bash", str(ROOT / "experiments" / "gpu_speed_check.sh"),
       str(tmp_path), str(tmp_path / "no_data"), "--methods=none"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT),
                         JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=380, check=False)
  assert result.returncode == 1  # an unknown method fails every call
  assert "== done" in result.stdout  # but not the script
  assert "unknown --methods ['none']" in (tmp_path / "default.log").read_text()


def test_xla_option_values_are_typed_as_xla_expects():
  from sal_jax import xla_options  # pylint: disable=g-import-not-at-top
  assert xla_options.parse_option("xla_a=True") == ("xla_a", True)
  assert xla_options.parse_option("xla_a=false") == ("xla_a", False)
  assert xla_options.parse_option("xla_a=0") == ("xla_a", 0)
  assert xla_options.parse_option("xla_a=0.5") == ("xla_a", 0.5)
  assert xla_options.parse_option("xla_a=b=c") == ("xla_a", "b=c")


def test_profile_busy_time_counts_overlapping_kernels_once():
  from experiments import gpu_profile  # pylint: disable=g-import-not-at-top
  ms = 1_000_000  # ns
  kernels = [("a", 0, 10 * ms), ("b", 5 * ms, 10 * ms), ("a", 30 * ms, 5 * ms),
             ("c", 31 * ms, 2 * ms)]
  assert gpu_profile.busy_ns(kernels) == 20 * ms  # [0, 15) and [30, 35)
  table = gpu_profile.summary("sal, one model", 0.040, kernels,
                              ["/device:GPU:0/Stream #1 (4)"], steps=2, top=2)
  assert table.startswith(
      "## sal, one model: 40.0 ms wall, 35.0 ms from first kernel to last, "
      "20.0 ms busy, 15.0 ms gaps; 2.0 kernels/step, 10000.0 us busy/step")
  assert "| a | 1.00 | 7500.00 | 75.0% |" in table  # 2 launches, 15 ms
  assert "| b | 0.50 | 5000.00 | 50.0% |" in table
  assert "| c |" not in table  # only the top 2


@pytest.mark.timeout(300)
def test_profile_runs_and_says_when_the_backend_records_no_kernels():
  result = subprocess.run(
      [sys.executable, "-m", "experiments.gpu_profile", "--quick",
       "--methods=sal"],
      env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=280, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "## sal, one model:" in result.stdout
  assert "## sal, sweep of 2:" in result.stdout
  assert "no device kernels traced" in result.stdout


def test_option_check_measures_how_far_two_weight_trees_differ():
  from experiments import option_check  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  a = {"w": np.array([1.0, -3.0, np.nan]), "v": np.array([[0.5]])}
  same = option_check.difference(a, {"w": a["w"].copy(), "v": a["v"]})
  assert same == {"max_abs_difference": 0.0, "max_abs_weight": 3.0,
                  "identical": True}  # NaNs in the same places count equal
  moved = option_check.difference(a, {"w": a["w"], "v": np.array([[0.25]])})
  assert moved["max_abs_difference"] == 0.25 and not moved["identical"]


@pytest.mark.timeout(300)
def test_option_check_finds_cpu_programs_unchanged_by_gpu_options(tmp_path):
  out = tmp_path / "check.json"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.option_check", "--quick",
       "--methods=sal", "--xla_options=xla", f"--json={out}"],
      env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=280, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  # The library's options are all XLA:GPU's: on CPU, dropping them changes
  # nothing, for one model and for a sweep.
  assert "| sal | 1 | 0 | " in result.stdout
  written = json.loads(out.read_text())
  assert written["options"] == {}
  assert [(r["models"], r["identical"]) for r in written["rows"]] == [
      (1, True), (2, True)]
