r"""Command line for every experiment: an ml_collections config and a workdir.

    python -m experiments.main --config=experiments/configs/table1.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/table1_mnist

Any config field can be overridden with --config.group.field=value; the run
prints its whole config first. Writes config.json, metrics.jsonl (a line per
member per epoch), results.json and the experiment's figures, and ends by
printing where they are. Progress goes to stderr: this project's INFO lines and
every library's warnings (other libraries' INFO lines, such as orbax's
checkpointing, show with --verbosity=0 or higher). Bad settings or missing
data exit with status 2 and a one-line reason, before anything is written; so
do a workdir another run holds, a cell whose members do not fit in device
memory (keeping what earlier epochs checkpointed), a full disk and a workdir
that cannot be written. SIGINT and SIGTERM end a run with one line saying
where it resumes (exit status 130, 143). A run in which some member diverged
writes its results (recording the divergence) and exits with status 3.
"""

import logging as std_logging
import pathlib
import re
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

import experiments
from experiments import run
import sal_jax
from sal_jax import datasets

_CONFIGS = pathlib.Path(__file__).parent / "configs"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Experiment config file, one of experiments/configs/: " + ", ".join(
        sorted(p.stem for p in _CONFIGS.glob("*.py")
               if not p.stem.startswith("_")))
    + ". Append :runlocal for a smoke run of seconds.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results are written.")
flags.mark_flags_as_required(["config", "workdir"])

_OWN_CODE = tuple(str(pathlib.Path(package.__file__).parent)
                  for package in (experiments, sal_jax))


class OwnInfoOnly(std_logging.Filter):
  """Passes warnings from anywhere, INFO lines from this project's code only."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING
            or record.pathname.startswith(_OWN_CODE))


def _set_up_logging() -> None:
  """INFO for this project's progress lines, unless --verbosity was given."""
  if flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(OwnInfoOnly())


_signal_received = []


def _raise_interrupt(signum, frame):
  """SIGTERM ends a run as Ctrl-C (SIGINT) does: with one line saying where
  it resumes."""
  del frame
  _signal_received.append(signum)
  raise KeyboardInterrupt


def _fail(reason: str):
  """One ``error:`` line on stderr, exit status 2."""
  print(f"error: {reason}", file=sys.stderr)
  sys.exit(2)


def _config_field(argument: str) -> str | None:
  """``a.b`` for ``--config.a.b=value`` (or ``--config.a.b value``), else None."""
  match = re.match(r"--?config\.([^=]+)", argument)
  return match.group(1) if match else None


def _innermost_message(error: BaseException) -> str:
  """The text ml_collections wraps in a KeyError inside an AttributeError."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if error.args else str(error)


def _set_none(config, field: str) -> None:
  """Sets ``config.field`` (dotted) to None, if the field may be None."""
  *groups, name = field.split(".")
  node = config
  for group in groups:
    node = node[group] if group in node else None
    if not isinstance(node, ml_collections.ConfigDict):
      _fail(f"--config.{field}: the config has no field {field!r}")
  if name not in node:
    _fail(f"--config.{field}: the config has no field {field!r}")
  # Fields that may be None are FieldReferences (config_dict.placeholder).
  if not isinstance(node._fields[name], ml_collections.FieldReference):  # pylint: disable=protected-access
    _fail(f"--config.{field}=None: this field cannot be None")
  node[name] = None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, but a bad flag exits 2 with one line naming it.

  That includes a ``--config.FIELD`` the config does not have, which
  ml_collections reports as an AttributeError deep in a traceback.
  ``--config.FIELD=None`` sets a field that may be None (a placeholder)
  to None, which ml_collections cannot parse for numbers.
  """
  fields = [f for f in map(_config_field, argv[1:]) if f]
  for field in fields:
    if fields.count(field) > 1:
      _fail(f"--config.{field} is given more than once")
  if any(re.fullmatch(r"--?workdir=\s*", a) for a in argv[1:]):
    _fail("--workdir is empty; name a folder for the run's files")
  nones = [_config_field(a) for a in argv[1:]
           if _config_field(a) and a.endswith("=None")]
  argv = [a for a in argv if not (_config_field(a) and a.endswith("=None"))]
  try:
    rest = flags.FLAGS(argv)
    for field in nones:
      _set_none(_CONFIG.value, field)
    return rest
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError) as e:
    message = _innermost_message(e)
    for field in filter(None, map(_config_field, argv[1:])):
      key = field.rsplit(".", 1)[-1]
      if message.startswith(repr(key)):
        hint = message[len(repr(key)):].strip()  # "Did you mean ...?"
        hint = f"; {hint[:1].lower()}{hint[1:]}" if hint else ""
        _fail(f"--config.{field}: the config has no field "
                          f"{key!r}{hint}")
    raise


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  _set_up_logging()
  print(f"config ({_CONFIG.value.experiment}):\n{_CONFIG.value}",
        file=sys.stderr)
  previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
  try:
    results = run.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except datasets.DatasetNotFoundError as e:
    _fail(f"{e} Then point --config.data.data_dir at the folder that holds "
          "it.")
  except (ValueError, run.DeviceMemoryError) as e:
    _fail(str(e))
  except OSError as e:  # a full disk, a read-only workdir
    _fail(f"could not read or write the run's files: {e}")
  except (run.Interrupted, KeyboardInterrupt) as e:
    reason = str(e) or ("interrupted; rerun the same command to resume from "
                        "the newest checkpoints")
    print(f"error: {reason}", file=sys.stderr)
    sys.exit(128 + (_signal_received.pop() if _signal_received
                    else signal.SIGINT))
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
  print(f"results in {_WORKDIR.value}/ (results.json, metrics.jsonl, "
        "figures)", file=sys.stderr)
  if results["diverged"] and results["experiment"] != "lr_grid":
    print("error: diverged: " + "; ".join(results["diverged"]),
          file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
