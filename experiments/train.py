"""Runs an experiment's cells as vmapped sweeps and writes what they measured.

A *cell* is one circuit configuration (method, ratio, nonlinearity, plastic
families) with a list of *members*: (seed, hyperparameters) pairs that share
the compiled program and train together under ``jax.vmap``. ``run_cell``
trains one cell epoch by epoch (each epoch one scanned XLA program), appends
a line per member per epoch to ``metrics.jsonl`` and returns the histories.
"""

from __future__ import annotations

import dataclasses
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
from experiments import checkpoints
from experiments import files
from experiments import logs
from sal_jax import datasets
from sal_jax import diagnostics
from sal_jax import loop
from sal_jax import optim
from sal_jax import parallel
from sal_jax import xla_options

# What a cell's member may set besides its seed, as logged; the four family
# multipliers (W, W̄, V, V̄) reach the optimizer as one [4] array
# (``optim.reference``).
MULTIPLIERS = ("m_w", "m_w_bar", "m_v", "m_v_bar")
HYPERPARAMS = ("learning_rate", *MULTIPLIERS)


class DeviceMemoryError(RuntimeError):
  """A cell's members did not fit in device memory, trained together."""


@dataclasses.dataclass
class Cell:
  """One circuit configuration and the members that train it together."""
  label: str
  circuit: sj.Circuit
  members: list[dict[str, Any]]  # each: {"seed": int, hyperparameter: value}


@dataclasses.dataclass
class Data:
  """uint8 splits on the device, plus what they are."""
  train: tuple[jax.Array, jax.Array]
  test: tuple[jax.Array, jax.Array]
  validation: tuple[jax.Array, jax.Array] | None
  input_dim: int
  num_classes: int
  multi_label: bool
  source: str

  def splits(self) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The (images, labels) splits this run has, by name."""
    splits = {"train": self.train, "test": self.test,
              "validation": self.validation}
    return {name: split for name, split in splits.items() if split is not None}


def load_data(config: ml_collections.ConfigDict) -> Data:
  """Loads the dataset, carves the validation split, puts it on the device."""
  ds = datasets.load(config.dataset, config.data_dir or None,
                     source=config.source)
  x, y = ds.x_train, ds.y_train
  if config.train_size:
    x, y = x[:config.train_size], y[:config.train_size]
  validation = None
  if config.validation_size:
    if config.validation_size >= len(x):
      raise ValueError(f"validation_size {config.validation_size} leaves no "
                       f"training data out of {len(x)} examples")
    order = np.random.default_rng(12345).permutation(len(x))
    val, keep = order[:config.validation_size], order[config.validation_size:]
    validation = (jax.device_put(x[val]), jax.device_put(y[val]))
    x, y = x[keep], y[keep]
  if config.batch_size > len(x):
    raise ValueError(f"batch_size {config.batch_size} exceeds the {len(x)} "
                     "training examples")
  return Data(train=(jax.device_put(x), jax.device_put(y)),
              test=(jax.device_put(ds.x_test), jax.device_put(ds.y_test)),
              validation=validation, input_dim=ds.input_dim,
              num_classes=ds.num_classes, multi_label=ds.multi_label,
              source=ds.source)


def make_circuit(config, data: Data, **overrides) -> sj.Circuit:
  """The circuit a config describes, with per-cell overrides."""
  kwargs = dict(
      widths=(data.input_dim, *config.hidden, data.num_classes),
      ratio=config.ratio, method=config.method,
      nonlinearity=config.nonlinearity or None,
      v_bar_signal=config.v_bar_signal,
      update_dtype=config.update_dtype or None,
      loss=config.loss or ("sigmoid_cross_entropy" if data.multi_label
                           else "softmax_cross_entropy"))
  kwargs.update(overrides)
  return sj.Circuit(**kwargs)


def make_optimizer(config, circuit: sj.Circuit):
  """The reference chain with the config's hyperparameters as defaults."""
  return sj.reference_optimizer(
      circuit, learning_rate=config.learning_rate, momentum=config.momentum,
      weight_decay=config.weight_decay,
      clip_norm=config.clip_norm if config.clip_norm > 0 else None,
      multipliers=tuple(config.multipliers),
      momentum_dtype=config.momentum_dtype or None)


