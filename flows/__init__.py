"""Training objectives for continuous-time generative models: diffusion, rectified flow and its
reflow rounds and one-step distillation.

Each objective plugs into `training.Trainer` (docs/conventions.md §8): `losses(nets, x0, step)`
returns `{network name: scalar loss}` for the networks due an update at this step, and
`export(nets, out_dir)` writes the trained networks in a form `samplers` can load.
"""
from .diffusion import DiffusionObjective
from .distill import DistillationObjective
from .mlp import MLPVelocity
from .pairs import PairsDataset, write_pairs
from .rectified_flow import RectifiedFlowObjective, rectified_flow_loss
from .straightness import record_straightness, straightness

__all__ = ["DiffusionObjective", "DistillationObjective", "MLPVelocity", "PairsDataset", "RectifiedFlowObjective",
           "record_straightness", "rectified_flow_loss", "straightness", "write_pairs"]
