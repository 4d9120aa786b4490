r"""Table 1 [paper 3.1]: sgd, fa, wm, kp and sal on one dataset, 5 seeds.

    python -m experiments.main --config=experiments/configs/table1.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/table1_mnist

``--config.model.method=sal`` runs one method; ``all`` (default) runs the five.
Writes table.md, a row per method in the paper's layout. Runtime, 20 epochs,
5 seeds, all five methods: about 10 minutes on 2 CPU cores (MNIST); 50
epochs took under a minute on one H200.
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "table1"
  c.model.method = "all"
  return default.smoke(c) if default.is_runlocal(runlocal) else c
