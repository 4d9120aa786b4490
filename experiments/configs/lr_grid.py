r"""Learning-rate grid [paper Fig. 5, Appendix C]: the multiplier grid, chosen on validation.

    python -m experiments.main --config=experiments/configs/lr_grid.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/lr_grid_mnist

Every combination of the W, W̄, V, V̄ multipliers below (4^4 = 256 points;
the paper reports searching 64), for each learning rate in
``grid.sal_learning_rates``, trains on the training set minus a held-out
validation split, with ``run.seeds`` seeds each, all members vmapped into one
program. The best point by mean final validation accuracy then trains on the
whole training set with ``grid.final_seeds`` fresh seeds and is scored on
the test set. SGD gets the same search over ``grid.sgd_learning_rates``. Runtime, 50
epochs, 3 seeds, on one H200: about two minutes for the search (768 SAL and
18 SGD members). Not measured on CPU, where it takes hours.
"""

import ml_collections

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "lr_grid"
  c.model.method = "sal"
  c.run.seeds = 3
  c.data.validation_size = 10000
  c.grid = ml_collections.ConfigDict()
  c.grid.final_seeds = 5
  c.grid.w = (0.1, 0.5, 1.0, 2.0)
  c.grid.w_bar = (0.1, 0.2, 0.5, 1.0)
  c.grid.v = (0.1, 0.5, 1.0, 2.0)
  c.grid.v_bar = (1.0, 2.0, 4.0, 8.0)
  c.grid.sal_learning_rates = (5e-3,)
  c.grid.sgd_learning_rates = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)
  # 768 members hold about 3.4 GB of state: checkpoint rarely, keep one.
  c.run.checkpoint_every = 10
  c.run.keep_checkpoints = 1
  if default.is_runlocal(runlocal):
    default.smoke(c)
    c.data.validation_size = 16
    c.grid.final_seeds = 2
    c.grid.w = (0.5, 1.0)
    c.grid.w_bar = (0.2,)
    c.grid.v = (1.0,)
    c.grid.v_bar = (1.0, 4.0)
    c.grid.sgd_learning_rates = (5e-3, 1e-2)
  return c
