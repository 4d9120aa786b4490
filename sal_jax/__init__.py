"""sal_jax: self-assembling learning circuits (arXiv 2412.20018) in JAX.

The model is a ``Circuit``; ``make_step`` trains it one batch at a time and
``sweep`` a whole epoch, or many circuits at once, as one program. How the
programs are computed (batched products, storage dtypes, precision, XLA
options) is a ``Compute``. The submodules are reachable as attributes:
``sal_jax.datasets``, ``sal_jax.sweep``, ``sal_jax.parallel``,
``sal_jax.diagnostics``, ``sal_jax.rules``, ``sal_jax.optim``, and
``sal_jax.meta`` (rule parameters as data, differentiable unrolled training).
"""

from sal_jax import checks
from sal_jax import circuit
from sal_jax import compute
from sal_jax import datasets
from sal_jax import diagnostics
from sal_jax import losses
from sal_jax import meta
from sal_jax import methods
from sal_jax import modulation
from sal_jax import optim
from sal_jax import parallel
from sal_jax import rules
from sal_jax import sweep
from sal_jax import train
from sal_jax.circuit import Circuit
from sal_jax.circuit import downstream
from sal_jax.circuit import init_weights
from sal_jax.circuit import upstream
from sal_jax.circuit import Weights
from sal_jax.compute import Compute
from sal_jax.diagnostics import effective_rank
from sal_jax.losses import LOSSES
from sal_jax.methods import METHODS
from sal_jax.optim import reference as reference_optimizer
from sal_jax.rules import plasticity
from sal_jax.train import evaluate
from sal_jax.train import init_state
from sal_jax.train import make_step
from sal_jax.train import train_step
from sal_jax.train import TrainState

__all__ = [
    "checks", "circuit", "compute", "datasets", "diagnostics", "losses",
    "meta", "methods", "modulation", "optim", "parallel", "rules", "sweep", "train",
    "Circuit", "Compute", "downstream", "effective_rank", "evaluate",
    "init_state", "init_weights", "LOSSES", "make_step", "METHODS",
    "plasticity", "reference_optimizer", "train_step", "TrainState",
    "upstream", "Weights",
]
__version__ = "0.2.0"
