r"""Plasticity ablation [paper 3.4, Fig. 4]: every subset of {W̄, V, V̄} learns.

    python -m experiments.main --config=experiments/configs/ablation.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/ablation_mnist

W always learns; the rest stay at their random init. Plus a linear model
trained by SGD. Runtime, 20 epochs, 5 seeds: 14 minutes on 2 CPU cores
(measured on MNIST).
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "ablation"
  c.model.method = "sal"
  return default.smoke(c) if default.is_runlocal(runlocal) else c
