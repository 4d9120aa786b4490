"""Checkpoints of a cell's whole sweep state, with orbax-checkpoint.

A checkpoint holds every member's TrainState (weights of all four families,
optimizer state, step, PRNG key) and, as JSON, the epoch reached, the
per-member history and which members diverged. Orbax writes each checkpoint
into a temporary folder and renames it when complete, so a killed save never
leaves a checkpoint that loads as valid; the newest ``keep`` are kept, and
older ones are moved aside atomically before they are deleted.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil

import jax
import orbax.checkpoint as ocp

from sal_jax import train


def cell_directory(workdir: pathlib.Path, label: str) -> pathlib.Path:
  """Where the checkpoints of the cell named ``label`` live."""
  readable = re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_")
  # Labels like "W+V" and "W+V̄" differ only outside ASCII: the hash keeps
  # their folders apart.
  digest = hashlib.sha1(label.encode()).hexdigest()[:8]
  return workdir / "checkpoints" / f"{readable}-{digest}"


# Orbax prunes an old checkpoint by renaming it into this sub-folder (atomic),
# so a run killed while pruning never leaves a half-deleted step behind; we
# empty the folder after each save.
_PRUNED = "pruned"


def manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           todelete_subdir=_PRUNED))


def _storable(states: train.TrainState) -> train.TrainState:
  """Typed PRNG keys become their raw uint32 data for storage."""
  return states.replace(key=jax.random.key_data(states.key))


def save(mngr: ocp.CheckpointManager, epoch: int, states: train.TrainState,
         meta: dict) -> None:
  """Saves and waits: when this returns, the checkpoint is complete on disk."""
  mngr.save(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_storable(states)),
      meta=ocp.args.JsonSave(dict(meta, epoch=epoch))))
  mngr.wait_until_finished()
  shutil.rmtree(pathlib.Path(mngr.directory) / _PRUNED, ignore_errors=True)


def _leaf_specs(tree) -> dict[str, tuple]:
  """Path -> (shape, dtype) of every array, as orbax names the paths."""
  return {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_resumable(directory: pathlib.Path, like: train.TrainState) -> None:
  """Raises ValueError if the newest checkpoint in ``directory`` holds a state
  of another structure, shape or dtype than ``like`` (a state, or its
  ``jax.eval_shape``). Reads metadata only, so a run can refuse a workdir
  before it writes anything."""
  epoch = latest_epoch(directory)
  if epoch is None:
    return
  mngr = ocp.CheckpointManager(directory.absolute(), item_handlers=dict(
      state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()))
  saved = _leaf_specs(mngr.item_metadata(epoch)["state"].tree)
  expected = _leaf_specs(ocp.tree.serialize_tree(
      jax.eval_shape(_storable, like), keep_empty_nodes=True))
  if saved != expected:
    differ = sorted(k for k in saved.keys() | expected.keys()
                    if saved.get(k) != expected.get(k))
    raise ValueError(
        f"the checkpoint in {directory} does not hold this run's training "
        f"state (written by another version of sal_jax?); use a new "
        f"--workdir. It differs at {', '.join(differ[:3])}"
        + (f" and {len(differ) - 3} more" if len(differ) > 3 else ""))


def restore_latest(mngr: ocp.CheckpointManager,
                   like: train.TrainState) -> tuple[train.TrainState, dict]:
  """The newest checkpoint, shaped and placed like ``like``; its metadata.

  Placed like ``like``: on its devices and split as it is, whatever the
  devices it was saved from (a sweep may resume on another device count).
  """
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      _storable(like))
  restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target),
      meta=ocp.args.JsonRestore()))
  states = restored.state
  return states.replace(key=jax.random.wrap_key_data(states.key)), restored.meta


def latest_epoch(directory: pathlib.Path) -> int | None:
  """The epoch of the newest complete checkpoint in ``directory``, if any."""
  if not directory.exists():
    return None
  return ocp.CheckpointManager(directory.absolute()).latest_step()
