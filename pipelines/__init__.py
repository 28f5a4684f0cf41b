"""The diffusers integration: `FewstepScheduler`, the samplers of `fewstep.samplers` as a diffusers
scheduler inside any pipeline, and the timesteps of the models it drives."""
from .scheduler import FewstepScheduler

__all__ = ["FewstepScheduler"]
