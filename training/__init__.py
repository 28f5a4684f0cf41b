"""The shared Accelerate training loop that every objective (diffusion, rectified flow, GAN,
AMED distillation) plugs into, and the training data sets."""
from .engine import NetworkOptim, Trainer

__all__ = ["NetworkOptim", "Trainer"]
