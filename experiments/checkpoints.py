"""Verified checkpoints of a cell's whole sweep state, with orbax-checkpoint.

A checkpoint holds every member's TrainState (weights of all four families,
optimizer state, step, PRNG key) and, as JSON, the epoch reached, the
per-member history, which members diverged, the run's configuration and a
SHA-256 of the stored arrays. Orbax writes each checkpoint into a temporary
folder and renames it when complete; ``newest_intact`` restores and
re-hashes, so a checkpoint whose bytes changed, or that lost a file, is found
out, set aside and the one before it used. The newest ``keep`` are kept;
older ones are moved aside atomically before they are deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments import workdir as workdir_lib
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
# Damaged checkpoints are moved here, out of orbax's sight, for inspection.
DAMAGED = "damaged"


def manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           todelete_subdir=_PRUNED))


def storable(states: train.TrainState) -> train.TrainState:
  """Typed PRNG keys become their raw uint32 data for storage."""
  return states.replace(key=jax.random.key_data(states.key))


def checksum(host_tree) -> str:
  """SHA-256 of every array's path, dtype, shape and bytes."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(host_tree)[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)} {leaf.dtype} "
                  f"{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def save(mngr: ocp.CheckpointManager, epoch: int, states: train.TrainState,
         meta: dict, config_json: dict):
  """Saves and waits: when this returns, the checkpoint is complete on disk.

  Returns the stored arrays as host numpy (what the checksum covers).
  """
  stored = storable(states)
  host = jax.device_get(stored)
  mngr.save(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardSave(stored),
      meta=ocp.args.JsonSave(dict(meta, epoch=epoch, config=config_json,
                                  checksum=checksum(host)))))
  mngr.wait_until_finished()
  shutil.rmtree(pathlib.Path(mngr.directory) / _PRUNED, ignore_errors=True)
  return host


def _leaf_specs(tree) -> dict[str, tuple]:
  """Path -> (shape, dtype) of every array, as orbax names the paths."""
  return {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _steps(directory: pathlib.Path) -> list[int]:
  """The epochs of the complete (renamed) checkpoint folders, newest first."""
  if not directory.is_dir():
    return []
  return sorted((int(p.name) for p in directory.iterdir()
                 if p.name.isdigit() and p.is_dir()), reverse=True)


def _reader(directory: pathlib.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory.absolute(), item_handlers=dict(
      state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()))


def _restore(reader, epoch: int, target) -> tuple[train.TrainState, dict]:
  restored = reader.restore(epoch, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta


def _targets(like: train.TrainState):
  """Restore targets shaped like ``like`` and placed as it is (on the
  default device where ``like`` is only shapes, as ``jax.eval_shape``
  gives)."""
  placed = all(isinstance(x, jax.Array) for x in jax.tree.leaves(like))
  stored = storable(like) if placed else jax.eval_shape(storable, like)
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=x.sharding if placed else here), stored)


class _NotFromOrbax(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return f"{os.sep}orbax{os.sep}" not in record.pathname


@contextlib.contextmanager
def _orbax_quiet():
  """Drops orbax's log lines: reading a damaged checkpoint makes it warn
  several times, where ``run_cell`` reports the damage in one line."""
  absl_logger, quiet = logging.getLogger("absl"), _NotFromOrbax()
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)


@dataclasses.dataclass
class Resume:
  """The newest intact checkpoint of a cell, and the damaged ones after it."""
  epoch: int | None  # None: none to resume from
  damaged: list[tuple[int, str]]  # (epoch, what is wrong), newest first


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:200]


def newest_intact(directory: pathlib.Path, like: train.TrainState,
                  config_json: dict) -> Resume:
  """Finds the newest checkpoint in ``directory`` that restores and whose
  arrays hash as recorded; reads only.

  Raises ValueError (naming the directory) if a readable checkpoint holds a
  state of another structure, shape or dtype than ``like`` (a state, or its
  ``jax.eval_shape``), or was written under another configuration than
  ``config_json`` in a setting a resumed run may not change
  (``workdir.RESUMABLE_CHANGES``); or if checkpoints exist and none is
  intact.
  """
  with _orbax_quiet():
    return _newest_intact(directory, like, config_json)


