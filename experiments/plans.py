"""What each experiment trains (its cells) and what it reports.

Each experiment is a pair of functions: ``cells(config, data)`` builds every
cell it will train (so a bad setting fails before anything is written), and
``report(config, data, results, run, workdir)`` turns the trained histories
into ``results.json``'s summary and the experiment's figures. ``run(cell,
data)`` trains a further cell where an experiment needs a second stage.
"""

from __future__ import annotations

import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import sal_jax as sj
from experiments import cells as cells_lib
from experiments import data as data_lib
from experiments import plots
from sal_jax import datasets
from sal_jax import losses
from sal_jax import modulation

TABLE1_METHODS = ("sgd", "fa", "wm", "kp", "sal")
PAPER_TABLE1 = {  # test accuracy %, paper Table 1 (5-layer MLP, mean of 5)
    "mnist": dict(sgd=98.44, fa=97.80, wm=98.40, kp=98.45, sal=98.85),
    "fashion_mnist": dict(sgd=96.80, fa=95.75, wm=96.00, kp=96.13, sal=97.23),
    "cifar10": dict(sgd=50.36, fa=47.85, wm=49.35, kp=48.16, sal=51.91),
    "chestmnist": dict(sgd=73.26, fa=70.44, wm=70.14, kp=71.03, sal=73.21),
    "pathmnist": dict(sgd=70.11, fa=69.90, wm=70.00, kp=69.51, sal=70.23),
    "svhn_cropped": dict(sgd=78.20, fa=78.03, wm=78.08, kp=78.20, sal=78.50),
    "stl10": dict(sgd=41.00, fa=39.29, wm=39.48, kp=40.32, sal=41.50),
}
ABLATION_FAMILIES = ("w_bar", "v", "v_bar")


def _methods(config) -> list[str]:
  if config.model.method == "all":
    return list(TABLE1_METHODS)
  methods = [m.strip() for m in config.model.method.split(",") if m.strip()]
  unknown = [m for m in methods if m not in sj.METHODS]
  if not methods or unknown:
    raise ValueError(f"unknown method {config.model.method!r}; expected "
                     f"'all' or a comma list of {sorted(sj.METHODS)}")
  return methods


def _circuit_for_method(config, data, method):
  # Only SAL has a downstream width of its own; the others need ratio 1.
  return cells_lib.make_circuit(
      config, data, method=method,
      ratio=config.model.ratio if method == "sal" else 1.0)


def _seed_cell(config, label, circuit, **hyperparams):
  """A cell of ``config.run.seeds`` seeds sharing ``hyperparams``."""
  return cells_lib.make_cell(config, label, circuit,
                             cells_lib.seed_members(config, **hyperparams))


def _per_epoch(result, key="test_accuracy"):
  """[members, epochs] of ``key`` for members that did not diverge."""
  return np.asarray([[r[key] for r in h] for i, h in enumerate(
      result["history"]) if i not in result["diverged"]], float)


def _accuracy_note(data) -> str:
  return (" (mean per-label accuracy: multi-label)" if data.multi_label
          else "")


def _pct(stats, seeds: int) -> str:
  """Mean ± std in %, or the mean alone for one seed."""
  if not math.isfinite(stats["mean"]):
    return "diverged"
  if seeds == 1:
    return f"{100 * stats['mean']:.2f}"
  return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


# ---------------------------------------------------------------- table1


def table1_cells(config, data):
  return [_seed_cell(config, m, _circuit_for_method(config, data, m))
          for m in _methods(config)]


