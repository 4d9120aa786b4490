"""Result files written whole or not at all."""

from __future__ import annotations

import json
import os
import pathlib


def write_json_atomically(path: pathlib.Path, obj) -> None:
  """Writes via a temporary file and rename: never a half-written file."""
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, allow_nan=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
