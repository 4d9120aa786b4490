"""The benchmark runs (a smoke test: its timings are never asserted)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def _benchmark(*flags_):
  return subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", *flags_],
      env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=280, check=False)


@pytest.mark.timeout(300)
def test_benchmark_quick_mode_prints_a_table_and_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  result = _benchmark("--quick", "--methods=backprop,sal", f"--json={out}",
                      "--sweep_order=shared")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| sal |" in result.stdout
  written = json.loads(out.read_text())
  assert (written["batched"], written["precision"], written["xla_options"],
          written["sweep_order"]) == ("auto", "default", "library", "shared")
  rows = written["rows"]
  assert [r["method"] for r in rows] == ["backprop", "sal"]
  for row in rows:
    assert row["ops_per_step"] > 0
    assert row["gflop_per_step"] > 0 and row["mb_per_step"] > 0
    for mode in ("host_loop", "loop", "scan", "sweep"):
      assert row[f"{mode}_ms"] > 0


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


@pytest.mark.timeout(400)
def test_gpu_speed_check_script_runs_every_comparison(tmp_path):
  # The script is for a lent GPU's few minutes: a flag it passes that the
  # benchmark no longer knows must fail here, not there. (This tree stands in
  # for the baseline tree.)
  result = subprocess.run(
      ["bash", str(ROOT / "experiments" / "gpu_speed_check.sh"),
       str(tmp_path / "out"), str(tmp_path / "no_data"), "--quick",
       "--methods=sal"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), BASELINE=str(ROOT),
                         JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=380, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  written = {p.stem: json.loads(p.read_text())
             for p in (tmp_path / "out").glob("*.json")}
  assert set(written) == {"default", "before", "sweep64", "sweep64_before",
                          "single_unroll4", "single_per_matrix",
                          "methods_quick", "single_gemm_fusion_v2",
                          "sweep64_gemm_fusion_v2"}
  assert written["single_unroll4"]["unroll"] == 4
  assert written["single_per_matrix"]["batched"] == "off"
  for v2 in ("single_gemm_fusion_v2", "sweep64_gemm_fusion_v2"):
    assert written[v2]["xla_option"] == [
        "xla_gpu_experimental_gemm_fusion_v2=true"]


def test_gpu_speed_check_script_skips_the_baseline_without_one(tmp_path):
  # An unknown method makes every benchmark call fail at once: only the
  # script's own handling of a missing BASELINE is under test.
  result = subprocess.run(
      ["bash", str(ROOT / "experiments" / "gpu_speed_check.sh"),
       str(tmp_path), str(tmp_path / "no_data"), "--methods=none"],
      cwd=ROOT, env={k: v for k, v in dict(
          os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu").items()
                     if k != "BASELINE"},
      capture_output=True, text=True, timeout=380, check=False)
  assert result.returncode == 1
  assert "before: skipped (no BASELINE)" in result.stdout, result.stdout
  assert "sweep64_before: skipped (no BASELINE)" in result.stdout


def test_xla_option_values_are_typed_as_xla_expects():
  from experiments import speed_flags  # pylint: disable=g-import-not-at-top
  assert speed_flags.parse_option("xla_a=True") == ("xla_a", True)
  assert speed_flags.parse_option("xla_a=false") == ("xla_a", False)
  assert speed_flags.parse_option("xla_a=0") == ("xla_a", 0)
  assert speed_flags.parse_option("xla_a=0.5") == ("xla_a", 0.5)
  assert speed_flags.parse_option("xla_a=b=c") == ("xla_a", "b=c")


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
