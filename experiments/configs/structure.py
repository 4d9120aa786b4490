r"""Learned structure [paper 3.3, Fig. 3]: Gram matrices and effective ranks.

    python -m experiments.main --config=experiments/configs/structure.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/structure_mnist

A width-60 net (the paper: SVHN, 50 epochs; use --config.data.dataset=svhn_cropped
--config.run.epochs=50 where SVHN is available). Saves each family's Gram matrix
(MᵀM) at the first hidden level before and after training, and the effective
rank of every matrix. Runtime, 20 epochs, 1 seed: 25 s on 2 CPU cores (MNIST).
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "structure"
  c.model.method = "sal"
  c.model.hidden = (60, 60, 60)
  c.run.seeds = 1
  if default.is_runlocal(runlocal):
    default.smoke(c)
    c.model.hidden = (12, 12)
  return c
