r"""SAL's rule products as a Pallas kernel that also sums the clip's norm.

    PYTHONPATH=. python results/h200_run7/rule_kernel.py --check [--data_dir=DIR]
    PYTHONPATH=. python results/h200_run7/rule_kernel.py --time [--data_dir=DIR]
        [--tiles=B/K/W/S,...] [--members=N] [--unroll=U] [--precision=P]
        [--xla_option=NAME=VALUE]
    PYTHONPATH=. python results/h200_run7/rule_kernel.py --compile [--list]

The experiment `results/fusion_estimate/` proposed: XLA:GPU writes every rule
product's update G, then reads all of them again for the clip's global norm,
and writes each masked V̄ relay (D_u^{l+1} V̄^l h̄^{l+1}) before the product
reads it back. Here each of SAL's 13 rule products is one Pallas (Triton)
kernel that reads the mask's source h^{l+1} as an operand, writes G = -ΔM and
the sum of squares of each of its tiles; the clip then takes the global norm
from those partial sums (an optax extra argument) and never reads G.
Everything else is the library's: the streams (``train.forward_and_feedback``),
the relays, the factors (``rules``), and a chain built as
``optim.reference`` builds it, with the same state.

``--check`` compares one step's G and clip norm with the library's
(``rules.plasticity``, ``optim.clip_by_global_norm``) at every ``--tiles``,
for one model and a vmapped sweep of 4; on a CPU the kernel runs in Pallas's
interpret mode. ``--time`` times one scanned MNIST epoch (medians after a
warm-up) of the library's step and of this one at every ``--tiles``, for one
model and sweeps of ``--members`` (each member its own data order, and one
order for all), and gives the test accuracy the timed epochs reached.
``--compile`` counts each step's kernels and bytes in XLA's compile for an
H100, without a GPU (JAX's CUDA plugin, as ``experiments.gpu_program``).
GPU run 7 (README.md here) ran it. An experiment, not part of the library.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import statistics
import time
from typing import NamedTuple

from absl import app
from absl import flags
import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np
import optax

from experiments import gpu_program
from experiments import hlo_kernels
from experiments import reference_mlp
from experiments import speed_flags
import sal_jax as sj
from sal_jax import circuit as circuit_lib
from sal_jax import datasets
from sal_jax import losses
from sal_jax import loop
from sal_jax import optim
from sal_jax import rules
from sal_jax import train
from sal_jax import xla_options

_CHECK = flags.DEFINE_bool("check", False, "Compare with the library's step.")
_TIME = flags.DEFINE_bool("time", False, "Time scanned epochs.")
_COMPILE = flags.DEFINE_bool(
    "compile", False, "Compile the steps for an H100 without a GPU (JAX's "
    "CUDA plugin, as experiments.gpu_program) and count kernels and bytes.")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/datasets",
                                "Where MNIST is (random data if absent).")
_LIST = flags.DEFINE_bool("list", False, "With --compile: every kernel.")
_TILES = flags.DEFINE_list(
    "tiles", ["64/256/4/1", "64/64/4/3", "128/64/8/3", "64/32/4/4",
              "32/64/4/3"],
    "Kernel tilings to time, each block/chunk/warps/stages (``Tiles``).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed epochs per program.")
_EXAMPLES = flags.DEFINE_integer("examples", None,
                                 "Train on the first N examples only.")
_MEMBERS = flags.DEFINE_integer(
    "members", 64, "Models in the sweeps; 0: time one model only.")
_UNROLL = flags.DEFINE_integer("unroll", 1, "lax.scan's unroll.")
_PRECISION = flags.DEFINE_string(
    "precision", "", "jax.default_matmul_precision while timing, e.g. "
    "BF16_BF16_F32 (GPU run 7 timed it without the kernel: --tiles=).")

BATCH = reference_mlp.BATCH
CIRCUIT = reference_mlp.CIRCUITS["sal"]


class Tiles(NamedTuple):
  """How ``rule_product`` tiles its work: G in (block x block) tiles, each
  summing the batch in chunks of ``chunk`` rows; Triton's warps and stages."""
  block: int = 64
  chunk: int = 256
  warps: int = 4
  stages: int = 1

  @classmethod
  def parse(cls, text: str) -> "Tiles":
    """From "block/chunk/warps/stages", e.g. "64/64/4/3"."""
    return cls(*map(int, text.split("/")))

  def __str__(self):
    return "/".join(map(str, self))


