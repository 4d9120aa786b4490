"""Runs an experiment's cells as vmapped sweeps and writes what they measured.

``train_and_evaluate(config, workdir)`` takes the workdir's lock, checks
everything, builds the experiment's cells (``plans``), trains each with
``run_cell`` epoch by epoch (each epoch one compiled program, checkpointed and
resumable), appends a line per member per epoch to ``metrics.jsonl`` and
writes ``results.json``. README's "What a run guarantees" lists what holds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import sal_jax as sj
from experiments import cells as cells_lib
from experiments import checkpoints
from experiments import data as data_lib
from experiments import files
from experiments import logs
from experiments import plans
from experiments import workdir as workdir_lib
from sal_jax import datasets
from sal_jax import diagnostics
from sal_jax import optim
from sal_jax import parallel

Cell = cells_lib.Cell


class DeviceMemoryError(RuntimeError):
  """A cell's members did not fit in device memory, trained together."""


class Interrupted(RuntimeError):
  """A run stopped by SIGINT or SIGTERM; the message says where it resumes."""


def _all_finite(states: sj.TrainState) -> np.ndarray:
  """Per member: are its weights and optimizer state all finite?"""
  floats = [x for x in jax.tree.leaves((states.weights, states.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return np.asarray(jax.vmap(lambda *xs: jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(x)) for x in xs])))(*floats))


def first_bad_step(losses: np.ndarray, bound: float | None) -> int | None:
  """The first step whose loss is not finite or exceeds ``bound``."""
  bad = ~np.isfinite(losses)
  if bound is not None:
    bad |= losses > bound
  return int(np.argmax(bad)) if bad.any() else None


def _keep_last_good(states: sj.TrainState, good_host, members: list[int]):
  """``states`` with the rows of ``members`` taken from ``good_host`` (the
  stored form of a checkpointed state, on the host), placed as before."""
  stored = checkpoints.storable(states)
  host = jax.device_get(stored)
  rows = np.asarray(members)

  def replaced(now, good, like):
    now = np.array(now)
    now[rows] = good[rows]
    return jax.device_put(now, like.sharding)

  stored = jax.tree.map(replaced, host, good_host, stored)
  return stored.replace(key=jax.random.wrap_key_data(stored.key))


def _clipped_steps(opt_state) -> np.ndarray | None:
  """Per member: how many updates the global-norm clip has shortened so far
  (None without a clip)."""
  clip = optim.clip_statistics(opt_state)
  return None if clip is None else np.asarray(clip.clipped_steps)


def _learned_learning_rates(compute: sj.Compute, weights) -> np.ndarray:
  """Per member, per level: H = V̄V̄ᵀ's largest and smallest eigenvalue."""
  return np.asarray(_learned_lr_program(compute)(weights))


@functools.lru_cache(maxsize=8)
def _learned_lr_program(compute: sj.Compute):
  return compute.jit(jax.vmap(diagnostics.learned_learning_rate))


def state_shapes(config, cell: Cell):
  """The shapes and dtypes of the members' states, not computed."""
  return jax.eval_shape(lambda: cells_lib.initial_states(config, cell)[1])


def out_of_memory_message(config, cell: Cell, error: Exception) -> str:
  """What ran out of device memory, how big it is, and what to change."""
  state_mb = sum(math.prod(x.shape) * x.dtype.itemsize
                 for x in jax.tree.leaves(state_shapes(config, cell))) / 1e6
  xla_says = str(error).strip().splitlines()[0][:200]
  return (
      f"{cell.label}: out of device memory ({xla_says}). Its "
      f"{len(cell.members)} members train as one program: their weights and "
      f"optimizer state take {state_mb:.1f} MB, and the program's scratch "
      "up to as much again. Train fewer members per cell "
      "(--config.run.seeds, a smaller grid), on more devices "
      "(--config.run.member_devices), or with --config.compute.xla_options="
      "xla_gpu_command_buffer_scheduling_mode=LHS, which needs less scratch "
      "(the last two resume this --workdir from its last checkpoint; fewer "
      "members need a new one)")