def seed_members(config, first_seed: int | None = None, **hyperparams):
  """``config.seeds`` members with consecutive seeds and shared values."""
  first = config.seed if first_seed is None else first_seed
  return [dict(seed=first + i, **hyperparams) for i in range(config.seeds)]


def _member_values(config, members):
  """Per member, each of ``HYPERPARAMS`` ([N] arrays), defaults from the
  config."""
  defaults = dict(learning_rate=config.learning_rate,
                  **dict(zip(MULTIPLIERS, config.multipliers)))
  return {k: jnp.asarray([mem.get(k, defaults[k]) for mem in members],
                         jnp.float32) for k in HYPERPARAMS}


def _member_hyperparams(config, members):
  """The members' optimizer hyperparameters, stacked: ``learning_rate`` [N]
  and ``multipliers`` [N, 4]."""
  value = _member_values(config, members)
  return {"learning_rate": value["learning_rate"],
          "multipliers": jnp.stack([value[k] for k in MULTIPLIERS], 1)}


def _all_finite(weights) -> np.ndarray:
  """Per member: are all its weights finite?"""
  return np.asarray(jax.vmap(lambda w: jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(w)])))(weights))


def _clipped_steps(opt_state) -> np.ndarray | None:
  """Per member: how many updates the global-norm clip has shortened so far
  (None without a clip)."""
  clip = optim.clip_statistics(opt_state)
  return None if clip is None else np.asarray(clip.clipped_steps)


# Per member, per level: H = V̄V̄ᵀ's largest and smallest eigenvalue.
_learned_learning_rates = jax.jit(jax.vmap(diagnostics.learned_learning_rate),
                                  compiler_options=xla_options.OPTIONS)


def _describe(config, cell: Cell, member: dict) -> str:
  hp = _member_values(config, [member])
  return (f"{cell.label} seed {member['seed']} (method {cell.circuit.method}, "
          + ", ".join(f"{k}={float(v[0]):g}" for k, v in hp.items()) + ")")


def initial_states(config, cell: Cell, optimizer):
  """The members' PRNG keys and their states before training."""
  keys = jnp.stack([jax.random.key(m["seed"]) for m in cell.members])
  return keys, loop.init_sweep(keys, cell.circuit, optimizer,
                               **_member_hyperparams(config, cell.members))


def initial_state_shapes(config, cell: Cell):
  """The shapes and dtypes of the members' states (``initial_states``), not
  computed; builds the optimizer, so checks its hyperparameters."""
  optimizer = make_optimizer(config, cell.circuit)
  return jax.eval_shape(lambda: initial_states(config, cell, optimizer)[1])


def out_of_memory_message(config, cell: Cell, error: Exception) -> str:
  """What ran out of device memory, how big it is, and what to change."""
  states = initial_state_shapes(config, cell)
  state_mb = sum(math.prod(x.shape) * x.dtype.itemsize
                 for x in jax.tree.leaves(states)) / 1e6
  xla_says = str(error).strip().splitlines()[0][:200]
  return (
      f"{cell.label}: out of device memory ({xla_says}). Its "
      f"{len(cell.members)} members train as one program: their weights and "
      f"optimizer state take {state_mb:.1f} MB, and the program's scratch "
      "up to as much again. Train fewer members per cell (--config.seeds, a "
      "smaller grid), on more devices (--config.member_devices), or with "
      f"{xla_options.ENVIRONMENT_VARIABLE}="
      "xla_gpu_command_buffer_scheduling_mode=LHS, which needs less scratch "
      "(the last two resume this --workdir from its last checkpoint; fewer "
      "members need a new one)")


