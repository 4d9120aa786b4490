"""Input checks at the public boundary: clear ValueErrors before any compute."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sal_jax import losses

if TYPE_CHECKING:
  from sal_jax import circuit as circuit_lib


def _dtype(x) -> np.dtype:
  return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _on_host(x) -> bool:
  """Value checks only for host arrays: reading device arrays would sync."""
  return isinstance(x, (np.ndarray, list, tuple))


def check_batch_size(batch_size) -> None:
  """Raises ValueError unless ``batch_size`` is a positive integer."""
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(
        f"batch_size must be a positive integer, got {batch_size!r}")


def check_batch(circuit: circuit_lib.Circuit, batch) -> None:
  """Raises ValueError if ``batch = (x, y)`` does not fit ``circuit``.

  Shapes and dtypes are always checked; values (finite inputs, labels in
  range) only for host (numpy) arrays, since reading device arrays would
  stall asynchronous dispatch. Device-resident datasets are checked once, when
  ``datasets.load`` reads them.
  """
  if not isinstance(batch, (tuple, list)) or len(batch) != 2:
    raise ValueError(f"batch must be a pair (inputs, labels), got {type(batch)}")
  x, y = batch
  for name, array in (("inputs", x), ("labels", y)):
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
      raise ValueError(f"{name} must be a numpy or JAX array, got "
                       f"{type(array).__name__}")
  d_in, d_out = circuit.upstream_widths[0], circuit.upstream_widths[-1]
  images = _dtype(x) == np.uint8
  if not images and not np.issubdtype(_dtype(x), np.floating):
    raise ValueError(
        f"inputs must be floating point features or uint8 images, got dtype "
        f"{_dtype(x)}")
  if np.ndim(x) < 2 or (not images and np.ndim(x) != 2):
    raise ValueError(
        f"inputs must have rank 2 (batch, {d_in}), or be uint8 images (batch, "
        f"...), got shape {np.shape(x)}")
  width = int(np.prod(np.shape(x)[1:]))
  if width != d_in:
    raise ValueError(
        f"input width {width} does not match the circuit's input width "
        f"{d_in} (inputs shape {np.shape(x)})")
  batch_size = np.shape(x)[0]
  if batch_size == 0:
    raise ValueError("batch is empty")
  if not images and _on_host(x):
    _check_finite("inputs", x)
  multi_label = losses.LOSSES[circuit.loss].multi_label
  if multi_label:
    if np.shape(y) != (batch_size, d_out):
      raise ValueError(
          f"loss {circuit.loss!r} needs multi-hot targets of shape "
          f"({batch_size}, {d_out}), got {np.shape(y)}")
    if _on_host(y):
      y = np.asarray(y)
      if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"multi-hot targets must be 0 or 1 for loss "
                         f"{circuit.loss!r}")
    return
  if np.shape(y) != (batch_size,):
    raise ValueError(
        f"labels must have shape ({batch_size},) to match the inputs, got "
        f"{np.shape(y)}")
  if not np.issubdtype(_dtype(y), np.integer):
    raise ValueError(f"labels must be integers, got dtype {_dtype(y)}")
  if _on_host(y):
    y = np.asarray(y)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= d_out:
      raise ValueError(
          f"labels out of range: found values in [{lo}, {hi}], expected "
          f"[0, {d_out - 1}] for {d_out} outputs")


def _check_finite(name: str, x: np.ndarray) -> None:
  bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
  if bad:
    raise ValueError(f"{name} hold {bad} non-finite values (NaN or inf)")


def check_state(circuit: circuit_lib.Circuit, weights) -> None:
  """Raises ValueError if ``weights`` are not shaped as ``circuit``'s."""
  from sal_jax import circuit as circuit_lib  # pylint: disable=g-import-not-at-top (a cycle)
  expected = circuit_lib.weight_shapes(circuit)
  got = [tuple(np.shape(m)) for family in weights for m in family]
  want = [shape for family in expected for shape in family]
  if got != want:
    raise ValueError(
        f"the state's weights are shaped {got}, not as this circuit's "
        f"{want} (a state of another circuit?)")
