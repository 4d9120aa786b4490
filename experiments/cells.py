"""Cells: the circuits an experiment trains, each with the members that share
its compiled program.

A *cell* is one circuit configuration (method, ratio, nonlinearity, plastic
families) with its optimizer and a list of *members*: (seed,
hyperparameters) pairs that train together under ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import sal_jax as sj
from experiments import data as data_lib

# What a member may set besides its seed, as logged; the four family
# multipliers (W, W̄, V, V̄) reach the optimizer as one [4] array.
MULTIPLIERS = ("m_w", "m_w_bar", "m_v", "m_v_bar")
HYPERPARAMS = ("learning_rate", *MULTIPLIERS)


@dataclasses.dataclass
class Cell:
  """One circuit, its optimizer, and the members that train it together."""
  label: str
  circuit: sj.Circuit
  optimizer: optax.GradientTransformation
  members: list[dict[str, Any]]  # each: {"seed": int, hyperparameter: value}


def make_compute(config: ml_collections.ConfigDict) -> sj.Compute:
  """The ``Compute`` a run config's ``compute`` field describes."""
  return sj.Compute(
      batched_products=config.batched_products,
      update_dtype=config.update_dtype,
      momentum_dtype=config.momentum_dtype,
      matmul_precision=config.matmul_precision,
      xla_options=sj.compute.parse_options(config.xla_options),
      unroll=config.unroll)


def make_circuit(config, data: data_lib.Data, **overrides) -> sj.Circuit:
  """The circuit a run config describes, with per-cell overrides."""
  model = config.model
  kwargs = dict(
      widths=(data.input_dim, *model.hidden, data.num_classes),
      ratio=model.ratio, method=model.method,
      nonlinearity=model.nonlinearity, v_bar_signal=model.v_bar_signal,
      loss=model.loss or ("sigmoid_cross_entropy" if data.multi_label
                          else "softmax_cross_entropy"))
  kwargs.update(overrides)
  return sj.Circuit(**kwargs)


def make_cell(config, label: str, circuit: sj.Circuit,
              members: list[dict[str, Any]]) -> Cell:
  """A cell with the reference optimizer, the config's values as defaults."""
  opt = config.optimizer
  optimizer = sj.reference_optimizer(
      circuit, learning_rate=opt.learning_rate, momentum=opt.momentum,
      weight_decay=opt.weight_decay, clip_norm=opt.clip_norm,
      multipliers=tuple(opt.multipliers), compute=make_compute(config.compute))
  return Cell(label, circuit, optimizer, members)


def seed_members(config, first_seed: int | None = None, **hyperparams):
  """``config.run.seeds`` members with consecutive seeds, shared values."""
  first = config.run.seed if first_seed is None else first_seed
  return [dict(seed=first + i, **hyperparams) for i in range(config.run.seeds)]


def member_values(config, members) -> dict[str, jax.Array]:
  """Per member, each of ``HYPERPARAMS`` ([N] arrays), defaults from the
  config."""
  defaults = dict(learning_rate=config.optimizer.learning_rate,
                  **dict(zip(MULTIPLIERS, config.optimizer.multipliers)))
  return {k: jnp.asarray([mem.get(k, defaults[k]) for mem in members],
                         jnp.float32) for k in HYPERPARAMS}


def initial_states(config, cell: Cell):
  """The members' PRNG keys and their states before training."""
  keys = jnp.stack([jax.random.key(m["seed"]) for m in cell.members])
  value = member_values(config, cell.members)
  hyperparams = {"learning_rate": value["learning_rate"],
                 "multipliers": jnp.stack([value[k] for k in MULTIPLIERS], 1)}
  return keys, sj.sweep.init_sweep(keys, cell.circuit, cell.optimizer,
                                   **hyperparams)


def describe(config, cell: Cell, member: dict) -> str:
  """A member in words: cell, seed, method and hyperparameters."""
  hp = member_values(config, [member])
  return (f"{cell.label} seed {member['seed']} (method {cell.circuit.method}, "
          + ", ".join(f"{k}={float(v[0]):g}" for k, v in hp.items()) + ")")


def result_from_metrics(lines: list[dict], label: str) -> dict[str, Any]:
  """A cell's members, histories and divergences, read back from the lines
  of metrics.jsonl (so a report can be rebuilt from an unfinished run)."""
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
