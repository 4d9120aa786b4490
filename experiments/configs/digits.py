r"""SAL against SGD on scikit-learn's 8x8 digits: no download needed.

    python -m experiments.main --config=experiments/configs/digits.py \
        --workdir=runs/digits

1,797 images of 8x8 (the last 297 held out as the test set), MLP 64-200-200-10,
5 seeds, 30 epochs at batch 32. Runtime: under a minute on 2 CPU cores.
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "table1"
  c.data.dataset = "digits"
  c.model.method = "sgd,sal"
  c.model.hidden = (200, 200)
  c.data.batch_size = 32
  c.run.epochs = 30
  return default.smoke(c) if default.is_runlocal(runlocal) else c