def table1_report(config, data, results, run, workdir: pathlib.Path):
  del run
  summary = {label: cells_lib.summarize(r) for label, r in results.items()}
  dataset = config.data.dataset
  paper = PAPER_TABLE1.get(dataset, {})
  lines = [f"| method | {dataset} final test % | best test % | "
           f"final train % | paper % |", "|---|---|---|---|---|"]
  for label, s in summary.items():
    n = len(s["seeds"])
    lines.append(f"| {label.upper()} | {_pct(s['final'], n)} | "
                 f"{_pct(s['best'], n)} | {_pct(s['train'], n)} | "
                 f"{paper.get(label, '')} |")
  spread = "mean ± std" if config.run.seeds > 1 else "one seed"
  note = (f"\n{config.run.seeds} seeds, {epochs_trained(results)} epochs, "
          f"data from {data.source}; accuracy{_accuracy_note(data)} as "
          f"{spread} over the seeds that did not diverge.\n")
  if config.run.smoke:
    note += ("\nA smoke run (:runlocal): a data subset and a tiny network, "
             "to check the experiment runs; its accuracies mean nothing.\n")
  (workdir / "table.md").write_text("\n".join(lines) + "\n" + note)
  plots.curves({k.upper(): _per_epoch(r) for k, r in results.items()},
               "test accuracy" + _accuracy_note(data),
               f"{dataset}: test accuracy", workdir / "test_accuracy.png")
  return dict(methods=summary, table_markdown="\n".join(lines))


# ---------------------------------------------------------------- width sweep


def _downstream_parameters(circuit: sj.Circuit) -> dict[str, int]:
  weights = jax.eval_shape(lambda: sj.init_weights(jax.random.key(0), circuit))
  count = lambda family: int(sum(np.prod(m.shape) for m in family))
  return dict(upstream=count(weights.w),
              downstream=count(weights.w_bar) + count(weights.v)
              + count(weights.v_bar))


def width_sweep_cells(config, data):
  return [_seed_cell(config, f"{p:g}x", cells_lib.make_circuit(
      config, data, method="sal", ratio=math.sqrt(p)))
          for p in config.param_ratios]


def width_sweep_report(config, data, results, run, workdir):
  del run
  summary = {}
  for p, cell in zip(config.param_ratios, width_sweep_cells(config, data)):
    summary[cell.label] = dict(
        param_ratio=p, width_ratio=math.sqrt(p),
        parameters=_downstream_parameters(cell.circuit),
        **cells_lib.summarize(results[cell.label]))
  ps = [s["param_ratio"] for s in summary.values()]
  plots.band(ps, [s["final"]["mean"] for s in summary.values()],
             [s["final"]["std"] for s in summary.values()],
             "downstream parameter ratio (width ratio = its square root)",
             "final test accuracy" + _accuracy_note(data),
             f"{config.data.dataset}: SAL against downstream size",
             workdir / "width_sweep.png", logx=True)
  return dict(ratios=summary)


# ---------------------------------------------------- feedback nonlinearity


def feedback_nonlinearity_cells(config, data):
  return [_seed_cell(config, n, cells_lib.make_circuit(
      config, data, method="sal", ratio=1.0, nonlinearity=n))
          for n in config.nonlinearities]


def feedback_nonlinearity_report(config, data, results, run, workdir):
  del run
  summary = {label: cells_lib.summarize(r) for label, r in results.items()}
  plots.bars(list(summary), [s["final"]["mean"] for s in summary.values()],
             [s["final"]["std"] for s in summary.values()],
             "final test accuracy" + _accuracy_note(data),
             f"{config.data.dataset}: SAL by downstream nonlinearity D_d",
             workdir / "feedback_nonlinearity.png")
  return dict(nonlinearities=summary)


# ---------------------------------------------------------------- ablation


def _subset_label(subset) -> str:
  names = {"w_bar": "W̄", "v": "V", "v_bar": "V̄"}
  return "W" + "".join("+" + names[f] for f in subset)


def ablation_cells(config, data):
  cells = []
  for k in range(len(ABLATION_FAMILIES) + 1):
    for subset in itertools.combinations(ABLATION_FAMILIES, k):
      cells.append(_seed_cell(config, _subset_label(subset),
                              cells_lib.make_circuit(config, data,
                                                     method="sal",
                                                     plastic=subset)))
  cells.append(_seed_cell(config, "linear (SGD)", cells_lib.make_circuit(
      config, data, method="linear", ratio=1.0)))
  return cells


