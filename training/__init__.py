"""The shared Accelerate training loop that every objective (diffusion, rectified flow, GAN,
AMED distillation) plugs into, and the training data sets."""
from .engine import Trainer
from .objective import Objective
from .optim import NetworkOptim

__all__ = ["NetworkOptim", "Objective", "Trainer"]