def run_cell(config, cell: Cell, data: Data, logger: logs.Logger,
             checkpoint_dir: pathlib.Path | None = None) -> dict[str, Any]:
  """Trains every member of ``cell`` together; returns per-member histories.

  With ``checkpoint_dir``, saves every ``config.checkpoint_every`` epochs and
  at the end, and resumes from the newest checkpoint found there.

  The members split over ``config.member_devices`` local devices
  (``parallel.member_mesh``); each computes what it would on one device (see
  ``parallel`` for when that is bitwise).

  Returns:
    ``{"members": [...], "history": [[epoch record, ...] per member],
    "initial": weights of member 0 before training, "final": after,
    "final_all": all members' weights, "diverged": {member index: (epoch,
    step)}}``.
  """
  epochs = config.epochs
  circuit = cell.circuit
  optimizer = make_optimizer(config, circuit)
  keys, states = initial_states(config, cell, optimizer)
  initial = jax.tree.map(lambda t: np.asarray(t[0]), states.weights)
  n_members = len(cell.members)
  mesh = parallel.member_mesh(
      n_members, jax.local_devices()[:config.member_devices or None])
  if mesh.size > 1:
    logging.info("%s: %d members split over %d devices", cell.label,
                 n_members, mesh.size)
    states, keys = parallel.shard_members((states, keys), mesh)
    data = dataclasses.replace(data,
                               **parallel.replicate(data.splits(), mesh))
  history = [[] for _ in range(n_members)]
  diverged: dict[int, tuple[int, int]] = {}
  first_epoch = 1
  mngr = None
  if checkpoint_dir is not None and config.checkpoint_every > 0:
    mngr = checkpoints.manager(checkpoint_dir, config.keep_checkpoints)
    if mngr.latest_step() is not None:
      states, meta = checkpoints.restore_latest(mngr, states)
      history = meta["history"]
      diverged = {int(k): tuple(v) for k, v in meta["diverged"].items()}
      first_epoch = meta["epoch"] + 1
      logging.info("%s: resumed from the checkpoint of epoch %d", cell.label,
                   meta["epoch"])
  steps = data.train[0].shape[0] // config.batch_size
  clipped = _clipped_steps(states.opt_state)  # read now: states get donated
  for epoch in range(first_epoch, epochs + 1):
    if len(diverged) == n_members:
      break
    epoch_keys = jax.vmap(lambda k, e=epoch: jax.random.fold_in(k, e))(keys)
    clipped_before = clipped
    start = time.perf_counter()
    states, metrics = loop.sweep_epoch(
        circuit, optimizer, config.batch_size, states, epoch_keys,
        *data.train, diagnostics=config.diagnostics, unroll=config.unroll)
    losses = np.asarray(metrics["loss"])  # blocks: the epoch is done
    seconds = time.perf_counter() - start
    # Each evaluation is read before the next is dispatched: on CPU, a
    # multi-device program dispatched before the last one finished can hang.
    evals = {name: jax.tree.map(np.asarray, loop.sweep_evaluate(
        circuit, states.weights, *split))
             for name, split in data.splits().items()}
    weights_finite = _all_finite(states.weights)
    learned_lr = (np.asarray(_learned_learning_rates(states.weights))
                 if config.diagnostics and states.weights.v_bar else None)
    clipped = _clipped_steps(states.opt_state)
    newly_diverged = []
    for i, member in enumerate(cell.members):
      if i in diverged:
        continue
      bad = ~np.isfinite(losses[i])
      if bad.any() or not weights_finite[i]:
        step = int(np.argmax(bad)) if bad.any() else steps - 1
        diverged[i] = (epoch, step)
        newly_diverged.append(i)
        logging.warning("%s diverged at epoch %d, step %d",
                        _describe(config, cell, member), epoch, step)
        record = dict(epoch=epoch, diverged=True, diverged_step=step)
      else:
        record = dict(
            epoch=epoch, train_loss_running=float(losses[i].mean()),
            train_loss=float(evals["train"]["loss"][i]),
            train_accuracy=float(evals["train"]["accuracy"][i]),
            test_loss=float(evals["test"]["loss"][i]),
            test_accuracy=float(evals["test"]["accuracy"][i]),
            examples_per_second=n_members * steps * config.batch_size
            / seconds, epoch_seconds=seconds)
        if "validation" in evals:
          record["validation_accuracy"] = float(
              evals["validation"]["accuracy"][i])
        if clipped is not None:
          record["clipped_fraction"] = float(
              clipped[i] - clipped_before[i]) / steps
        if config.diagnostics:
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
                 n_members * steps * config.batch_size / seconds,
                 f", {len(diverged)} diverged" if diverged else "")
    if not alive:
      break  # nothing left to train; the last good checkpoint stays as it is
    if mngr is not None and (epoch % config.checkpoint_every == 0
                             or epoch == epochs):
      checkpoints.save(mngr, epoch, states, dict(
          history=history, diverged={str(k): v for k, v in diverged.items()}))
  return dict(members=cell.members, history=history, diverged=diverged,
              initial=initial,
              final=jax.tree.map(lambda t: np.asarray(t[0]), states.weights),
              final_all=jax.tree.map(np.asarray, states.weights))


