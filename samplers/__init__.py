"""Few-step sampling in one sigma space: denoisers (model adapters), schedules and samplers."""
from .denoisers import DiffusersUNetDenoiser, FlowDenoiser, GMMDenoiser
from .schedules import get_sigmas
from .skip_tuning import SkipTuning, skip_tuning
from .schedulers import FewstepScheduler
from .solvers import SAMPLER_NAMES, check_sigmas, nfe, sample, sample_seeds, steps_for_nfe

__all__ = ["DiffusersUNetDenoiser", "FlowDenoiser", "GMMDenoiser", "FewstepScheduler", "get_sigmas", "sample",
           "sample_seeds", "nfe", "steps_for_nfe", "check_sigmas", "SAMPLER_NAMES", "skip_tuning", "SkipTuning"]
