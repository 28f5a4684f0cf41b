"""Training objectives for continuous-time generative models: diffusion and rectified flow.

Each objective plugs into `training.Trainer` (docs/conventions.md §8): `losses(nets, x0, step)`
returns `{network name: scalar loss}` for the networks due an update at this step, and
`export(nets, out_dir)` writes the trained networks in a form `samplers` can load.
"""
from .diffusion import DiffusionObjective
from .rectified_flow import RectifiedFlowObjective, rectified_flow_loss

__all__ = ["DiffusionObjective", "RectifiedFlowObjective", "rectified_flow_loss"]