def rule_product(post_BxM, pre_BxN, mask_BxM=None, *, relu_pre=False,
                 tiles=Tiles(), interpret=False):
  """G = -(post ⊙ [mask > 0])ᵀ f(pre) / B, and each G tile's sum of squares.

  f is the ReLU if ``relu_pre`` (pre is then a potential h, whose activity
  a = ReLU(h) XLA would otherwise write for the kernel to read), else the
  identity. One kernel: a program per tile of G reads its columns of post
  (and of the mask's source) and of pre, chunk by chunk of the batch. Edge
  tiles mask their loads and stores (Triton does not bound them). Returns G
  (M x N) and the tiles' sums of squares (a grid-shaped array).
  """
  from jax.experimental.pallas import triton as pltriton  # pylint: disable=g-import-not-at-top
  b, m = post_BxM.shape
  n = pre_BxN.shape[1]
  bm = min(tiles.block, pl.next_power_of_2(m))
  bn = min(tiles.block, pl.next_power_of_2(n))
  bk = tiles.chunk if b % tiles.chunk == 0 else b
  grid = (pl.cdiv(m, bm), pl.cdiv(n, bn))

  def kernel(*refs):
    post_ref, *mask_ref, pre_ref, g_ref, sq_ref = refs
    in_m = pl.program_id(0) * bm + jax.lax.iota(jnp.int32, bm) < m
    in_n = pl.program_id(1) * bn + jax.lax.iota(jnp.int32, bn) < n
    post_mask = jnp.broadcast_to(in_m[None, :], (bk, bm))
    pre_mask = jnp.broadcast_to(in_n[None, :], (bk, bn))

    def chunk(k, acc):
      rows = pl.ds(pl.multiple_of(k * bk, bk), bk)
      post = pltriton.load(post_ref.at[rows, :], mask=post_mask, other=0.0)
      if mask_ref:  # D_u^{l+1}
        source = pltriton.load(mask_ref[0].at[rows, :], mask=post_mask,
                               other=0.0)
        post = jnp.where(source > 0, post, 0.0)
      pre = pltriton.load(pre_ref.at[rows, :], mask=pre_mask, other=0.0)
      if relu_pre:
        pre = jnp.maximum(pre, 0.0)
      return acc + jnp.dot(post.T, pre, preferred_element_type=jnp.float32)

    g = jax.lax.fori_loop(0, b // bk, chunk,
                          jnp.zeros((bm, bn), jnp.float32)) * (-1.0 / b)
    inside = in_m[:, None] & in_n[None, :]
    pltriton.store(g_ref, g, mask=inside)
    sq_ref[...] = jnp.sum(jnp.where(inside, g * g, 0.0)).reshape(1, 1)

  column_block = lambda width: pl.BlockSpec((b, width), lambda i, j: (0, i))
  operands = [post_BxM] + ([mask_BxM] if mask_BxM is not None else []) + [
      pre_BxN]
  in_specs = [column_block(bm)] * (len(operands) - 1) + [
      pl.BlockSpec((b, bn), lambda i, j: (0, j))]
  kwargs = {}
  if not interpret:
    kwargs["compiler_params"] = pltriton.CompilerParams(
        num_warps=tiles.warps, num_stages=tiles.stages)
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs,
      out_specs=[pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
                 pl.BlockSpec((1, 1), lambda i, j: (i, j))],
      out_shape=[jax.ShapeDtypeStruct((m, n), jnp.float32),
                 jax.ShapeDtypeStruct(grid, jnp.float32)],
      interpret=interpret, **kwargs)(*operands)


