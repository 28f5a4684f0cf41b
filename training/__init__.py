"""The shared Accelerate training loop that every objective (diffusion, rectified flow, GAN,
AMED distillation) plugs into, and the training data sets."""
from .engine import Trainer

__all__ = ["Trainer"]