def result_from_metrics(lines: list[dict], label: str) -> dict[str, Any]:
  """A cell's members, histories and divergences, read back from metrics.jsonl.

  Lets a report be rebuilt from the log of a run that did not finish.
  """
  members, history, diverged = [], [], {}
  index = {}
  for line in lines:
    if line["cell"] != label:
      continue
    member = {k: line[k] for k in ("seed", *HYPERPARAMS) if k in line}
    key = tuple(sorted(member.items()))
    if key not in index:
      index[key] = len(members)
      members.append(member)
      history.append([])
    i = index[key]
    record = {k: v for k, v in line.items() if k not in member and k != "cell"}
    history[i].append(record)
    if record.get("diverged"):
      diverged[i] = (record["epoch"], record["diverged_step"])
  return dict(members=members, history=history, diverged=diverged)


def summarize(result: dict[str, Any], key: str = "test_accuracy"):
  """Per-member final and best ``key``, their mean and std (diverged apart)."""
  final, best, train, seeds, diverged = [], [], [], [], {}
  for i, (member, history) in enumerate(zip(result["members"],
                                            result["history"])):
    if i in result["diverged"]:
      epoch, step = result["diverged"][i]
      diverged[str(member["seed"])] = dict(epoch=epoch, step=step)
      continue
    seeds.append(member["seed"])
    final.append(history[-1][key])
    best.append(max(r[key] for r in history))
    train.append(history[-1]["train_accuracy"])

  def stats(values):
    return (dict(mean=float(np.mean(values)), std=float(np.std(values)))
            if values else dict(mean=math.nan, std=math.nan))

  return dict(seeds=seeds, **{f"final_{key}": final, f"best_{key}": best,
                              "final_train_accuracy": train},
              final=stats(final), best=stats(best), train=stats(train),
              diverged=diverged)


def validate_config(config) -> None:
  """Raises ValueError naming the first bad setting."""
  from experiments import plans  # pylint: disable=g-import-not-at-top
  if config.experiment not in plans.PLANS:
    raise ValueError(f"unknown experiment {config.experiment!r}; expected one "
                     f"of {sorted(plans.PLANS)}")
  if config.dataset not in datasets.SPECS:
    raise ValueError(f"unknown dataset {config.dataset!r}; expected one of "
                     f"{sorted(datasets.SPECS)}")
  for name in ("epochs", "seeds", "batch_size", "unroll"):
    if int(config[name]) <= 0:
      raise ValueError(f"{name} must be positive, got {config[name]}")
  for name in ("train_size", "validation_size"):
    if config[name] < 0:
      raise ValueError(f"{name} must be non-negative, got {config[name]}")
  optim.check_hyperparams(  # before the data load; clip_norm <= 0 is no clip
      learning_rate=config.learning_rate, weight_decay=config.weight_decay,
      momentum=config.momentum, multipliers=tuple(config.multipliers))
  if not 0 <= config.member_devices <= jax.local_device_count():
    raise ValueError(
        f"member_devices must be between 0 (all that split the members "
        f"evenly) and the {jax.local_device_count()} local devices, got "
        f"{config.member_devices}")
  if config.checkpoint_every < 0:
    raise ValueError(f"checkpoint_every must be non-negative (0 writes no "
                     f"checkpoints), got {config.checkpoint_every}")
  if config.keep_checkpoints < 1:
    raise ValueError(f"keep_checkpoints must be at least 1 (checkpoint_every=0 "
                     f"writes none), got {config.keep_checkpoints}")
  if any(int(h) <= 0 for h in config.hidden):
    raise ValueError(f"hidden widths must be positive, got {config.hidden}")
  try:
    matmul_precision(config)
  except ValueError as e:
    raise ValueError(f"bad matmul_precision {e}") from None


