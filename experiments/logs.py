"""Per-epoch records to metrics.jsonl and to TensorBoard.

TensorBoard event files are written with tensorboardX: a small, maintained
package that needs neither TensorFlow nor PyTorch (flax's and clu's writers
pull in TensorFlow, which this project keeps optional).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorboardX

from experiments import files

TIMING_FIELDS = ("examples_per_second", "epoch_seconds")


class Logger:
  """Appends one JSON line per member per epoch, and mirrors the scalars."""

  def __init__(self, workdir: pathlib.Path):
    self._file = open(workdir / "metrics.jsonl", "a")
    self._workdir = workdir
    self._writer = None  # opened by the first record: a run refused at
    # restore (a checkpoint of another state's shape) writes no event file

  def write(self, cell: str, member: dict, record: dict) -> None:
    self._file.write(json.dumps(dict(cell=cell, **member, **record)) + "\n")
    if self._writer is None:
      self._writer = tensorboardX.SummaryWriter(
          str(self._workdir / "tensorboard"))
    tag = f"{cell}/seed{member['seed']}"
    extra = "".join(f"_{k}{v:g}" for k, v in member.items() if k != "seed")
    for key, value in record.items():
      if isinstance(value, (int, float)) and key != "epoch":
        self._writer.add_scalar(f"{tag}{extra}/{key}", value, record["epoch"])
      elif isinstance(value, list):  # one scalar per entry, nested or not
        for index, v in np.ndenumerate(np.asarray(value, float)):
          suffix = "_".join(str(i) for i in index)
          self._writer.add_scalar(f"{tag}{extra}/{key}_{suffix}", v,
                                  record["epoch"])

  def flush(self) -> None:
    self._file.flush()
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    self._file.close()
    if self._writer is not None:
      self._writer.close()


def keep_checkpointed_lines(path: pathlib.Path, epochs_by_cell) -> None:
  """Drops lines past each cell's newest checkpoint before a resumed run.

  ``epochs_by_cell(label)`` gives that cell's checkpointed epoch or None. The
  resumed run then appends exactly the lines an uninterrupted run would have.
  """
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    record = json.loads(line)
    epoch = epochs_by_cell(record["cell"])
    if epoch is not None and record["epoch"] <= epoch:
      kept.append(line)
  files.write_text(path, "".join(l + "\n" for l in kept))
