"""A workdir: one run at a time, of one configuration.

``locked(workdir)`` holds an advisory lock (``flock`` on ``workdir/.lock``)
for the run's whole life. The kernel releases it when the process ends, however
it ends, so a killed run leaves no stale lock. ``changed_settings`` says how
two configurations differ in what a resumed run may not change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import time
from typing import Any, Iterator

LOCK = ".lock"

# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ("run.epochs", "run.checkpoint_every",
                     "run.keep_checkpoints", "data.data_dir",
                     "run.member_devices")


def _open_locked(path: pathlib.Path) -> int | None:
  """A descriptor of ``path`` holding its lock, or None if another holds it.

  Retries if the file was replaced between opening and locking (a run that
  ended and removed it), so two runs never lock two different files.
  """
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return None
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)


def _holder(path: pathlib.Path) -> str:
  try:
    return path.read_text().strip() or "a run starting up"
  except OSError:
    return "a run"


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
  """Holds ``workdir``'s lock, creating the folder if needed.

  Raises ValueError naming the holder if another run holds it. If the body
  raises before it writes anything, what this made (the folder, the lock
  file) is removed again, leaving the workdir as it was.
  """
  created = [p for p in (workdir, *workdir.parents) if not p.exists()]
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK
  fd = _open_locked(path)
  if fd is None:
    raise ValueError(f"workdir {workdir} is in use by another run "
                     f"({_holder(path)}); wait for it to end or use another "
                     "--workdir")
  os.ftruncate(fd, 0)
  os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
               f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
  try:
    yield
  finally:
    path.unlink(missing_ok=True)  # under the lock: see _open_locked
    os.close(fd)
    for folder in created:  # innermost first; only if still empty
      with contextlib.suppress(OSError):
        folder.rmdir()


def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  """A nested config as JSON, flattened to dotted names."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def changed_settings(old: dict, new: dict) -> list[str]:
  """``name: old -> new`` for each setting outside ``RESUMABLE_CHANGES``
  in which the nested JSON configs ``old`` and ``new`` differ."""
  old, new = flat(old), flat(new)
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
          for k in sorted(set(old) | set(new))
          if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)]


def check(config_json: dict, workdir: pathlib.Path) -> None:
  """Refuses a workdir that cannot be one, or whose config.json records a
  run of another configuration."""
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
  changed = changed_settings(old, config_json)
  if changed:
    raise ValueError(
        f"workdir {workdir} holds a run of a different configuration "
        f"(differs in {', '.join(changed)}); use a new --workdir")
