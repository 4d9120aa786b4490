r"""Learned structure [paper 3.3, Fig. 3]: Gram matrices and effective ranks.

    python -m experiments.main --config=experiments/configs/structure.py \
        --config.dataset=mnist --config.data_dir=../shared/datasets \
        --workdir=runs/structure_mnist

A width-60 net (the paper: SVHN, 50 epochs; use --config.dataset=svhn_cropped
--config.epochs=50 where SVHN is available). Saves each family's Gram matrix
(MᵀM) at the first hidden level before and after training, and the effective
rank of every matrix. Runtime, 20 epochs, 1 seed: 25 s on 2 CPU cores (MNIST).
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config(runlocal)
  c.experiment = "structure"
  c.method = "sal"
  c.hidden = (60, 60, 60)
  c.seeds = 1
  if runlocal:
    c.hidden = (12, 12)
  return c
