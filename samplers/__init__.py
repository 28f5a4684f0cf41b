"""Few-step sampling in one sigma space: denoisers (model adapters), schedules and samplers."""
from .denoisers import DiffusersUNetDenoiser, FlowDenoiser, GMMDenoiser, from_pretrained
from .schedules import get_sigmas
from .skip_tuning import SkipTuning, skip_tuning
from .schedulers import FewstepScheduler
from .solvers import (FIXED_GRID_NAMES, SAMPLER_NAMES, SOLVERS, check_sigmas, nfe, sample, sample_seeds, solve,
                      steps_for_nfe)

__all__ = ["DiffusersUNetDenoiser", "FlowDenoiser", "GMMDenoiser", "from_pretrained", "FewstepScheduler", "get_sigmas", "sample",
           "sample_seeds", "solve", "nfe", "steps_for_nfe", "check_sigmas", "SAMPLER_NAMES", "FIXED_GRID_NAMES",
           "SOLVERS", "skip_tuning", "SkipTuning"]
