"""Result files written whole or not at all."""

from __future__ import annotations

import json
import os
import pathlib


def write_text(path: pathlib.Path, text: str) -> None:
  """Writes via a temporary file and rename: never a half-written file."""
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json(path: pathlib.Path, obj) -> None:
  """``obj`` as indented JSON, written atomically (``write_text``)."""
  write_text(path, json.dumps(obj, indent=1, allow_nan=True))
