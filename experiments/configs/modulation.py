r"""Short-term modulation [paper 2.3]: the feedback nudges upstream potentials.

    python -m experiments.main --config=experiments/configs/modulation.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/modulation_mnist

After training, on the test set: one forward and feedback cycle, then
h^l <- h^l + τ V̄^{l-1} D_d h̄^l at every level, recomputing upward; the loss
before and after, against τ. Runtime, 20 epochs, 3 seeds: about 2 minutes on
2 CPU cores (MNIST).
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "modulation"
  c.model.method = "sal"
  c.run.seeds = 3
  c.taus = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
  if default.is_runlocal(runlocal):
    default.smoke(c)
    c.run.seeds = 1
  return c
