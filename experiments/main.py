r"""Command line for every experiment: an ml_collections config and a workdir.

    python -m experiments.main --config=experiments/configs/table1.py \
        --config.dataset=mnist --config.data_dir=../shared/datasets \
        --workdir=runs/table1_mnist

Any config field can be overridden with --config.field=value. Writes
config.json, metrics.jsonl (a line per member per epoch), results.json and the
experiment's figures. Bad settings or missing data exit with status 2 and a
one-line reason, before anything is written; a run in which some member
diverged writes its results (recording the divergence) and exits with status 3.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import train
from sal_jax import datasets

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  try:
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, datasets.DatasetNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if results["diverged"] and results["experiment"] != "lr_grid":
    print("error: diverged: " + "; ".join(results["diverged"]),
          file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  app.run(main)