def fused_plasticity(circuit, weights, up, down, multipliers, *, tiles,
                     interpret):
  """``rules.plasticity`` (SAL, every family plastic) through ``rule_product``.

  Returns G and the squared global norm of the multiplier-scaled G, what
  ``optim.clip_by_global_norm`` would compute from it.
  """
  assert set(circuit.plastic_families) == {"w_bar", "v", "v_bar"}
  relays = rules.upstream_feedback(weights, down, batched=False)
  last = len(weights.w) - 1

  def activity(l):
    """a^l as (array, whether the kernel applies the ReLU): h^l for l >= 1,
    so that XLA need not write ReLU(h^l) for the kernel to read."""
    return (up.a[0], False) if l == 0 else (up.h[l - 1], True)

  args = {  # (post, pre, relu_pre, mask source or None) per matrix
      "w": [(relays[l], *activity(l), up.h[l] if l < last else None)
            for l in range(len(weights.w))],
      "w_bar": [(p, q, False, None) for p, q in rules.w_bar_factors(
          weights, up, down, batched=False)],
      "v": [(b, *activity(i + 1), None)
            for i, (b, _) in enumerate(rules.v_factors(weights, up, down))],
      "v_bar": [(p, q, False, None) for p, q in rules.v_bar_factors(
          weights, up, down, circuit.v_bar_signal)],
  }
  families, scaled_sq = [], []
  for f, name in enumerate(circuit_lib.FAMILIES):
    results = [rule_product(post, pre, mask, relu_pre=relu, tiles=tiles,
                            interpret=interpret)
               for post, pre, relu, mask in args[name]]
    families.append(tuple(g for g, _ in results))
    scaled_sq += [jnp.ravel(sq) * multipliers[f] ** 2 for _, sq in results]
  # One small reduction (XLA fuses the concatenation into it).
  return circuit_lib.Weights(*families), jnp.sum(jnp.concatenate(scaled_sq))


def clip_by_given_norm(max_norm) -> optax.GradientTransformationExtraArgs:
  """``optim.clip_by_global_norm`` with the squared norm handed in
  (``sq_norm=``, an optax extra argument), so it never reads the updates."""

  def update_fn(updates, state, params=None, *, sq_norm, **extra):
    del params, extra
    norm = jnp.sqrt(sq_norm)
    keep = norm < max_norm
    clipped = jax.tree.map(
        lambda g: jax.lax.select(keep, g, (g / norm) * max_norm), updates)
    return clipped, optim.ClipState(
        update_norm=norm, clipped_steps=state.clipped_steps
        + (~keep).astype(jnp.int32))

  return optax.GradientTransformationExtraArgs(
      optim.clip_by_global_norm(max_norm).init, update_fn)


def fused_optimizer(circuit) -> optax.GradientTransformationExtraArgs:
  """``optim.reference(circuit)`` with ``clip_by_given_norm``: the same
  hyperparameters and state structure."""
  reference = optim.reference(circuit)
  mask = optim._plastic_mask(circuit.plastic_families)  # pylint: disable=protected-access

  def chain(learning_rate, momentum, weight_decay, multipliers, clip_norm):
    return optax.chain(
        optim.scale_by_family(multipliers),
        optax.masked(optax.chain(clip_by_given_norm(clip_norm),
                                 optax.add_decayed_weights(weight_decay),
                                 optax.sgd(learning_rate, momentum=momentum)),
                     mask))

  hyperparams = reference.init(
      circuit_lib.init_weights(jax.random.key(0), circuit)).hyperparams
  return optax.inject_hyperparams(chain)(
      **{k: np.asarray(v) for k, v in hyperparams.items()})


def fused_step(circuit, optimizer, tiles, interpret, state, batch):
  """``train.train_step`` with the rules and the clip's norm fused."""
  up, down = train.forward_and_feedback(circuit, state.weights, batch)
  grads, sq_norm = fused_plasticity(
      circuit, state.weights, up, down,
      state.opt_state.hyperparams["multipliers"], tiles=tiles,
      interpret=interpret)
  loss = losses.LOSSES[circuit.loss]
  metrics = {"loss": jnp.sum(loss.value(up.output, batch[1]) / BATCH),
             "accuracy": jnp.sum(loss.correct(up.output, batch[1]) / BATCH)}
  updates, opt_state = optimizer.update(grads, state.opt_state, state.weights,
                                        sq_norm=sq_norm)
  return state.replace(step=state.step + 1,
                       weights=optax.apply_updates(state.weights, updates),
                       opt_state=opt_state), metrics


def library_step(circuit, optimizer, state, batch):
  return train.train_step(circuit, optimizer, state, batch)