def matmul_precision(config):
  """The context every matrix product of a run is traced in."""
  return xla_options.matmul_precision(config.matmul_precision)


# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ("epochs", "checkpoint_every", "keep_checkpoints",
                     "data_dir", "member_devices")


def check_workdir(config, workdir: pathlib.Path) -> None:
  """Refuses a workdir that cannot be one, or that holds a run of a different
  configuration."""
  existing = next(p for p in (workdir, *workdir.parents) if p.exists())
  if not existing.is_dir():
    raise ValueError(f"workdir {workdir}: {existing} exists and is not a "
                     "directory")
  previous = workdir / "config.json"
  if not previous.exists():
    return
  try:
    old = json.loads(previous.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"workdir {workdir}: its config.json is not readable "
                     f"JSON ({e}); use a new --workdir") from e
  new = json.loads(config.to_json())
  changed = sorted(k for k in set(old) | set(new)
                   if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
  if changed:
    raise ValueError(
        f"workdir {workdir} holds a run of a different configuration "
        f"(differs in {', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed)}); "
        "use a new --workdir")


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Runs ``config.experiment`` and writes its files into ``workdir``.

  Every setting, the dataset, every circuit and the workdir are checked before
  the first file is written, so a bad config leaves the workdir untouched. A
  workdir that holds checkpoints of the same configuration is resumed.

  Returns:
    What ``results.json`` holds.
  """
  from experiments import plans  # pylint: disable=g-import-not-at-top
  validate_config(config)
  workdir = pathlib.Path(workdir)
  check_workdir(config, workdir)
  data = load_data(config)
  build_cells, report = plans.PLANS[config.experiment]
  cells = build_cells(config, data)
  for cell in cells:
    checkpoints.check_resumable(
        checkpoints.cell_directory(workdir, cell.label),
        initial_state_shapes(config, cell))
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_json_atomically(workdir / "config.json",
                              json.loads(config.to_json()))
  logs.keep_checkpointed_lines(
      workdir / "metrics.jsonl",
      lambda label: checkpoints.latest_epoch(
          checkpoints.cell_directory(workdir, label)))
  diverged = []
  logger = logs.Logger(workdir)

  def run(cell: Cell, cell_data: Data = data):
    try:
      result = run_cell(config, cell, cell_data, logger,
                        checkpoints.cell_directory(workdir, cell.label))
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      raise DeviceMemoryError(out_of_memory_message(config, cell, e)) from e
    diverged.extend(f"{_describe(config, cell, cell.members[i])} at epoch "
                    f"{e}, step {s}" for i, (e, s) in
                    result["diverged"].items())
    return result

  try:
    with matmul_precision(config):
      results = {cell.label: run(cell) for cell in cells}
      summary = report(config, data, results, run, workdir)
  finally:
    logger.close()
  out = dict(experiment=config.experiment, dataset=config.dataset,
             data_source=data.source,
             multi_label_accuracy=data.multi_label, summary=summary,
             diverged=diverged, device=str(jax.devices()[0].device_kind),
             local_devices=jax.local_device_count(), jax=jax.__version__,
             matmul_precision=config.matmul_precision or "default",
             xla_options=xla_options.OPTIONS)
  files.write_json_atomically(workdir / "results.json", out)
  return out
