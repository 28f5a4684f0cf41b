"""Training objectives for continuous-time generative models.

Each objective plugs into `training.Trainer`: it has `loss(model, x0) -> scalar` and
`export(model, out_dir)`, which writes the trained network in a form `samplers` can load.
"""
from .diffusion import DiffusionObjective

__all__ = ["DiffusionObjective"]