def load_mnist():
  """(train images, labels, test images, labels, what they are)."""
  try:
    ds = datasets.load("mnist", _DATA_DIR.value, source="local")
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test, "MNIST"
  except (datasets.DatasetNotFoundError, ValueError):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (70000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 70000).astype(np.int32)
    return (images[:60000], labels[:60000], images[60000:], labels[60000:],
            "random data")


def check():
  """One step's G and clip norm, the library's against the kernel's at each
  ``--tiles``, for one model and a vmapped sweep of 4 (each computed in a
  program of its own, so that a faulty kernel cannot touch the reference)."""
  interpret = jax.default_backend() == "cpu"
  images, labels, _, _, data = load_mnist()
  batch = datasets.preprocess(jnp.asarray(images[:BATCH]),
                              jnp.asarray(labels[:BATCH]))
  reference = optim.reference(CIRCUIT)
  print(f"# check on {jax.devices()[0].device_kind}, {data}, "
        f"interpret={interpret}")

  def library(state):
    up, down = train.forward_and_feedback(CIRCUIT, state.weights, batch)
    g = rules.plasticity(loop.sweep_circuit(CIRCUIT, 2), state.weights, up,
                         down)
    m = state.opt_state.hyperparams["multipliers"]
    scaled = [x * m[f] for f, family in enumerate(g) for x in family]
    return g, jnp.sqrt(sum(jnp.sum(x * x) for x in scaled))

  def fused(tiles, state):
    up, down = train.forward_and_feedback(CIRCUIT, state.weights, batch)
    g, sq = fused_plasticity(CIRCUIT, state.weights, up, down,
                             state.opt_state.hyperparams["multipliers"],
                             tiles=tiles, interpret=interpret)
    return g, jnp.sqrt(sq)

  failed = []
  for members in (1, 4):
    states = loop.init_sweep(jax.random.split(jax.random.key(1), members),
                             CIRCUIT, reference)
    g_lib, n_lib = jax.jit(jax.vmap(library))(states)
    for tiles in map(Tiles.parse, _TILES.value):
      g_fused, n_fused = jax.jit(jax.vmap(functools.partial(fused, tiles)))(
          states)
      err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
                for a, b in zip(jax.tree.leaves(g_lib),
                                jax.tree.leaves(g_fused)))
      rel = float(jnp.max(jnp.abs(n_lib - n_fused) / n_lib))
      ok = err < 1e-2 and rel < 1e-3
      print(f"{members} model(s), tiles {tiles}: largest |G difference| / "
            f"max |G| {err:.2e}; clip norm {float(n_lib[0]):.6f} vs "
            f"{float(n_fused[0]):.6f}, largest relative difference {rel:.2e}"
            f"{'' if ok else ' DIFFERS'}", flush=True)
      if not ok:
        failed.append(f"{members}x{tiles}")
  optimizer = fused_optimizer(CIRCUIT)
  same = (jax.tree.structure(optimizer.init(states.weights))
          == jax.tree.structure(reference.init(states.weights)))
  print(f"optimizer states: {'same' if same else 'DIFFERENT'} structure")
  if failed or not same:
    raise SystemExit(f"check failed: {failed}")


