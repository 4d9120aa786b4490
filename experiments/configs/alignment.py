r"""Alignment over training: cos(ΔW_SAL, -∇_W F) per layer, the Lemma-1 gap,
the learned learning rate H = V̄V̄ᵀ (its extreme eigenvalues, per level) and
how often the global-norm clip shortens the update.

    python -m experiments.main --config=experiments/configs/alignment.py \
        --config.data.dataset=mnist --config.data.data_dir=../shared/datasets \
        --workdir=runs/alignment_mnist

The theory predicts the cosine rises (about 0.8 reported) and the gap
‖V - V̄ᵀ‖/‖V‖ decays. Two cells: the reference setup (whose V : V̄ = 1 : 4
multipliers and pre-activation ΔV̄ do not meet Lemma 1's premise) and the
lemma's premise (activity ΔV̄, V̄'s multiplier equal to V's). Runtime, 20 epochs, 3 seeds: about 4 minutes on 2 CPU
cores (the true gradient is computed at every step).
"""

from experiments.configs import default


def get_config(runlocal: bool = False):
  c = default.get_config()
  c.experiment = "alignment"
  c.model.method = "sal"
  c.run.seeds = 3
  c.run.diagnostics = True
  if default.is_runlocal(runlocal):
    default.smoke(c)
    c.run.seeds = 1
  return c