def _newest_intact(directory, like, config_json) -> Resume:
  steps = _steps(directory)
  damaged = []
  if not steps:
    return Resume(None, damaged)
  reader = _reader(directory)
  expected = _leaf_specs(ocp.tree.serialize_tree(
      jax.eval_shape(storable, like), keep_empty_nodes=True))
  for epoch in steps:
    try:
      saved = _leaf_specs(reader.item_metadata(epoch)["state"].tree)
    except Exception as e:  # orbax raises many kinds on damaged files
      damaged.append((epoch, f"unreadable metadata: {_first_line(e)}"))
      continue
    if saved != expected:
      differ = sorted(k for k in saved.keys() | expected.keys()
                      if saved.get(k) != expected.get(k))
      raise ValueError(
          f"the checkpoint of epoch {epoch} in {directory} does not hold this "
          f"run's training state (written by another version of sal_jax?); "
          f"use a new --workdir. It differs at {', '.join(differ[:3])}"
          + (f" and {len(differ) - 3} more" if len(differ) > 3 else ""))
    try:
      state, meta = _restore(reader, epoch, _targets(like))
      host = jax.device_get(state)
    except Exception as e:  # orbax and tensorstore raise many kinds
      damaged.append((epoch, f"unreadable: {_first_line(e)}"))
      continue
    if "checksum" not in meta or "config" not in meta:
      damaged.append((epoch, "no checksum or configuration recorded "
                             "(written by an older sal_jax?)"))
      continue
    changed = workdir_lib.changed_settings(meta["config"], config_json)
    if changed:
      raise ValueError(
          f"the checkpoint of epoch {epoch} in {directory} was written by a "
          f"run of another configuration (differs in {', '.join(changed)}); "
          "use a new --workdir")
    if checksum(host) != meta["checksum"]:
      damaged.append((epoch, "its arrays do not match their checksum"))
      continue
    return Resume(epoch, damaged)
  raise ValueError(
      f"no intact checkpoint in {directory} to resume from: " + "; ".join(
          f"{directory / str(e)}: {why}" for e, why in damaged)
      + ". Move the folder away to start the cell afresh, or use a new "
      "--workdir")


def set_aside(directory: pathlib.Path, epoch: int) -> pathlib.Path:
  """Moves the checkpoint of ``epoch`` into ``directory/damaged/``, out of
  orbax's sight; returns where it went."""
  target = directory / DAMAGED / str(epoch)
  n = 1
  while target.exists():
    target, n = directory / DAMAGED / f"{epoch}.{n}", n + 1
  target.parent.mkdir(exist_ok=True)
  (directory / str(epoch)).rename(target)
  return target


def restore(directory: pathlib.Path, epoch: int,
            like: train.TrainState) -> tuple[train.TrainState, dict, object]:
  """The checkpoint of ``epoch``, shaped and placed like ``like`` (on its
  devices and split as it is, whatever the devices it was saved from); its
  metadata; the stored arrays on the host.

  Raises ValueError if its arrays no longer match their checksum.
  """
  state, meta = _restore(_reader(directory), epoch, _targets(like))
  host = jax.device_get(state)
  if checksum(host) != meta.get("checksum"):
    raise ValueError(f"{directory / str(epoch)}: its arrays do not match "
                     "their checksum")
  return state.replace(key=jax.random.wrap_key_data(state.key)), meta, host


def latest_epoch(directory: pathlib.Path) -> int | None:
  """The epoch of the newest complete checkpoint in ``directory``, if any
  (not verified: see ``newest_intact``)."""
  steps = _steps(directory)
  return steps[0] if steps else None