def run_cell(config, cell: Cell, data: data_lib.Data, logger: logs.Logger,
             checkpoint_dir: pathlib.Path | None = None,
             resume: checkpoints.Resume | None = None) -> dict[str, Any]:
  """Trains every member of ``cell`` together; returns per-member histories.

  With ``checkpoint_dir``, resumes from its newest intact checkpoint
  (``resume``, found by ``checkpoints.newest_intact`` if not given; damaged
  newer ones are set aside) and saves every ``config.run.checkpoint_every``
  epochs and at the end (none if 0).

  A member diverges at the first step whose training loss is not finite or
  exceeds ``config.run.divergence_factor`` times its first step's loss, or
  when its state is not finite after an epoch. It is not trained further,
  and checkpoints keep its state from the last checkpoint before (or its
  initial state): no checkpoint holds a non-finite state.

  The members split over ``config.run.member_devices`` local devices
  (``parallel.member_mesh``); each computes what it would on one device (see
  ``parallel`` for when that is bitwise).

  Returns:
    ``{"members": [...], "history": [[epoch record, ...] per member],
    "initial": weights of member 0 before training, "final": after,
    "final_all": all members' weights, "diverged": {member index: (epoch,
    step)}}``.
  """
  epochs, batch_size = config.run.epochs, config.data.batch_size
  circuit, optimizer = cell.circuit, cell.optimizer
  compute = cells_lib.make_compute(config.compute)
  config_json = json.loads(config.to_json())
  keys, states = cells_lib.initial_states(config, cell)
  initial = jax.tree.map(lambda t: np.asarray(t[0]), states.weights)
  n_members = len(cell.members)
  mesh = parallel.member_mesh(
      n_members, jax.local_devices()[:config.run.member_devices or None])
  if mesh.size > 1:
    logging.info("%s: %d members split over %d devices", cell.label,
                 n_members, mesh.size)
    states, keys = parallel.shard_members((states, keys), mesh)
    data = dataclasses.replace(data,
                               **parallel.replicate(data.splits(), mesh))
  history = [[] for _ in range(n_members)]
  diverged: dict[int, tuple[int, int]] = {}
  initial_loss = None
  first_epoch = 1
  if checkpoint_dir is not None:
    if resume is None:
      resume = checkpoints.newest_intact(checkpoint_dir, states, config_json)
    for epoch, why in resume.damaged:
      moved = checkpoints.set_aside(checkpoint_dir, epoch)
      logging.warning("%s: the checkpoint of epoch %d is damaged (%s); moved "
                      "to %s", cell.label, epoch, why, moved)
  if resume is not None and resume.epoch is not None:
    states, meta, good_host = checkpoints.restore(checkpoint_dir,
                                                  resume.epoch, states)
    history = meta["history"]
    diverged = {int(k): tuple(v) for k, v in meta["diverged"].items()}
    initial_loss = np.asarray(meta["initial_loss"])
    first_epoch = meta["epoch"] + 1
    logging.info("%s: resumed from the checkpoint of epoch %d", cell.label,
                 meta["epoch"])
  else:
    good_host = jax.device_get(checkpoints.storable(states))
  mngr = None
  if checkpoint_dir is not None and config.run.checkpoint_every > 0:
    mngr = checkpoints.manager(checkpoint_dir, config.run.keep_checkpoints)
  steps = data.train[0].shape[0] // batch_size
  clipped = _clipped_steps(states.opt_state)  # read now: states get donated
  for epoch in range(first_epoch, epochs + 1):
    if len(diverged) == n_members:
      break
    epoch_keys = jax.vmap(lambda k, e=epoch: jax.random.fold_in(k, e))(keys)
    clipped_before = clipped
    start = time.perf_counter()
    states, metrics = sj.sweep.sweep_epoch(
        circuit, optimizer, batch_size, states, epoch_keys, *data.train,
        compute=compute, diagnostics=config.run.diagnostics)
    losses = np.asarray(metrics["loss"])  # blocks: the epoch is done
    seconds = time.perf_counter() - start
    if initial_loss is None:
      initial_loss = losses[:, 0]
    # Each evaluation is read before the next is dispatched: on CPU, a
    # multi-device program dispatched before the last one finished can hang.
    evals = {name: jax.tree.map(np.asarray, sj.sweep.sweep_evaluate(
        circuit, states.weights, *split, compute=compute))
             for name, split in data.splits().items()}
    state_finite = _all_finite(states)
    learned_lr = (_learned_learning_rates(compute, states.weights)
                  if config.run.diagnostics and states.weights.v_bar else None)
    clipped = _clipped_steps(states.opt_state)
    factor = config.run.divergence_factor
    for i, member in enumerate(cell.members):
      if i in diverged:
        continue
      step = first_bad_step(losses[i], None if factor is None
                            else factor * initial_loss[i])
      if step is None and not state_finite[i]:
        step = steps - 1
      if step is not None:
        diverged[i] = (epoch, step)
        logging.warning("%s diverged at epoch %d, step %d (loss %.4g)",
                        cells_lib.describe(config, cell, member), epoch, step,
                        losses[i][step])
        record = dict(epoch=epoch, diverged=True, diverged_step=step)
      else:
        record = dict(
            epoch=epoch, train_loss_running=float(losses[i].mean()),
            train_loss=float(evals["train"]["loss"][i]),
            train_accuracy=float(evals["train"]["accuracy"][i]),
            test_loss=float(evals["test"]["loss"][i]),
            test_accuracy=float(evals["test"]["accuracy"][i]),
            examples_per_second=n_members * steps * batch_size / seconds,
            epoch_seconds=seconds)
        if "validation" in evals:
          record["validation_accuracy"] = float(
              evals["validation"]["accuracy"][i])
        if clipped is not None:
          record["clipped_fraction"] = float(
              clipped[i] - clipped_before[i]) / steps
        if config.run.diagnostics:
          record["grad_cosine"] = np.asarray(
              metrics["grad_cosine"][i]).mean(0).tolist()
          for key in ("lemma1_gap", "feedback_angle"):
            if key in metrics:
              record[key] = np.asarray(metrics[key][i][-1]).tolist()
          if learned_lr is not None:  # [levels, (largest, smallest)]
            record["learned_learning_rate"] = learned_lr[i].tolist()
      history[i].append(record)
      logger.write(cell.label, member, record)
    logger.flush()
    alive = [i for i in range(n_members) if i not in diverged]
    mean = lambda key: (f"{np.mean([history[i][-1][key] for i in alive]):.4f}"
                        if alive else "n/a")
    logging.info("%s epoch %d/%d: train loss %s, train accuracy %s, test "
                 "accuracy %s, %.0f examples/s%s", cell.label, epoch, epochs,
                 mean("train_loss"), mean("train_accuracy"),
                 mean("test_accuracy"),
                 n_members * steps * batch_size / seconds,
                 f", {len(diverged)} diverged" if diverged else "")
    if not alive:
      break  # nothing left to train; the last good checkpoint stays as it is
    if mngr is not None and (epoch % config.run.checkpoint_every == 0
                             or epoch == epochs):
      kept = states
      if diverged:
        kept = _keep_last_good(states, good_host, sorted(diverged))
      good_host = checkpoints.save(mngr, epoch, kept, dict(
          history=history, diverged={str(k): v for k, v in diverged.items()},
          initial_loss=np.asarray(initial_loss).tolist()), config_json)
  return dict(members=cell.members, history=history, diverged=diverged,
              initial=initial,
              final=jax.tree.map(lambda t: np.asarray(t[0]), states.weights),
              final_all=jax.tree.map(np.asarray, states.weights))


