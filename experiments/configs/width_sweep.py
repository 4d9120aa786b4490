r"""Width sweep [paper 3.2, Fig. 2]: SAL accuracy against downstream size.

    python -m experiments.main --config=experiments/configs/width_sweep.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/width_sweep_mnist

``param_ratios`` are downstream/upstream parameter ratios at hidden levels;
the width ratio is their square root. Runtime, 20 epochs, 5 seeds: about 25
minutes on 2 CPU cores (the 16x point dominates).
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "width_sweep"
  c.model.method = "sal"
  c.param_ratios = (1.0, 2.0, 4.0, 5.0, 8.0, 16.0)
  if default.is_runlocal(runlocal):
    default.smoke(c)
    c.param_ratios = (1.0, 4.0)
  return c
