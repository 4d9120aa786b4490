"""Figures for the experiments: small PNGs, written atomically."""

from __future__ import annotations

import os
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top
import numpy as np

# One colour per method in every figure (labels as the tables write them).
METHOD_COLORS = {"SGD": "tab:blue", "FA": "tab:orange", "WM": "tab:green",
                 "KP": "tab:purple", "SAL": "tab:red"}


def save(fig, path: pathlib.Path) -> None:
  """Saves ``fig`` to ``path`` via a temporary file and rename."""
  tmp = path.with_name(f".{path.stem}.tmp.png")
  fig.savefig(tmp, dpi=90, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)


def _finish(fig, ax, xlabel, ylabel, title, path, legend=True) -> None:
  """Labels, title, grid (and legend) of a line plot, then ``save``."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if xlabel == "epoch":
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  if legend and ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  save(fig, path)


def curves(series: dict[str, np.ndarray], ylabel: str, title: str,
           path: pathlib.Path) -> None:
  """Mean ± std over seeds against epoch; ``series[label]`` is [seeds, epochs]."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, values in series.items():
    values = np.asarray(values, float)
    if values.size == 0:
      continue
    epochs = np.arange(1, values.shape[1] + 1)
    mean, std = values.mean(0), values.std(0)
    color = METHOD_COLORS.get(label)
    ax.plot(epochs, mean, label=label, color=color)
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=color)
  _finish(fig, ax, "epoch", ylabel, title, path)


def band(x, mean, std, xlabel, ylabel, title, path, logx=False) -> None:
  """One line with a ± std band."""
  fig, ax = plt.subplots(figsize=(5, 3.5))
  x, mean, std = (np.asarray(v, float) for v in (x, mean, std))
  ax.plot(x, mean, "o-")
  ax.fill_between(x, mean - std, mean + std, alpha=0.25)
  if logx:
    ax.set_xscale("log")
  _finish(fig, ax, xlabel, ylabel, title, path, legend=False)


def bars(labels, mean, std, ylabel, title, path) -> None:
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.bar(range(len(labels)), mean, yerr=std, capsize=4)
  ax.set_xticks(range(len(labels)), labels, rotation=20)
  lo = np.nanmin(np.asarray(mean) - np.asarray(std))
  if np.isfinite(lo):
    ax.set_ylim(max(0.0, lo - 0.05), None)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  save(fig, path)


def heatmap(grid: np.ndarray, row_labels, col_labels, title, path,
            xlabel="", ylabel="") -> None:
  fig, ax = plt.subplots(figsize=(1 + 0.45 * len(col_labels),
                                  1 + 0.4 * len(row_labels)))
  im = ax.imshow(grid, cmap="viridis")
  ax.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize=6)
  ax.set_yticks(range(len(row_labels)), row_labels, fontsize=6)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax)
  save(fig, path)


def matrices(images: dict[str, np.ndarray], ncols: int, title: str,
             path: pathlib.Path) -> None:
  """A grid of matrices as images, in insertion order, ``ncols`` per row."""
  nrows = -(-len(images) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (label, m) in zip(axes.ravel(), images.items()):
    limit = float(np.abs(m).max()) or 1.0
    ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit)  # white = 0
    ax.set_title(label, fontsize=7)
  fig.suptitle(title, fontsize=9)
  save(fig, path)


def lines(x, series: dict[str, np.ndarray], xlabel, ylabel, title, path,
          logx=False, logy=False) -> None:
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for label, y in series.items():
    ax.plot(x, y, "o-", label=label, ms=3)
  if logx:
    ax.set_xscale("symlog", linthresh=min(v for v in x if v > 0))
  if logy:
    ax.set_yscale("log")
  _finish(fig, ax, xlabel, ylabel, title, path)