def validate_config(config) -> None:
  """Raises ValueError naming the first bad setting (before any data load)."""
  if config.experiment not in plans.PLANS:
    raise ValueError(f"unknown experiment {config.experiment!r}; expected one "
                     f"of {sorted(plans.PLANS)}")
  if config.data.dataset not in datasets.SPECS:
    raise ValueError(f"unknown dataset {config.data.dataset!r}; expected one "
                     f"of {sorted(datasets.SPECS)}")
  for name, value in (("run.epochs", config.run.epochs),
                      ("run.seeds", config.run.seeds),
                      ("data.batch_size", config.data.batch_size)):
    if value <= 0:
      raise ValueError(f"{name} must be positive, got {value}")
  if config.data.train_size is not None and config.data.train_size <= 0:
    raise ValueError(f"data.train_size must be positive (None: all), got "
                     f"{config.data.train_size}")
  if config.data.validation_size < 0:
    raise ValueError(f"data.validation_size must be non-negative, got "
                     f"{config.data.validation_size}")
  opt = config.optimizer
  if len(opt.multipliers) != 4 or not all(
      isinstance(m, (int, float)) and not isinstance(m, bool)
      for m in opt.multipliers):
    raise ValueError(f"optimizer.multipliers must be four numbers (W, W̄, V, "
                     f"V̄), got {tuple(opt.multipliers)}")
  optim.check_hyperparams(
      learning_rate=opt.learning_rate, weight_decay=opt.weight_decay,
      momentum=opt.momentum, multipliers=tuple(opt.multipliers),
      **({} if opt.clip_norm is None else {"clip_norm": opt.clip_norm}))
  if not 0 <= config.run.member_devices <= jax.local_device_count():
    raise ValueError(
        f"run.member_devices must be between 0 (all that split the members "
        f"evenly) and the {jax.local_device_count()} local devices, got "
        f"{config.run.member_devices}")
  if config.run.checkpoint_every < 0:
    raise ValueError(f"run.checkpoint_every must be non-negative (0 writes "
                     f"no checkpoints), got {config.run.checkpoint_every}")
  if config.run.keep_checkpoints < 1:
    raise ValueError(f"run.keep_checkpoints must be at least 1 "
                     f"(checkpoint_every=0 writes none), got "
                     f"{config.run.keep_checkpoints}")
  hidden = tuple(config.model.hidden)
  if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
             for h in hidden):
    raise ValueError(f"model.hidden widths must be positive integers, got "
                     f"{hidden}")
  if not 0 < config.model.ratio < math.inf:
    raise ValueError(f"model.ratio must be positive and finite, got "
                     f"{config.model.ratio}")
  factor = config.run.divergence_factor
  if factor is not None and not 1 < factor < math.inf:
    raise ValueError(f"run.divergence_factor must be finite and above 1 "
                     f"(None: only non-finite losses diverge), got {factor}")
  cells_lib.make_compute(config.compute)  # raises naming a bad setting