def time_epochs():
  images, labels, test_images, test_labels, data = load_mnist()
  images = jax.device_put(images[:_EXAMPLES.value])
  labels = jax.device_put(labels[:_EXAMPLES.value])
  test = jax.device_put((test_images, test_labels))
  interpret = jax.default_backend() == "cpu"
  print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}, {data}; "
        f"one scanned epoch ({images.shape[0] // BATCH} steps), median of "
        f"{_REPEATS.value} after a warm-up (each epoch its own shuffle), "
        f"unroll {_UNROLL.value}, matmul precision "
        f"{_PRECISION.value or 'default'}; test accuracy after those "
        f"{_REPEATS.value + 1} epochs, mean over the models")
  print("| step | models | data order | ms | compile s | test accuracy % |\n"
        "|---|---|---|---|---|---|")
  reference, fused = optim.reference(CIRCUIT), fused_optimizer(CIRCUIT)
  variants = [("library (XLA)", functools.partial(library_step, CIRCUIT,
                                                  reference), reference)]
  for tiles in map(Tiles.parse, _TILES.value):
    variants.append((f"fused, tiles {tiles}", functools.partial(
        fused_step, CIRCUIT, fused, tiles, interpret), fused))
  programs = [(None, "own")]
  if _MEMBERS.value:
    programs += [(_MEMBERS.value, "own"), (_MEMBERS.value, "shared")]
  for members, order in programs:
    for name, step, optimizer in variants:
      if members:
        circuit = loop.sweep_circuit(CIRCUIT, members)
        if name.startswith("library"):
          step = functools.partial(library_step, circuit, optimizer)
        epoch = jax.vmap(loop.scan_epoch(step, BATCH, unroll=_UNROLL.value),
                         in_axes=(0, None if order == "shared" else 0,
                                  None, None))
        keys = jax.random.split(jax.random.key(0), members)
        state = loop.init_sweep(keys, CIRCUIT, optimizer)
        key = keys[0] if order == "shared" else keys
      else:
        epoch = loop.scan_epoch(step, BATCH, unroll=_UNROLL.value)
        state = sj.init_state(jax.random.key(0), CIRCUIT, optimizer)
        key = jax.random.key(0)
      jitted = jax.jit(epoch, donate_argnums=0,
                       compiler_options=speed_flags.compiler_options())
      try:
        start = time.perf_counter()
        compiled = jitted.lower(state, key, images, labels).compile()
        compile_s = time.perf_counter() - start
        times = []
        for e in range(_REPEATS.value + 1):
          epoch_key = (jax.vmap(jax.random.fold_in, (0, None))(key, e)
                       if key.ndim else jax.random.fold_in(key, e))
          start = time.perf_counter()
          state = compiled(state, epoch_key, images, labels)[0]
          jax.block_until_ready(state)
          times.append(time.perf_counter() - start)
        ms = statistics.median(times[1:]) * 1e3
        weights = state.weights if members else jax.tree.map(
            lambda x: x[None], state.weights)
        accuracy = loop.sweep_evaluate(CIRCUIT, weights, *test)["accuracy"]
        print(f"| {name} | {members or 1} | {order} | {ms:.1f} | "
              f"{compile_s:.1f} | {100 * float(jnp.mean(accuracy)):.2f} |",
              flush=True)
      except Exception as e:  # pylint: disable=broad-except
        print(f"| {name} | {members or 1} | {order} | failed: "
              f"{type(e).__name__}: {str(e).splitlines()[0][:200]} |",
              flush=True)


def compile_for_h100():
  """Kernels and bytes of each step, one model and a sweep of 64 (own
  orders), as ``experiments.gpu_program`` counts them."""
  jax.config.update("jax_platforms", "cpu")
  device = gpu_program.target_device(pathlib.Path(flags.FLAGS.target))
  print(f"# compiled for {device.device_kind}, jax {jax.__version__}")
  print("| step | models | kernels | MB/step |\n|---|---|---|---|")
  reference, fused = optim.reference(CIRCUIT), fused_optimizer(CIRCUIT)
  for members in (1, 64):
    circuit = loop.sweep_circuit(CIRCUIT, members)
    if members == 1:
      circuit = dataclasses.replace(circuit, batched_products=True)
    variants = [("library", functools.partial(library_step, circuit,
                                              reference), reference)]
    variants += [(f"fused, tiles {tiles}", functools.partial(
        fused_step, CIRCUIT, fused, tiles, False), fused)
                 for tiles in map(Tiles.parse, _TILES.value)]
    for name, step, optimizer in variants:
      compiled = gpu_program.compile_program(
          device, step, circuit, optimizer, members,
          speed_flags.compiler_options())
      kernels = hlo_kernels.kernels(compiled.as_text())
      print(f"| {name} | {members} | {len(kernels)} | "
            f"{sum(k.bytes for k in kernels) / 1e6:.1f} |", flush=True)
      if _LIST.value and members > 1:
        for k in kernels:
          print(f"    {k.opcode:12s} {k.bytes / 1e6:8.1f} {k.shape[:60]:60s} "
                f"{k.source[-40:]}")


def main(argv):
  del argv
  if _COMPILE.value:
    compile_for_h100()
  if _CHECK.value:
    check()
  if _TIME.value:
    with xla_options.matmul_precision(_PRECISION.value):
      time_epochs()


if __name__ == "__main__":
  app.run(main)
