r"""What XLA:GPU leaves unfused in SAL's sweep of 64, and what fusing it would save.

    PYTHONPATH=. python results/fusion_estimate/estimate.py

(JAX's CUDA compiler plugin installed, as for ``experiments.gpu_program``; no
GPU needed.) Compiles SAL's vmapped step for an H100 as ``gpu_program`` does,
each member its own batch and all sharing one, and splits each step's memory
traffic by what its kernels do. Then compiles three small programs: whether
XLA fuses an elementwise operand of a matrix product into the product when it
has one input (a ReLU) and when it has two (the D_u mask), and whether a
Pallas Triton kernel that returns an outer product with its squared norm
compiles for the GPU here.
"""

import collections
import pathlib

from absl import flags
import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from experiments import gpu_program
from experiments import hlo_kernels
from experiments import reference_mlp
from experiments import speed_flags
from sal_jax import xla_options

def category(k: hlo_kernels.Kernel) -> str:
  """What a kernel of SAL's vmapped step does, from its result and source."""
  if k.shape.startswith("(") and "f32[64,200," in k.shape:
    return "update (weights and momentum)"
  if k.source.endswith("reduce_sum") and k.bytes_in > 10e6:
    return "clip's norm (reads every update)"
  if k.source.endswith(("dot_general", "transpose")) and k.opcode == "fusion":
    weight_shaped = "256" not in k.shape.split("{")[0]
    return "rule products" if weight_shaped else "other products"
  if k.source.endswith("/mul") and k.bytes > 10e6:
    return "D_u masks on the V-bar relays"
  if k.source.endswith("convert_element_type"):
    return "batch gather"
  return "small kernels"


def traffic(device, order: str):
  flags.FLAGS.sweep_order = order
  circuit = gpu_program.gpu_circuit(reference_mlp.CIRCUITS["sal"], 64)
  compiled = gpu_program.compile_step(device, "sal", circuit, 64,
                                      speed_flags.compiler_options())
  return hlo_kernels.kernels(compiled.as_text())


def fused_kernels(device, fn, *shapes) -> int:
  sharding = jax.sharding.SingleDeviceSharding(device)
  args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding)
          for s in shapes]
  compiled = jax.jit(fn, compiler_options=xla_options.OPTIONS).trace(
      *args).lower(lowering_platforms=("cuda",)).compile()
  return len(hlo_kernels.kernels(compiled.as_text()))


def pallas_outer_and_norm(post_BxM, pre_BxN, block=64):
  """post^T pre and its squared norm per (block x block) tile, in Triton."""
  m, n = post_BxM.shape[1], pre_BxN.shape[1]

  def kernel(post_ref, pre_ref, g_ref, sq_ref):
    g = jax.lax.dot_general(post_ref[...], pre_ref[...],
                            (((0,), (0,)), ((), ())))
    rows = pl.program_id(0) * block + jax.lax.broadcasted_iota(
        jnp.int32, g.shape, 0)
    cols = pl.program_id(1) * block + jax.lax.broadcasted_iota(
        jnp.int32, g.shape, 1)
    inside = (rows < m) & (cols < n)  # edge tiles read past the operands
    g_ref[...] = g
    sq_ref[...] = jnp.sum(jnp.where(inside, g * g, 0.0)).reshape(1, 1)

  grid = (pl.cdiv(m, block), pl.cdiv(n, block))
  return pl.pallas_call(
      kernel, grid=grid,
      in_specs=[pl.BlockSpec((post_BxM.shape[0], block), lambda i, j: (0, i)),
                pl.BlockSpec((pre_BxN.shape[0], block), lambda i, j: (0, j))],
      out_specs=[pl.BlockSpec((block, block), lambda i, j: (i, j)),
                 pl.BlockSpec((1, 1), lambda i, j: (i, j))],
      out_shape=[jax.ShapeDtypeStruct((m, n), jnp.float32),
                 jax.ShapeDtypeStruct(grid, jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
  )(post_BxM, pre_BxN)


def main():
  flags.FLAGS(["estimate"])
  jax.config.update("jax_platforms", "cpu")  # the GPU is only compiled for
  device = gpu_program.target_device(pathlib.Path(flags.FLAGS.target))
  print(f"# {device.device_kind}, jax {jax.__version__}")
  for order in ("own", "shared"):
    kernels = traffic(device, order)
    total = sum(k.bytes for k in kernels)
    labeled = [(category(k), k) for k in kernels]
    by = collections.defaultdict(float)
    for name, k in labeled:
      by[name] += k.bytes
    count = collections.Counter(name for name, _ in labeled)
    norm = by["clip's norm (reads every update)"]
    # A mask read as the rule product's operand: its kernel goes, and the
    # product reads the mask's two inputs instead of its one output.
    masks = sum(2 * k.bytes_out for name, k in labeled
                if name == "D_u masks on the V-bar relays")
    print(f"\n## SAL, sweep of 64, {order} data order: {len(kernels)} kernels,"
          f" {total / 1e6:.1f} MB a step\n")
    print("| kernels | how many | MB a step | share |\n|---|---|---|---|")
    for name, mb in sorted(by.items(), key=lambda kv: -kv[1]):
      print(f"| {name} | {count[name]} | {mb / 1e6:.1f} | {mb / total:.1%} |")
    print(f"\nnorm in the rule products' epilogue saves {norm / 1e6:.1f} MB; "
          f"masks read as the rule products' operands save {masks / 1e6:.1f};"
          f" together {(norm + masks) / 1e6:.1f} MB, "
          f"{(norm + masks) / total:.1%} of the step")
  relu = fused_kernels(device, lambda r, a: jax.nn.relu(r).T @ a,
                       (256, 200), (256, 200))
  mask = fused_kernels(device, lambda r, h, a: (r * (h > 0)).T @ a,
                       (256, 200), (256, 200), (256, 200))
  print(f"\nkernels for relu(r).T @ a: {relu}; for (r * (h > 0)).T @ a: {mask}")
  try:
    n = fused_kernels(device, pallas_outer_and_norm, (256, 200), (256, 200))
    print(f"Pallas Triton outer product with its squared norm: compiles, "
          f"{n} kernel(s)")
  except Exception as e:  # report any lowering failure, go on
    print(f"Pallas Triton kernel: {type(e).__name__}: "
          f"{str(e).splitlines()[0][:200]}")


if __name__ == "__main__":
  main()
