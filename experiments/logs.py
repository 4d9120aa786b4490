"""Per-epoch records to metrics.jsonl and to TensorBoard.

TensorBoard event files are written with tensorboardX: a small, maintained
package that needs neither TensorFlow nor PyTorch (flax's and clu's writers
pull in TensorFlow, which this project keeps optional).
"""

from __future__ import annotations

import json
import pathlib
import shutil

from absl import logging

import numpy as np
import tensorboardX

from experiments import files

TIMING_FIELDS = ("examples_per_second", "epoch_seconds")


class Logger:
  """Appends one JSON line per member per epoch, and mirrors the scalars.

  ``kept_lines`` are the lines ``metrics.jsonl`` keeps from before (see
  ``checkpointed_lines``): the file is rewritten to them and TensorBoard's
  event files are rebuilt from them, so both hold exactly what the restored
  state has seen.
  """

  def __init__(self, workdir: pathlib.Path, kept_lines: list[str] = ()):
    files.write_text(workdir / "metrics.jsonl",
                     "".join(line + "\n" for line in kept_lines))
    self._file = open(workdir / "metrics.jsonl", "a")
    self._events = workdir / "tensorboard"
    shutil.rmtree(self._events, ignore_errors=True)
    self._writer = None  # opened by the first scalar
    for line in kept_lines:
      self._mirror(json.loads(line))

  def write(self, cell: str, member: dict, record: dict) -> None:
    line = dict(cell=cell, **member, **record)
    self._file.write(json.dumps(line) + "\n")
    self._mirror(line)

  def _mirror(self, line: dict) -> None:
    """A line's numbers as TensorBoard scalars at its epoch. The member's
    fields are those between ``cell`` and ``epoch``."""
    keys = list(line)
    member = {k: line[k] for k in keys[1:keys.index("epoch")]}
    record = {k: line[k] for k in keys[keys.index("epoch"):]}
    if self._writer is None:
      self._writer = tensorboardX.SummaryWriter(str(self._events))
    tag = f"{line['cell']}/seed{member['seed']}"
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


def checkpointed_lines(path: pathlib.Path, epochs_by_cell) -> list[str]:
  """The lines of ``path`` up to each cell's checkpoint; reads only.

  ``epochs_by_cell(label)`` gives that cell's checkpointed epoch or None. A
  resumed run that appends to these writes exactly the lines an
  uninterrupted run would have. A torn last line (a run killed while
  writing it) is dropped with a warning; a damaged line before it raises
  ValueError naming the file and line.
  """
  if not path.exists():
    return []
  lines = path.read_text().splitlines()
  kept = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
      cell, epoch = record["cell"], record["epoch"]
    except (ValueError, KeyError, TypeError) as e:
      if number == len(lines):
        logging.warning("%s: dropped its torn last line (%s)", path, e)
        break
      raise ValueError(f"{path}, line {number}: not a metrics record ({e}); "
                       "use a new --workdir") from e
    checkpointed = epochs_by_cell(cell)
    if checkpointed is not None and epoch <= checkpointed:
      kept.append(line)
  return kept
