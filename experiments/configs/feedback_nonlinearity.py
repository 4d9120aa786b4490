r"""Downstream nonlinearity D_d [paper 3.2]: identity, relu, tanh, relu_jacobian.

    python -m experiments.main \
        --config=experiments/configs/feedback_nonlinearity.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/nonlinearity_mnist

Ratio 1 (relu_jacobian needs it). Runtime, 20 epochs, 5 seeds: 11 minutes
on 2 CPU cores (measured on MNIST).
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "feedback_nonlinearity"
  c.model.method = "sal"
  c.nonlinearities = ("identity", "relu", "tanh", "relu_jacobian")
  return default.smoke(c) if default.is_runlocal(runlocal) else c
