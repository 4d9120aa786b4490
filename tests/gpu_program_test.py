"""Kernels and traffic read from compiled programs; the GPU compile tool."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import hlo_kernels

ROOT = pathlib.Path(__file__).parents[1]
HAS_CUDA_PLUGIN = (importlib.util.find_spec("jax_plugins") is not None and
                   importlib.util.find_spec("jax_plugins.xla_cuda12") is not None)

# A hand-written entry computation in XLA's text format: two parameters, a
# bitcast (free), a fusion returning a tuple, and a custom call reading a
# tuple element.
_HLO = """HloModule m

%fused (p0: f32[8,4], p1: f32[4]) -> (f32[8,4], s32[8]) {
  ROOT %t = (f32[8,4]{1,0}, s32[8]{0}) tuple(%p0, %p1)
}

ENTRY %main (x: f32[8,4], b: f32[4]) -> f32[4,8] {
  %x = f32[8,4]{1,0} parameter(0), metadata={op_name="x"}
  %b = f32[4]{0} parameter(1)
  %xb = f32[4,8]{0,1} bitcast(%x)
  %f = (f32[8,4]{1,0}, s32[8]{0}) fusion(%xb, %b), kind=kLoop, calls=%fused, metadata={op_name="jit(g)/add"}
  %g = f32[8,4]{1,0} get-tuple-element(%f), index=0
  ROOT %c = f32[4,8]{1,0} custom-call(%g), custom_call_target="x"
}
"""


def test_shape_bytes_counts_every_element_of_a_tuple():
  assert hlo_kernels.shape_bytes("f32[8,4]{1,0}") == 128
  assert hlo_kernels.shape_bytes("(f32[2]{0}, s32[3]{0}, pred[])") == 21
  assert hlo_kernels.shape_bytes("bf16[10]{0}") == 20


def test_kernels_skip_bookkeeping_and_charge_operands_plus_result():
  fusion, call = hlo_kernels.kernels(_HLO)
  assert (fusion.opcode, fusion.source) == ("fusion", "jit(g)/add")
  assert (fusion.bytes_in, fusion.bytes_out) == (128 + 16, 128 + 32)
  assert (call.opcode, call.bytes_in, call.bytes_out) == ("custom-call", 128,
                                                           128)


def test_kernels_know_which_kernels_they_wait_for_through_bookkeeping():
  fusion, call = hlo_kernels.kernels(_HLO)
  assert fusion.inputs == ()  # parameters and bitcasts are not kernels
  assert call.inputs == (fusion.name,)  # read through get-tuple-element


_DIAMOND = """HloModule m

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %a = f32[4]{0} negate(%x)
  %b = f32[4]{0} exponential(%x)
  %c = f32[4]{0} add(%a, %b)
  %t = (f32[4]{0}, f32[4]{0}) tuple(%c, %a)
  %d = f32[4]{0} get-tuple-element(%t), index=0
  %e = f32[4]{0} sine(%d)
  ROOT %f = f32[4]{0} cosine(%a)
}
"""


def test_longest_chain_is_what_concurrent_kernels_must_still_wait_for():
  kernels = hlo_kernels.kernels(_DIAMOND)
  assert [k.name for k in kernels] == ["a", "b", "c", "e", "f"]
  # a and b can run together, so can f with c; e waits for c, c for a.
  assert [k.name for k in hlo_kernels.longest_chain(kernels)] == ["a", "c",
                                                                  "e"]
  assert hlo_kernels.longest_chain([]) == []


def test_kernels_of_a_real_compiled_program():
  x = jax.ShapeDtypeStruct((64, 32), jnp.float32)
  compiled = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0)).lower(x).compile()
  kernels = hlo_kernels.kernels(compiled.as_text())
  assert kernels
  # Every kernel reads or writes something; the program reads x at least.
  assert all(k.bytes > 0 for k in kernels)
  assert sum(k.bytes_in for k in kernels) >= 64 * 32 * 4


def test_kernels_refuse_text_that_is_not_hlo():
  with pytest.raises(ValueError, match="no ENTRY computation"):
    hlo_kernels.kernels("hello")


def _gpu_program(*flags_):
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  return subprocess.run(
      [sys.executable, "-m", "experiments.gpu_program", *flags_],
      env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
      timeout=280, check=False)


@pytest.mark.parametrize("flag, message", [
    ("--models=0", "--models must be positive integers"),
    ("--models=a", "--models must be positive integers"),
    ("--methods=nope", "unknown --methods ['nope']"),
    ("--target=/nonexistent.txtpb", "--target /nonexistent.txtpb: no such file"),
    ("--json=/nonexistent/out.json", "its directory does not exist"),
])
def test_gpu_program_refuses_a_bad_flag_before_compiling(flag, message):
  result = _gpu_program(flag)
  assert result.returncode != 0
  assert message in result.stderr


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="the CUDA plugin is installed")
def test_gpu_program_without_the_cuda_plugin_says_what_to_install():
  result = _gpu_program("--models=1", "--methods=sal")
  assert result.returncode != 0
  assert f'pip install "jax-cuda12-plugin=={jax.__version__}"' in result.stderr


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax-cuda12-plugin")
@pytest.mark.timeout(300)
def test_gpu_program_compiles_one_sal_step_for_an_h100_in_few_kernels(
    tmp_path):
  out = tmp_path / "program.json"
  result = _gpu_program("--models=1,4", "--methods=sal", f"--json={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  one, four = json.loads(out.read_text())["rows"]
  assert (one["batched_products"], four["batched_products"]) == (True, False)
  # jax 0.10.2 compiles one step, its batch's gather included, to 36 kernels
  # (RESULTS.md, "Speed").
  assert 0 < one["kernels_per_step"] <= 40
  # jax 0.10.2: 18 kernels wait for each other, one more than in backprop's.
  assert 0 < one["longest_chain"] <= 20
  assert four["mb_per_step"] > one["mb_per_step"] > 0
  # XLA's memory assignment: each model's weights and momentum (560,800
  # float32 each: 4.49 MB), and the examples its batch is gathered from (uint8
  # images, int32 labels and indices: 0.20 MB); scratch on top.
  model_mb = 2 * 560_800 * 4 / 1e6
  batch_mb = (256 * 784 + 2 * 256 * 4) / 1e6
  assert abs(one["state_mb"] - (model_mb + batch_mb)) < 0.01
  assert abs(four["state_mb"] - 4 * (model_mb + batch_mb)) < 0.01
  assert one["scratch_mb"] > 0
  # A grid on one seed: the members share one batch.
  result = _gpu_program("--models=4", "--methods=sal", "--sweep_order=shared",
                        f"--json={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  [shared] = json.loads(out.read_text())["rows"]
  assert abs(shared["state_mb"] - (4 * model_mb + batch_mb)) < 0.01
  assert shared["mb_per_step"] < four["mb_per_step"]
  # Momentum stored in bfloat16 (half its 2.24 MB), G too: less traffic.
  result = _gpu_program("--models=4", "--methods=sal", "--update_dtype=bfloat16",
                        "--momentum_dtype=bfloat16", f"--json={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  [bf16] = json.loads(out.read_text())["rows"]
  assert abs(bf16["state_mb"] - 4 * (0.75 * model_mb + batch_mb)) < 0.01
  assert bf16["mb_per_step"] < 0.85 * four["mb_per_step"]