def _interrupted(config, cell: Cell, workdir: pathlib.Path) -> Interrupted:
  epoch = checkpoints.latest_epoch(
      checkpoints.cell_directory(workdir, cell.label))
  if config.run.checkpoint_every == 0 and epoch is None:
    where = ("it writes no checkpoints (run.checkpoint_every=0): a rerun "
             "starts afresh")
  elif epoch is None:
    where = f"{cell.label} had no checkpoint yet: a rerun starts it afresh"
  else:
    where = (f"rerun the same command to resume {cell.label} from its "
             f"checkpoint of epoch {epoch}")
  return Interrupted(f"interrupted while training {cell.label}; {where}")


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs ``config.experiment`` and writes its files into ``workdir``.

  Holds the workdir's lock (``workdir.locked``) throughout. Every setting,
  the dataset, every cell, the workdir's recorded configuration, its
  checkpoints and its metrics are checked before the first file is written,
  so a refused run leaves the workdir as it was. A workdir that holds
  checkpoints of the same configuration is resumed from each cell's newest
  intact one, and its metrics.jsonl and TensorBoard files cut back to them.

  Returns:
    What ``results.json`` holds.
  """
  if not str(workdir).strip():
    raise ValueError("workdir is empty; name a folder for the run's files")
  validate_config(config)
  workdir = pathlib.Path(workdir)
  config_json = json.loads(config.to_json())
  workdir_lib.check(config_json, workdir)  # before the lock makes the folder
  with workdir_lib.locked(workdir):
    workdir_lib.check(config_json, workdir)  # again: now no run can change it
    return _train_and_evaluate_locked(config, config_json, workdir)


def _train_and_evaluate_locked(config, config_json: dict,
                               workdir: pathlib.Path) -> dict[str, Any]:
  data = data_lib.load(config.data)
  build_cells, report = plans.PLANS[config.experiment]
  cells = build_cells(config, data)
  resumes = {}
  for cell in cells:
    resume = checkpoints.newest_intact(
        checkpoints.cell_directory(workdir, cell.label),
        state_shapes(config, cell), config_json)
    if resume.epoch is not None and resume.epoch > config.run.epochs:
      raise ValueError(
          f"workdir {workdir}: {cell.label} is checkpointed at epoch "
          f"{resume.epoch}, past run.epochs={config.run.epochs}; ask for at "
          "least as many epochs, or use a new --workdir")
    resumes[cell.label] = resume
  # A second stage's cells (lr_grid's) are built after the first trains:
  # their lines are kept up to their newest checkpoint, verified when they run.
  kept_lines = logs.checkpointed_lines(
      workdir / "metrics.jsonl", lambda label: (
          resumes[label].epoch if label in resumes else
          checkpoints.latest_epoch(checkpoints.cell_directory(workdir, label))))
  files.write_json(workdir / "config.json", config_json)
  diverged = []
  logger = logs.Logger(workdir, kept_lines)

  def run(cell: Cell, cell_data: data_lib.Data = data):
    try:
      result = run_cell(config, cell, cell_data, logger,
                        checkpoints.cell_directory(workdir, cell.label),
                        resumes.get(cell.label))
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      raise DeviceMemoryError(out_of_memory_message(config, cell, e)) from e
    except KeyboardInterrupt:
      raise _interrupted(config, cell, workdir) from None
    diverged.extend(f"{cells_lib.describe(config, cell, cell.members[i])} at "
                    f"epoch {e}, step {s}" for i, (e, s) in
                    result["diverged"].items())
    return result

  compute = cells_lib.make_compute(config.compute)
  try:
    results = {cell.label: run(cell) for cell in cells}
    with jax.default_matmul_precision(compute.matmul_precision):
      summary = report(config, data, results, run, workdir)
  finally:
    logger.close()
  out = dict(experiment=config.experiment, dataset=config.data.dataset,
             data_source=data.source,
             multi_label_accuracy=data.multi_label, summary=summary,
             diverged=diverged, device=str(jax.devices()[0].device_kind),
             local_devices=jax.local_device_count(), jax=jax.__version__,
             matmul_precision=compute.matmul_precision or "default",
             xla_options=compute.compiler_options())
  files.write_json(workdir / "results.json", out)
  return out
