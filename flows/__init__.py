"""Training objectives for continuous-time generative models.

Each objective plugs into `training.Trainer` (docs/conventions.md §8): `losses(nets, x0, step)`
returns `{network name: scalar loss}` for the networks due an update at this step, and
`export(nets, out_dir)` writes the trained networks in a form `samplers` can load.
"""
from .diffusion import DiffusionObjective

__all__ = ["DiffusionObjective"]
