"""The speed benchmark runs and prints its table (a smoke test, no timings)."""

import importlib.util
import json
import pathlib
import subprocess

from absl import flags
import pytest

ROOT = pathlib.Path(__file__).parents[1]


def _benchmark():
  spec = importlib.util.spec_from_file_location(
      "benchmark", ROOT / "benchmarks" / "benchmark.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


benchmark = _benchmark()


def _run(*argv):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["benchmark", *argv])
  try:
    benchmark.main([])
  finally:
    flags.FLAGS.unparse_flags()


def test_quick_mode_prints_a_table_of_every_row_and_writes_json(
    tmp_path, capsys):
  out = tmp_path / "rows.json"
  _run("--quick", "--sweep=2", "--methods=backprop,sal_sqrt5",
       "--update_dtype=bfloat16", f"--json={out}")
  printed = capsys.readouterr().out
  assert "| backprop |" in printed and "| sal_sqrt5 |" in printed
  assert "update_dtype='bfloat16'" in printed and "data random" in printed
  rows = json.loads(out.read_text())["rows"]
  assert [r["name"] for r in rows] == ["backprop", "sal_sqrt5"]
  assert all(r[k] > 0 for r in rows
             for k in ("loop_ms", "scan_ms", "sweep_ms_per_model"))


@pytest.mark.parametrize("flag, message", [
    ("--methods=sal,bp", r"unknown rows \['bp'\]"),
    ("--update_dtype=fp8", "unknown update_dtype 'fp8'"),
    ("--xla_options=split_k", "expected NAME=VALUE"),
])
def test_a_bad_flag_is_refused_before_anything_runs(flag, message):
  from absl import app  # pylint: disable=g-import-not-at-top
  with pytest.raises(app.UsageError, match=message):
    _run(flag)


def test_gpu_check_script_makes_only_the_calls_named(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "python3").write_text("#!/bin/sh\necho \"python3 $*\"\n")
  (fake / "python3").chmod(0o755)
  result = subprocess.run(
      ["bash", str(ROOT / "benchmarks" / "gpu_speed_check.sh"),
       str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
      env={"PATH": f"{fake}:/usr/bin:/bin", "ONLY": "default sweep64"},
      check=False, timeout=60)
  assert result.returncode == 0, result.stderr
  assert "== default" in result.stdout and "== sweep64:" in result.stdout
  assert "== bf16" not in result.stdout
  made = (tmp_path / "out" / "sweep64.md").read_text()
  assert "benchmarks/benchmark.py" in made and "--sweep=64" in made