def ablation_report(config, data, results, run, workdir):
  del run
  plots.curves({k: _per_epoch(r) for k, r in results.items()},
               "test accuracy" + _accuracy_note(data),
               f"{config.data.dataset}: which synapses learn (W always)",
               workdir / "ablation.png")
  return dict(subsets={label: cells_lib.summarize(r)
                       for label, r in results.items()})


# ---------------------------------------------------------------- lr grid


def grid_points(config):
  grid = config.grid
  return list(itertools.product(grid.sal_learning_rates, grid.w, grid.w_bar,
                                grid.v, grid.v_bar))


def lr_grid_cells(config, data):
  if data.validation is None:
    raise ValueError("lr_grid chooses on a validation split: set "
                     "config.data.validation_size > 0")
  first, seeds = config.run.seed, config.run.seeds
  sal_members = [dict(seed=first + s, learning_rate=lr, m_w=a, m_w_bar=b,
                      m_v=c, m_v_bar=d)
                 for lr, a, b, c, d in grid_points(config)
                 for s in range(seeds)]
  sgd_members = [dict(seed=first + s, learning_rate=lr)
                 for lr in config.grid.sgd_learning_rates
                 for s in range(seeds)]
  return [cells_lib.make_cell(config, "sal", cells_lib.make_circuit(
      config, data, method="sal"), sal_members),
          cells_lib.make_cell(config, "sgd", cells_lib.make_circuit(
              config, data, method="sgd", ratio=1.0), sgd_members)]


def _validation_scores(result, n_seeds):
  """Mean final validation accuracy per grid point; a diverged seed scores 0."""
  scores, diverged = [], []
  for start in range(0, len(result["members"]), n_seeds):
    accs, n_div = [], 0
    for i in range(start, start + n_seeds):
      if i in result["diverged"]:
        accs.append(0.0)
        n_div += 1
      else:
        accs.append(result["history"][i][-1]["validation_accuracy"])
    scores.append(float(np.mean(accs)))
    diverged.append(n_div)
  return np.asarray(scores), diverged


def lr_grid_search_summary(config, results, workdir):
  """Scores every grid point on validation, draws the heat-maps, picks the best.

  Works on the in-memory results of a run or on those ``result_from_metrics``
  reads back from a workdir's metrics.jsonl.
  """
  n = config.run.seeds
  points = grid_points(config)
  sal_scores, sal_div = _validation_scores(results["sal"], n)
  sgd_scores, sgd_div = _validation_scores(results["sgd"], n)
  rows = list(itertools.product(config.grid.w, config.grid.w_bar))
  cols = list(itertools.product(config.grid.v, config.grid.v_bar))
  per_lr = len(rows) * len(cols)
  for li, lr in enumerate(config.grid.sal_learning_rates):
    grid = sal_scores[li * per_lr:(li + 1) * per_lr].reshape(len(rows),
                                                             len(cols))
    plots.heatmap(grid, [f"W {a:g}, W̄ {b:g}" for a, b in rows],
                  [f"V {c:g}, V̄ {d:g}" for c, d in cols],
                  f"{config.data.dataset}: SAL validation accuracy, lr {lr:g} "
                  f"(mean of {n} seeds; diverged = 0)",
                  workdir / f"lr_grid_heatmap_lr{li}.png")
  sgd_rates = config.grid.sgd_learning_rates
  plots.band(sgd_rates, sgd_scores, np.zeros_like(sgd_scores),
             "learning rate", "validation accuracy",
             f"{config.data.dataset}: SGD learning-rate search",
             workdir / "lr_grid_sgd.png", logx=True)
  lr, a, b, c, d = points[int(np.argmax(sal_scores))]
  return dict(
      grid=[dict(learning_rate=p[0], m_w=p[1], m_w_bar=p[2], m_v=p[3],
                 m_v_bar=p[4], validation_accuracy=float(s), diverged_seeds=dv)
            for p, s, dv in zip(points, sal_scores, sal_div)],
      sgd_grid=[dict(learning_rate=lr_, validation_accuracy=float(s),
                     diverged_seeds=dv) for lr_, s, dv in
                zip(sgd_rates, sgd_scores, sgd_div)],
      chosen=dict(
          sal=dict(learning_rate=lr, m_w=a, m_w_bar=b, m_v=c, m_v_bar=d,
                   validation_accuracy=float(np.max(sal_scores))),
          sgd=dict(learning_rate=sgd_rates[int(np.argmax(sgd_scores))],
                   validation_accuracy=float(np.max(sgd_scores)))))


