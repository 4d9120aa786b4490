"""sal_jax: self-assembling learning circuits (arXiv 2412.20018) in JAX."""

from sal_jax.circuit import Circuit
from sal_jax.circuit import downstream
from sal_jax.circuit import init_weights
from sal_jax.circuit import UPDATE_DTYPES
from sal_jax.circuit import upstream
from sal_jax.circuit import Weights
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
    "Circuit", "downstream", "effective_rank", "evaluate", "init_state",
    "init_weights", "LOSSES", "make_step", "METHODS", "plasticity",
    "reference_optimizer", "train_step", "TrainState", "UPDATE_DTYPES",
    "upstream", "Weights",
]
__version__ = "0.1.0"
