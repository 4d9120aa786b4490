"""A run's dataset: loaded once, validation carved out, put on the device."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from sal_jax import datasets


@dataclasses.dataclass
class Data:
  """uint8 splits on the device, plus what they are."""
  train: tuple[jax.Array, jax.Array]
  test: tuple[jax.Array, jax.Array]
  validation: tuple[jax.Array, jax.Array] | None
  input_dim: int
  num_classes: int
  multi_label: bool
  source: str

  def splits(self) -> dict[str, tuple[jax.Array, jax.Array]]:
    """The (images, labels) splits this run has, by name."""
    splits = {"train": self.train, "test": self.test,
              "validation": self.validation}
    return {name: split for name, split in splits.items() if split is not None}


def load(config: ml_collections.ConfigDict) -> Data:
  """Loads ``config.dataset`` (a run config's ``data`` field), carves the
  validation split and puts every split on the device."""
  ds = datasets.load(config.dataset, config.data_dir, source=config.source)
  x, y = ds.x_train, ds.y_train
  if config.train_size is not None:
    x, y = x[:config.train_size], y[:config.train_size]
  validation = None
  if config.validation_size:
    if config.validation_size >= len(x):
      raise ValueError(f"validation_size {config.validation_size} leaves no "
                       f"training data out of {len(x)} examples")
    order = np.random.default_rng(12345).permutation(len(x))
    val, keep = order[:config.validation_size], order[config.validation_size:]
    validation = (jax.device_put(x[val]), jax.device_put(y[val]))
    x, y = x[keep], y[keep]
  if config.batch_size > len(x):
    raise ValueError(f"batch_size {config.batch_size} exceeds the {len(x)} "
                     "training examples")
  if len(ds.x_test) == 0:
    raise ValueError(f"{ds.source}: the test split of {config.dataset} is "
                     "empty")
  return Data(train=(jax.device_put(x), jax.device_put(y)),
              test=(jax.device_put(ds.x_test), jax.device_put(ds.y_test)),
              validation=validation, input_dim=ds.input_dim,
              num_classes=ds.num_classes, multi_label=ds.multi_label,
              source=ds.source)
