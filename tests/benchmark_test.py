"""The benchmark runs (a smoke test: its timings are never asserted)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.timeout(300)
def test_benchmark_quick_mode_prints_a_table_and_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--quick",
       "--methods=backprop,sal", f"--json={out}"],
      env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=280, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| sal |" in result.stdout
  rows = json.loads(out.read_text())["rows"]
  assert [r["method"] for r in rows] == ["backprop", "sal"]
  for row in rows:
    assert row["ops_per_step"] > 0
    for mode in ("host_loop", "loop", "scan", "sweep"):
      assert row[f"{mode}_ms"] > 0


@pytest.mark.timeout(300)
def test_benchmark_lists_the_compiled_step_operations():
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--list_ops",
       "--methods=sal"],
      env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=280, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  header, *ops = result.stdout.strip().splitlines()
  assert header == f"## sal: {len(ops)} operations per step"
  assert any("dot_general" in op for op in ops)