def lr_grid_report(config, data, results, run, workdir):
  del data
  search = lr_grid_search_summary(config, results, workdir)
  sal, sgd = search["chosen"]["sal"], search["chosen"]["sgd"]

  # Stage 2: the chosen points on the whole training set, fresh seeds, test.
  final_config = config.copy_and_resolve_references()
  final_config.data.validation_size = 0
  final_config.run.seeds = config.grid.final_seeds
  full = data_lib.load(final_config.data)
  fresh = config.run.seed + 1000
  hyperparams = {k: sal[k] for k in cells_lib.HYPERPARAMS}

  def final_cell(label, circuit, **values):
    return cells_lib.make_cell(final_config, label, circuit,
                               cells_lib.seed_members(final_config, fresh,
                                                      **values))

  finals = {
      "sal": run(final_cell("sal (chosen)", cells_lib.make_circuit(
          final_config, full, method="sal"), **hyperparams), full),
      "sgd": run(final_cell("sgd (chosen)", cells_lib.make_circuit(
          final_config, full, method="sgd", ratio=1.0),
          learning_rate=sgd["learning_rate"]), full),
  }
  return dict(search, test={k: cells_lib.summarize(r) for k, r in finals.items()})


# ---------------------------------------------------------------- structure


def structure_cells(config, data):
  return [_seed_cell(config, "sal", cells_lib.make_circuit(config, data,
                                                          method="sal"))]


def structure_report(config, data, results, run, workdir):
  del run, data
  r = results["sal"]
  ranks, images = {}, {}
  names = dict(w="W", w_bar="W̄", v="V", v_bar="V̄")
  for when, weights in (("before", r["initial"]), ("after", r["final"])):
    for family, mats in zip(sj.Weights._fields, weights):
      ranks[f"{family}_{when}"] = [float(sj.effective_rank(jnp.asarray(m)))
                                   for m in mats]
  # The matrices meeting at hidden level 1: W^1, W̄^1, V^1, V̄^0.
  for family, index, level in (("w", 1, 1), ("w_bar", 0, 1), ("v", 0, 1),
                               ("v_bar", 0, 0)):
    for when, weights in (("before", r["initial"]), ("after", r["final"])):
      m = np.asarray(getattr(weights, family)[index])
      images[f"{names[family]}^{level} {when}: MᵀM"] = m.T @ m
  plots.matrices(images, 4, f"{config.data.dataset}: Gram matrices, width "
                 f"{config.model.hidden[0]}", workdir / "structure_gram.png")
  return dict(effective_rank=ranks, accuracy=cells_lib.summarize(r))


# ---------------------------------------------------------------- alignment


def alignment_cells(config, data):
  """The reference setup, and Lemma 1's premise: V and V̄ learn alike."""
  m_v = config.optimizer.multipliers[2]
  return [
      _seed_cell(config, "reference",
                 cells_lib.make_circuit(config, data, method="sal")),
      _seed_cell(config, "lemma premise",
                 cells_lib.make_circuit(config, data, method="sal",
                                        v_bar_signal="activity"),
                 m_v_bar=m_v),
  ]


