r"""Rebuilds the lr_grid search summary and heat-maps from a workdir's log.

    python -m experiments.grid_summary --workdir=runs/lr_grid_mnist

Reads config.json and metrics.jsonl, scores every grid point as the lr_grid
experiment does (mean final validation accuracy over seeds, a diverged seed
scoring 0), redraws the heat-maps into the workdir and prints the best points.
Useful for a search whose run was stopped before its final stage.
"""

import json
import pathlib

from absl import app
from absl import flags
import ml_collections

from experiments import cells
from experiments import files
from experiments import plans


def report(workdir: pathlib.Path, top: int = 5) -> dict:
  """Scores the search in ``workdir``, redraws its heat-maps, writes
  search_summary.json and prints the ``top`` points; returns the summary."""
  missing = [name for name in ("config.json", "metrics.jsonl")
             if not (workdir / name).is_file()]
  if missing:
    raise app.UsageError(
        f"{workdir} is not an lr_grid run's workdir: no {' or '.join(missing)}")
  config = ml_collections.ConfigDict(
      json.loads((workdir / "config.json").read_text()))
  if config.experiment != "lr_grid":
    raise app.UsageError(f"{workdir} holds a {config.experiment} run")
  lines = [json.loads(l) for l in
           (workdir / "metrics.jsonl").read_text().splitlines()]
  results = {label: cells.result_from_metrics(lines, label)
             for label in ("sal", "sgd")}
  expected = len(plans.grid_points(config)) * config.run.seeds
  epochs = {len(h) for i, h in enumerate(results["sal"]["history"])
            if i not in results["sal"]["diverged"]}
  if (len(results["sal"]["members"]) != expected
      or epochs != {config.run.epochs}):
    raise app.UsageError(f"{workdir}: the search stage is incomplete")
  summary = plans.lr_grid_search_summary(config, results, workdir)
  files.write_json(workdir / "search_summary.json", summary)
  ranked = sorted(summary["grid"], key=lambda p: -p["validation_accuracy"])
  print(f"{config.data.dataset}: {len(ranked)} SAL points x "
        f"{config.run.seeds} seeds, {config.run.epochs} epochs; validation "
        "accuracy (diverged seed = 0)")
  for p in ranked[:top]:
    print("  " + ", ".join(f"{k}={v:g}" for k, v in p.items()))
  diverging = sum(1 for p in ranked if p["diverged_seeds"])
  print(f"  points with a diverged seed: {diverging}")
  print("SGD:")
  for p in summary["sgd_grid"]:
    print("  " + ", ".join(f"{k}={v:g}" for k, v in p.items()))
  print("chosen:", json.dumps(summary["chosen"]))
  return summary


if __name__ == "__main__":
  _WORKDIR = flags.DEFINE_string("workdir", None, "An lr_grid run's workdir.")
  _TOP = flags.DEFINE_integer("top", 5, "How many of the best points to print.")
  flags.mark_flag_as_required("workdir")
  app.run(lambda argv: report(pathlib.Path(_WORKDIR.value), _TOP.value))