def alignment_report(config, data, results, run, workdir):
  del run, data
  summary = {}
  for label, r in results.items():
    cos = _per_epoch(r, "grad_cosine")  # [members, epochs, layers]
    gap = _per_epoch(r, "lemma1_gap")
    learned_lr = _per_epoch(r, "learned_learning_rate")  # [..., levels, 2]
    epochs = np.arange(1, cos.shape[1] + 1)
    slug = label.replace(" ", "_")
    plots.lines(epochs, {f"W{l}": cos[:, :, l].mean(0)
                         for l in range(cos.shape[2])}, "epoch",
                "cos(ΔW_SAL, -∇W F), epoch mean",
                f"{config.data.dataset}, {label}: alignment with the gradient",
                workdir / f"alignment_cosine_{slug}.png")
    plots.lines(epochs, {f"level {k + 1}": gap[:, :, k].mean(0)
                         for k in range(gap.shape[2])}, "epoch",
                "‖V - V̄ᵀ‖ / ‖V‖", f"{config.data.dataset}, {label}: Lemma-1 gap",
                workdir / f"alignment_lemma1_gap_{slug}.png")
    plots.lines(epochs, {f"V̄{l}": learned_lr[:, :, l, 0].mean(0)
                         for l in range(learned_lr.shape[2])}, "epoch",
                "largest eigenvalue of H = V̄V̄ᵀ",
                f"{config.data.dataset}, {label}: learned learning rate",
                workdir / f"alignment_learned_lr_{slug}.png", logy=True)
    summary[label] = dict(grad_cosine_by_epoch=cos.mean(0).tolist(),
                          lemma1_gap_by_epoch=gap.mean(0).tolist(),
                          learned_lr_by_epoch=learned_lr.mean(0).tolist(),
                          accuracy=cells_lib.summarize(r))
    if config.optimizer.clip_norm is not None:
      summary[label]["clipped_fraction_by_epoch"] = _per_epoch(
          r, "clipped_fraction").mean(0).tolist()
  return summary


# ---------------------------------------------------------------- modulation


def modulation_cells(config, data):
  return structure_cells(config, data)  # one SAL cell, the config's setup


def modulation_report(config, data, results, run, workdir):
  del run
  r = results["sal"]
  circuit = cells_lib.make_circuit(config, data, method="sal")
  loss = losses.LOSSES[circuit.loss]
  batch = datasets.preprocess(*data.test)
  alive = [i for i in range(len(r["members"])) if i not in r["diverged"]]

  @jax.jit
  def scores(weights, tau):
    out = modulation.modulated_output(circuit, weights, batch, tau)
    return (jnp.mean(loss.value(out, batch[1])),
            jnp.mean(loss.correct(out, batch[1])))

  table = {"loss": [], "accuracy": []}
  for tau in config.taus:
    per_member = [scores(jax.tree.map(lambda t, i=i: t[i], r["final_all"]),
                         tau) for i in alive]
    table["loss"].append([float(l) for l, _ in per_member])
    table["accuracy"].append([float(a) for _, a in per_member])
  mean_loss = np.mean(table["loss"], axis=1)
  plots.lines(list(config.taus), {"test loss after modulation": mean_loss},
              "τ", "loss", f"{config.data.dataset}: short-term modulation "
              "(τ = 0: no modulation)", workdir / "modulation.png", logx=True)
  helps = [t for t, l in zip(config.taus, mean_loss) if l < mean_loss[0]]
  return dict(taus=list(config.taus), loss=table["loss"],
              accuracy=table["accuracy"],
              largest_tau_that_lowers_loss=max(helps) if helps else None)


def epochs_trained(results) -> int:
  """The epochs the members that did not diverge trained for."""
  return max((len(h) for r in results.values()
              for i, h in enumerate(r["history"]) if i not in r["diverged"]),
             default=0)


PLANS = {
    "table1": (table1_cells, table1_report),
    "width_sweep": (width_sweep_cells, width_sweep_report),
    "feedback_nonlinearity": (feedback_nonlinearity_cells,
                              feedback_nonlinearity_report),
    "ablation": (ablation_cells, ablation_report),
    "lr_grid": (lr_grid_cells, lr_grid_report),
    "structure": (structure_cells, structure_report),
    "alignment": (alignment_cells, alignment_report),
    "modulation": (modulation_cells, modulation_report),
}
